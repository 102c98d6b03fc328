package opabundles

import (
	crand "crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"

	opaconfig "github.com/open-policy-agent/opa/v1/config"
	"github.com/open-policy-agent/opa/v1/keys"
	"github.com/open-policy-agent/opa/v1/plugins"
	bundleplugin "github.com/open-policy-agent/opa/v1/plugins/bundle"
	"github.com/open-policy-agent/opa/v1/plugins/rest"
	"github.com/open-policy-agent/opa/v1/util"
	"sigs.k8s.io/yaml"
)

// Config is what regomesh takes from an OPA configuration file: the
// bundles to download and the services they come from, parsed by OPA's
// own parsers, so a file OPA accepts means the same here.
type Config struct {
	// Bundles are the bundles to download by name, as OPA's bundle plugin
	// parses them, defaults injected: resource "bundles/<name>", the
	// first service, polling every 60 to 120 seconds, and signing
	// verification from "signing" and the "keys" section.
	Bundles map[string]*bundleplugin.Source
	// DecisionLogs is where decision logs are uploaded, from the
	// decision_logs section; nil without one.
	DecisionLogs *DecisionLogs
	// Status is where bundle status is reported, from the status
	// section; nil without one.
	Status *StatusReport
	// Warnings name what the file holds that regomesh does not act on
	// (sections and options it ignores, as OPA warns about unknown ones).
	Warnings []string

	services map[string]json.RawMessage // by name, as rest.New takes them
	labels   map[string]string          // OPA's: the file's, with its id and version
	keys     map[string]*keys.Config
}

// ReadConfig reads an OPA configuration file (YAML or JSON) with ParseConfig.
func ReadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("opabundles: %w", err)
	}
	cfg, err := ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return cfg, nil
}

// ParseConfig parses an OPA configuration file, YAML or JSON, as OPA does:
// ${VAR} is replaced by the environment variable VAR when it is set, the
// file is validated by OPA's config parser, and its services, keys and
// bundles sections (and decision_logs, when present) by OPA's parsers for
// them. Sections regomesh cannot
// honour are refused when ignoring them would mislead (the bundles would
// not be the ones meant, or decisions would go unlogged) and reported in
// Warnings otherwise; docs/bundles.md lists which.
func ParseConfig(raw []byte) (*Config, error) {
	js, err := yaml.YAMLToJSON([]byte(expandEnv(string(raw))))
	if err != nil {
		return nil, fmt.Errorf("opabundles: OPA configuration: %w", err)
	}
	parsed, err := opaconfig.ParseConfig(js, InstanceID)
	if err != nil {
		return nil, fmt.Errorf("opabundles: OPA configuration: %w", err)
	}
	var top map[string]json.RawMessage
	if err := util.Unmarshal(js, &top); err != nil {
		return nil, fmt.Errorf("opabundles: OPA configuration: %w", err)
	}
	cfg := &Config{Warnings: slices.Clone(parsed.Warnings)}
	if err := cfg.checkSections(top); err != nil {
		return nil, err
	}
	if cfg.keys, err = keys.ParseKeysConfig(parsed.Keys); err != nil {
		return nil, fmt.Errorf("opabundles: OPA configuration: keys: %w", err)
	}
	if cfg.services, err = parseServices(parsed.Services); err != nil {
		return nil, err
	}
	if err := cfg.parseBundles(parsed.Bundles, !isNull(parsed.DecisionLogs)); err != nil {
		return nil, err
	}
	if err := cfg.parseDecisionLogs(parsed.DecisionLogs, parsed.Labels); err != nil {
		return nil, err
	}
	if err := cfg.parseStatus(parsed.Status); err != nil {
		return nil, err
	}
	cfg.labels = parsed.Labels
	// The clients are built to check them, and dropped: the proxy's SVID is
	// not at hand yet, so services naming SVIDPlugin get one that is never
	// asked (nothing is dialled here).
	if _, err := cfg.clients(nil, &SVIDCredentials{}); err != nil {
		return nil, err
	}
	return cfg, nil
}

