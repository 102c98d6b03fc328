package opabundles

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/version"

	"github.com/regomesh/regomesh/policy/decisionlogs"
)

// TestParseConfig: an OPA configuration means what it means to OPA (OPA's
// parsers, defaults and errors); what the proxies cannot honour is refused
// when ignoring it would mislead, and warned about otherwise.
func TestParseConfig(t *testing.T) {
	const key = "-----BEGIN PUBLIC KEY-----\\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\\n-----END PUBLIC KEY-----"
	for _, tc := range []struct {
		name     string
		config   string
		check    func(t *testing.T, c *Config)
		err      string   // a substring of the error; "" for none
		warnings []string // substrings, one per warning expected
	}{
		{
			name: "defaults as OPA injects them",
			config: `
services:
  acmecorp: {url: "https://bundles.example.com/v1/"}
bundles:
  authz: {}
`,
			check: func(t *testing.T, c *Config) {
				b := c.Bundles["authz"]
				// Polling left unset: OPA's downloader polls every 60-120 s.
				if b.Service != "acmecorp" || b.Resource != "bundles/authz" || b.Polling.MinDelaySeconds != nil || b.Signing != nil || *b.Trigger != "periodic" {
					t.Errorf("bundle authz = service %q resource %q polling %+v signing %v trigger %v, want acmecorp, bundles/authz, OPA's polling, none, periodic",
						b.Service, b.Resource, b.Polling, b.Signing, *b.Trigger)
				}
			},
		},
		{
			name: "services as a list, polling, long polling and signing",
			config: `{
  "services": [{"name": "s1", "url": "http://a.example"}, {"name": "s2", "url": "http://b.example"}],
  "keys": {"global": {"key": "` + key + `", "algorithm": "ES256"}},
  "bundles": {"authz": {"service": "s2", "resource": "x/authz.tar.gz",
    "polling": {"min_delay_seconds": 5, "max_delay_seconds": 10, "long_polling_timeout_seconds": 30},
    "signing": {"keyid": "global", "scope": "write"}}}
}`,
			check: func(t *testing.T, c *Config) {
				b := c.Bundles["authz"]
				if b.Service != "s2" || b.Resource != "x/authz.tar.gz" || *b.Polling.LongPollingTimeoutSeconds != 30 ||
					b.Signing == nil || b.Signing.KeyID != "global" || b.Signing.Scope != "write" || !b.Signing.SignatureRequired() {
					t.Errorf("bundle authz = %+v, signing %+v", b, b.Signing)
				}
				if len(c.services) != 2 {
					t.Errorf("services %v, want s1 and s2", c.services)
				}
			},
		},
		{
			name: "keys without signing: signatures optional, as in OPA",
			config: `
services: {s: {url: "http://a.example"}}
keys: {global: {key: "` + key + `", algorithm: ES256}}
bundles: {authz: {}}
`,
			warnings: []string{`bundle "authz": keys are configured but the bundle has no signing block`},
		},
		{
			name: "ignored sections and unknown options are warnings",
			config: `
services: {s: {url: "http://a.example"}}
bundles: {authz: {persist: true, polling: {min_delay_secs: 1}}}
labels: {app: x}
default_decision: /x/y
`,
			warnings: []string{
				`unknown configuration option "bundles.authz.polling.min_delay_secs"`,
				`default_decision is ignored`,
				`labels is ignored`,
				`bundle "authz": persist is ignored`,
			},
		},
		{
			name:   "status: the first service by default, a partition, labels sent",
			config: "services: {s: {url: 'http://a'}, t: {url: 'http://b'}}\nlabels: {app: x}\nbundles: {a: {}}\nstatus: {partition_name: p1, console: true}\n",
			check: func(t *testing.T, c *Config) {
				if want := (&StatusReport{Service: "s", Resource: "/status/p1"}); !reflect.DeepEqual(c.Status, want) || c.labels["app"] != "x" {
					t.Errorf("Status = %+v, labels %v; want %+v and app: x", c.Status, c.labels, want)
				}
			},
			warnings: []string{"status: console is ignored"},
		},
		{name: "status: unknown service", config: "services: {s: {url: 'http://a'}}\nbundles: {a: {}}\nstatus: {service: t}\n", err: `invalid service name "t" in status`},
		{name: "status: plugin", config: "services: {s: {url: 'http://a'}}\nbundles: {a: {}}\nstatus: {plugin: mine}\n", err: `plugin "mine" is not supported`},
		{name: "status: manual", config: "services: {s: {url: 'http://a'}}\nbundles: {a: {}}\nstatus: {trigger: manual}\n", err: "trigger manual is not supported"},
		{name: "discovery", config: "services: {s: {url: 'http://a'}}\ndiscovery: {resource: /d}\nbundles: {a: {}}\n", err: "discovery is not supported"},
		{
			name:   "decision logs with OPA's defaults; labels sent with them",
			config: "services: {s: {url: 'http://a'}, t: {url: 'http://b'}}\nlabels: {app: x}\ndecision_logs: {console: true}\nbundles: {a: {}}\n",
			check: func(t *testing.T, c *Config) {
				want := &DecisionLogs{Service: "s", Upload: decisionlogs.Config{Resource: "/logs", UploadLimitBytes: 32768,
					MinDelay: 300 * time.Second, MaxDelay: 600 * time.Second, Labels: map[string]string{"app": "x", "id": InstanceID, "version": version.Version}}}
				if !reflect.DeepEqual(c.DecisionLogs, want) {
					t.Errorf("DecisionLogs = %+v, want %+v", c.DecisionLogs, want)
				}
			},
			warnings: []string{"decision_logs: console is ignored"},
		},
		{
			name: "decision logs reporting",
			config: `
services: {s: {url: 'http://a'}, t: {url: 'http://b'}}
bundles: {a: {}}
decision_logs:
  service: t
  resource: /v1/decisions
  mask_decision: /system/log/mask
  reporting: {buffer_type: event, buffer_size_limit_events: 500, upload_size_limit_bytes: 10, min_delay_seconds: 0, max_delay_seconds: 5, max_decisions_per_second: 100}
`,
			check: func(t *testing.T, c *Config) {
				want := &DecisionLogs{Service: "t", Upload: decisionlogs.Config{Resource: "/v1/decisions", UploadLimitBytes: 90,
					BufferLimitEvents: 500, MinDelay: 100 * time.Millisecond, MaxDelay: 5 * time.Second, MaxPerSecond: 100,
					Labels: map[string]string{"id": InstanceID, "version": version.Version}}}
				if !reflect.DeepEqual(c.DecisionLogs, want) {
					t.Errorf("DecisionLogs = %+v, want %+v", c.DecisionLogs, want)
				}
			},
			warnings: []string{"upload_size_limit_bytes 10 is outside [90, 4294967296]: 90 is used"},
		},
		{name: "decision logs: unknown service", config: "services: {s: {url: 'http://a'}}\ndecision_logs: {service: t}\nbundles: {a: {}}\n", err: `invalid service name "t" in decision_logs`},
		{name: "decision logs: plugin", config: "services: {s: {url: 'http://a'}}\ndecision_logs: {plugin: mine}\nbundles: {a: {}}\n", err: `plugin "mine" is not supported`},
		{name: "decision logs: manual", config: "services: {s: {url: 'http://a'}}\ndecision_logs: {reporting: {trigger: manual}}\nbundles: {a: {}}\n", err: "trigger manual is not supported"},
		{name: "decision logs: mask path", config: "services: {s: {url: 'http://a'}}\ndecision_logs: {mask_decision: /my/mask}\nbundles: {a: {}}\n", err: `mask_decision "/my/mask" is not supported`},
		{name: "decision logs: min without max", config: "services: {s: {url: 'http://a'}}\ndecision_logs: {reporting: {min_delay_seconds: 1}}\nbundles: {a: {}}\n", err: "needs both"},
		{name: "decision logs: min above max", config: "services: {s: {url: 'http://a'}}\ndecision_logs: {reporting: {min_delay_seconds: 9, max_delay_seconds: 1}}\nbundles: {a: {}}\n", err: "max reporting delay must be >= min"},
		{name: "decision logs: event limit on size buffer", config: "services: {s: {url: 'http://a'}}\ndecision_logs: {reporting: {buffer_size_limit_events: 9}}\nbundles: {a: {}}\n", err: "isn't supported for the size buffer type"},
		{name: "decision logs: bytes and rate", config: "services: {s: {url: 'http://a'}}\ndecision_logs: {reporting: {buffer_size_limit_bytes: 9, max_decisions_per_second: 1}}\nbundles: {a: {}}\n", err: "specify either"},
		{name: "decision logs: buffer type", config: "services: {s: {url: 'http://a'}}\ndecision_logs: {reporting: {buffer_type: disk}}\nbundles: {a: {}}\n", err: `invalid buffer type "disk"`},
		{name: "legacy bundle", config: "services: {s: {url: 'http://a'}}\nbundle: {name: a}\n", err: "deprecated bundle section"},
		{name: "no bundles", config: "services: {s: {url: 'http://a'}}\n", err: "no bundles"},
		{name: "unknown service", config: "services: {s: {url: 'http://a'}}\nbundles: {a: {service: t}}\n", err: `service name "t" not found`},
		{name: "no service", config: "bundles: {a: {}}\n", err: `service name "" not found`},
		{name: "file resource", config: "bundles: {a: {resource: 'file:///etc/b.tar.gz'}}\n", err: "pass the file or directory as --bundle"},
		{name: "manual trigger", config: "services: {s: {url: 'http://a'}}\nbundles: {a: {trigger: manual}}\n", err: "trigger manual is not supported"},
		{name: "min above max", config: "services: {s: {url: 'http://a'}}\nbundles: {a: {polling: {min_delay_seconds: 9, max_delay_seconds: 1}}}\n", err: "max polling delay must be >= min polling delay"},
		{name: "signing key not configured", config: "services: {s: {url: 'http://a'}}\nbundles: {a: {signing: {keyid: nope}}}\n", err: `key id nope not found`},
		{name: "oci service", config: "services: {s: {url: 'https://ghcr.io', type: oci}}\nbundles: {a: {}}\n", err: "type oci is not supported"},
		{name: "credential plugin", config: "services: {s: {url: 'http://a', credentials: {plugin: mine}}}\nbundles: {a: {}}\n", err: `credentials plugin "mine" is not supported`},
		{name: "two credentials", config: "services: {s: {url: 'http://a', credentials: {bearer: {token: x}, client_tls: {cert: c, private_key: k}}}}\nbundles: {a: {}}\n", err: "a maximum one credential method"},
		{name: "missing CA file", config: "services: {s: {url: 'https://a', tls: {ca_cert: /nonexistent/ca.pem}}}\nbundles: {a: {}}\n", err: "/nonexistent/ca.pem"},
		{name: "no url", config: "services: {s: {}}\nbundles: {a: {}}\n", err: `service "s": url ""`},
		{name: "not YAML", config: "services: [\n", err: "OPA configuration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.config))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseConfig = %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
			if len(c.Warnings) != len(tc.warnings) {
				t.Errorf("warnings %q, want %d", c.Warnings, len(tc.warnings))
			}
			for _, w := range tc.warnings {
				if !containsOne(c.Warnings, w) {
					t.Errorf("no warning contains %q: %q", w, c.Warnings)
				}
			}
		})
	}
}

func containsOne(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestExpandEnv follows OPA: ${VAR} is replaced when VAR is set (even to
// ""), and kept as written otherwise.
func TestExpandEnv(t *testing.T) {
	t.Setenv("REGOMESH_TEST_SET", "value")
	t.Setenv("REGOMESH_TEST_EMPTY", "")
	got := expandEnv("a ${REGOMESH_TEST_SET} b ${REGOMESH_TEST_EMPTY} c ${REGOMESH_TEST_UNSET} $REGOMESH_TEST_SET")
	if want := "a value b  c ${REGOMESH_TEST_UNSET} $REGOMESH_TEST_SET"; got != want {
		t.Errorf("expandEnv = %q, want %q", got, want)
	}
}
