package waypoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/regomesh/regomesh/policy/istio"
)

// Defaults of KeySetsConfig.
const (
	// DefaultJWKSRefresh is how often a jwksUri is fetched again: istiod's
	// refresh interval.
	DefaultJWKSRefresh = 20 * time.Minute
	// DefaultJWKSRetry is the first wait after a failed fetch; it doubles
	// up to the refresh interval.
	DefaultJWKSRetry = time.Second
	// maxJWKSBytes bounds a fetched key set.
	maxJWKSBytes = 1 << 20
)

// KeySetsConfig configures NewKeySets.
type KeySetsConfig struct {
	// Client fetches http and https URIs; default a client with a 10s
	// timeout.
	Client *http.Client
	// Refresh and Retry: see DefaultJWKSRefresh and DefaultJWKSRetry.
	Refresh, Retry time.Duration
	Logger         *slog.Logger
}

// KeySets holds the JSON Web Key Sets of the JWT rules in force: inline
// ones parsed once, each jwksUri (https, http or file) fetched in the
// background and refreshed, the last good copy kept when a fetch fails.
// One fetcher runs per URI, shared by every rule that names it, and for as
// long as the KeySets: Close stops them.
type KeySets struct {
	cfg    KeySetsConfig
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	inline map[string]*jose.JSONWebKeySet // by the JWKS text
	remote map[string]*remoteKeySet       // by URI
}

// remoteKeySet is one URI's last good key set.
type remoteKeySet struct {
	mu      sync.Mutex
	set     *jose.JSONWebKeySet
	lastErr error
	fetched chan struct{} // closed after the first attempt
}

// NewKeySets starts empty; rules register their sets through NewAuthn.
func NewKeySets(cfg KeySetsConfig) *KeySets {
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultJWKSRefresh
	}
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultJWKSRetry
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &KeySets{cfg: cfg, ctx: ctx, cancel: cancel,
		inline: map[string]*jose.JSONWebKeySet{}, remote: map[string]*remoteKeySet{}}
}

// Close stops the fetchers and waits for them.
func (k *KeySets) Close() {
	k.cancel()
	k.wg.Wait()
}

// register makes rule's key set available: parses an inline JWKS (an
// error if it does not parse), or starts fetching its URI.
func (k *KeySets) register(rule istio.JWTRule) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if rule.JWKS != "" {
		if _, ok := k.inline[rule.JWKS]; ok {
			return nil
		}
		set, err := parseJWKS([]byte(rule.JWKS))
		if err != nil {
			return fmt.Errorf("jwks: %w", err)
		}
		k.inline[rule.JWKS] = set
		return nil
	}
	if rule.JWKSURI == "" {
		return errors.New("neither jwks nor jwksUri is set: no key can validate this issuer's tokens")
	}
	if _, ok := k.remote[rule.JWKSURI]; ok {
		return nil
	}
	if k.ctx.Err() != nil {
		return errors.New("key sets closed")
	}
	r := &remoteKeySet{fetched: make(chan struct{})}
	k.remote[rule.JWKSURI] = r
	k.wg.Go(func() { k.keepFetching(rule.JWKSURI, r) })
	return nil
}

// WaitFetched waits until every URI registered so far has been tried
// once (successfully or not), or ctx ends.
func (k *KeySets) WaitFetched(ctx context.Context) error {
	k.mu.Lock()
	var chans []chan struct{}
	for _, r := range k.remote {
		chans = append(chans, r.fetched)
	}
	k.mu.Unlock()
	for _, c := range chans {
		select {
		case <-c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// get is rule's key set: inline, or its URI's last good copy.
func (k *KeySets) get(rule istio.JWTRule) (*jose.JSONWebKeySet, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if rule.JWKS != "" {
		if set := k.inline[rule.JWKS]; set != nil {
			return set, nil
		}
		return nil, ErrJWKSFetch
	}
	r := k.remote[rule.JWKSURI]
	if r == nil {
		return nil, ErrJWKSFetch
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.set == nil {
		return nil, ErrJWKSFetch
	}
	return r.set, nil
}

// keepFetching fetches uri now, then every Refresh; after a failure it
// retries sooner, doubling the wait, and keeps the last good set.
func (k *KeySets) keepFetching(uri string, r *remoteKeySet) {
	wait := k.cfg.Retry
	first := true
	for {
		set, err := k.fetch(uri)
		r.mu.Lock()
		if err == nil {
			r.set, r.lastErr = set, nil
		} else {
			r.lastErr = err
		}
		held := r.set != nil
		r.mu.Unlock()
		if first {
			close(r.fetched)
			first = false
		}
		next := k.cfg.Refresh
		if err != nil {
			k.cfg.Logger.Warn("JWKS fetch failed; tokens of its issuers are refused until one succeeds unless an earlier copy is held",
				"jwks_uri", uri, "error", err, "earlier_copy_held", held, "retry_in", wait)
			next, wait = wait, min(2*wait, k.cfg.Refresh)
		} else {
			wait = k.cfg.Retry
		}
		select {
		case <-k.ctx.Done():
			return
		case <-time.After(next):
		}
	}
}

func (k *KeySets) fetch(uri string) (*jose.JSONWebKeySet, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, err
	}
	var body []byte
	if u.Scheme == "file" {
		f, err := os.Open(u.Path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		body, err = io.ReadAll(io.LimitReader(f, maxJWKSBytes+1))
		if err != nil {
			return nil, err
		}
	} else {
		req, err := http.NewRequestWithContext(k.ctx, http.MethodGet, uri, nil)
		if err != nil {
			return nil, err
		}
		resp, err := k.cfg.Client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", uri, resp.Status)
		}
		if body, err = io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1)); err != nil {
			return nil, err
		}
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("%s: key set larger than %d bytes", uri, maxJWKSBytes)
	}
	return parseJWKS(body)
}

// parseJWKS reads a JSON Web Key Set with at least one key.
func parseJWKS(b []byte) (*jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("not a JSON Web Key Set: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("the JSON Web Key Set has no key")
	}
	return &set, nil
}