// refused are the top-level sections that make the file an error: with
// them ignored, a proxy would decide with other bundles than the file
// means, or leave decisions unlogged that the user expects logged.
var refused = map[string]string{
	"discovery": "discovery is not supported: the proxies would not download the bundles it names; list them under bundles",
	"bundle":    "the deprecated bundle section is not supported: configure the bundle under bundles instead",
}

// ignored are the top-level sections regomesh reads nothing from, with
// what that means for the user; they are warnings.
var ignored = map[string]string{
	"plugins":                        "OPA plugins do not run in the proxies",
	"labels":                         "labels are only sent with decision logs and status, and the file configures neither",
	"default_decision":               "the proxies always decide data.mesh.authz.decision",
	"default_authorization_decision": "the proxies always decide data.mesh.authz.decision",
	"persistence_directory":          "bundles are not persisted: after a restart a proxy denies until it has downloaded them again",
	"server":                         "the proxies run no OPA server",
	"storage":                        "the proxies keep policy in memory",
	"caching":                        "caching configures OPA's built-in function caches, which the proxies do not use",
	"nd_builtin_cache":               "caching configures OPA's built-in function caches, which the proxies do not use",
	"distributed_tracing":            "bundle downloads are not traced",
	"metrics_export":                 "the proxies export Prometheus metrics on --metrics-addr",
}

func (c *Config) checkSections(top map[string]json.RawMessage) error {
	for _, name := range slices.Sorted(maps.Keys(top)) {
		if why, ok := refused[name]; ok && !isNull(top[name]) {
			return fmt.Errorf("opabundles: OPA configuration: %s (docs/bundles.md)", why)
		}
		if name == "labels" && (!isNull(top["decision_logs"]) || !isNull(top["status"])) {
			continue // sent with every decision-log event and status report
		}
		if why, ok := ignored[name]; ok && !isNull(top[name]) {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s is ignored: %s", name, why))
		}
	}
	return nil
}

// parseServices reads the services section as OPA does: a list of
// services with a name each, or an object keyed by name.
func parseServices(raw json.RawMessage) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	if isNull(raw) {
		return out, nil
	}
	var list []json.RawMessage
	if err := util.Unmarshal(raw, &list); err == nil {
		for _, s := range list {
			var named struct {
				Name string `json:"name"`
			}
			if err := util.Unmarshal(s, &named); err != nil || named.Name == "" {
				return nil, fmt.Errorf("opabundles: OPA configuration: services: every service of the list needs a name")
			}
			out[named.Name] = s
		}
		return out, nil
	}
	if err := util.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("opabundles: OPA configuration: services: a list or an object of services: %w", err)
	}
	return out, nil
}

// parseBundles parses the bundles section with OPA's parser and refuses
// what the proxies cannot download. A file that configures decision logs
// may name no bundles (the proxy's --bundle paths are then its policy).
func (c *Config) parseBundles(raw json.RawMessage, decisionLogs bool) error {
	if isNull(raw) && decisionLogs {
		return nil
	}
	if isNull(raw) {
		return fmt.Errorf("opabundles: OPA configuration: no bundles: list the bundles to download under bundles (docs/bundles.md)")
	}
	// No trigger mode imposed: a bundle's own "trigger: manual" is parsed,
	// to be refused by checkBundle with a reason.
	parsed, err := bundleplugin.NewConfigBuilder().WithBytes(raw).WithServices(slices.Sorted(maps.Keys(c.services))).
		WithKeyConfigs(c.keys).Parse()
	if err != nil {
		return fmt.Errorf("opabundles: OPA configuration: bundles: %w", err)
	}
	if len(parsed.Bundles) == 0 {
		return fmt.Errorf("opabundles: OPA configuration: bundles is empty: list the bundles to download (docs/bundles.md)")
	}
	for _, name := range slices.Sorted(maps.Keys(parsed.Bundles)) {
		if err := c.checkBundle(name, parsed.Bundles[name]); err != nil {
			return err
		}
	}
	c.Bundles = parsed.Bundles
	return nil
}

func (c *Config) checkBundle(name string, s *bundleplugin.Source) error {
	if u, err := url.Parse(s.Resource); err == nil && u.Scheme == "file" {
		return fmt.Errorf("opabundles: OPA configuration: bundle %q: file:// resources are not downloaded: pass the file or directory as --bundle (docs/bundles.md)", name)
	}
	if *s.Trigger == plugins.TriggerManual {
		return fmt.Errorf("opabundles: OPA configuration: bundle %q: trigger manual is not supported: nothing would ever download it; use periodic (the default)", name)
	}
	if s.Persist {
		c.Warnings = append(c.Warnings, fmt.Sprintf("bundle %q: persist is ignored: %s", name, ignored["persistence_directory"]))
	}
	if s.Signing != nil && !s.Signing.SignatureRequired() {
		c.Warnings = append(c.Warnings, fmt.Sprintf("bundle %q: keys are configured but the bundle has no signing block: as in OPA, a signature is verified when present but an unsigned bundle is accepted; add a signing block to require signatures", name))
	}
	return nil
}

// clients makes one OPA REST client per service, with OPA's credentials
// (bearer tokens, client TLS, ...) or the proxy's SVID (SVIDPlugin,
// with svid), and checks each one's credential settings and CA file now,
// so a mistake fails the proxy's start rather than every download (token
// and certificate files are read later, at each request or handshake, as
// OPA reads them). Services of type oci and credential plugins other than
// SVIDPlugin are refused, and so is SVIDPlugin when svid is nil.
func (c *Config) clients(log *slog.Logger, svid *SVIDCredentials) (map[string]rest.Client, error) {
	out := make(map[string]rest.Client, len(c.services))
	for _, name := range slices.Sorted(maps.Keys(c.services)) {
		opts := []func(*rest.Client){rest.Name(name), rest.AuthPluginLookup(authPlugins(svid))}
		if log != nil {
			opts = append(opts, rest.Logger(newOPALogger(log, "service", name)))
		}
		client, err := rest.New(c.services[name], c.keys, opts...)
		if err != nil {
			return nil, fmt.Errorf("opabundles: OPA configuration: service %q: %w", name, err)
		}
		if err := checkClient(client, svid != nil); err != nil {
			return nil, fmt.Errorf("opabundles: OPA configuration: service %q: %w", name, err)
		}
		out[name] = client
	}
	return out, nil
}

// checkClient checks client's settings by building its HTTP client, as
// its first request will; haveSVID says whether SVIDPlugin can be.
func checkClient(client rest.Client, haveSVID bool) error {
	cfg := client.Config()
	if strings.EqualFold(cfg.Type, "oci") {
		return fmt.Errorf("type oci is not supported: serve the bundles over HTTP (docs/bundles.md)")
	}
	if p := cfg.Credentials.Plugin; p != nil && *p != SVIDPlugin {
		return fmt.Errorf("credentials plugin %q is not supported: the proxies run no OPA plugins; the one built in is %s (docs/bundles.md)", *p, SVIDPlugin)
	}
	if _, err := url.ParseRequestURI(cfg.URL); err != nil || cfg.URL == "" {
		return fmt.Errorf("url %q: want an http or https URL", cfg.URL)
	}
	if cfg.Credentials.Plugin != nil && !haveSVID {
		return errNoSVID
	}
	auth, err := cfg.AuthPlugin(client.AuthPluginLookup())
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	if _, err := auth.NewClient(*cfg); err != nil {
		return fmt.Errorf("credentials or tls: %w", err)
	}
	return nil
}

// InstanceID is this process's labels.id in decision logs and status
// reports, a random UUID made at start, as an OPA instance's is: a control
// plane tells the proxies apart by it.
var InstanceID = newInstanceID()

func newInstanceID() string {
	var b [16]byte
	crand.Read(b[:]) // never fails (crypto/rand.Read panics instead)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// envVar is OPA's ${VAR} notation in configuration files.
var envVar = regexp.MustCompile(`(?U:\${.*})`)

// expandEnv replaces ${VAR} by the value of VAR, as OPA does: a variable
// that is not set is left as it is, one set to "" becomes "".
func expandEnv(s string) string {
	return envVar.ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := os.LookupEnv(m[2 : len(m)-1]); ok {
			return v
		}
		return m
	})
}

func isNull(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null"
}
