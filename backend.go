// Package ermeosecrets is a HashiCorp Vault secrets engine that holds an Ermeo
// integration's client credentials and, for each Ermeo account, the current
// single-use refresh token, and serves leased access tokens from creds/<name>.
//
// Its files, in the order a creds read meets them:
//
//	backend.go        Factory, the backend type, field checks before the framework, lifecycle, Invalidate
//	path_token.go     creds/<name>: the access token and its lease
//	accounts.go       the account store: entry, cache, unsaved overlay, schedule, one write
//	rotation.go       the refresh protocol, each outcome classified and recorded in one place
//	client.go         the Ermeo client, built once per cached config
//	locks.go          every lock, and the one order in which they may be taken
//	storage.go        every storage key, and the entries' load and save
//	path_config.go    config: fields, credentials check, handlers, help
//	path_accounts.go  accounts/, accounts/<name>, accounts/<name>/rotate
//	keepalive.go      the periodic function that rotates idle chains
//	metrics.go        metrics (JSON and Prometheus) and events
//	validate.go       the limits and checks of every field, in the operator's words
package ermeosecrets

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
)

// Version is the plugin's version, reported to Vault. The Makefile sets it at
// build time with -ldflags "-X ...Version=vX.Y.Z".
var Version = "v0.1.0-dev"

// Factory is the plugin's entry point: Vault calls it once per mount.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := newBackend(time.Now, nil)
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

// backend is one mount of the Ermeo secrets engine.
type backend struct {
	*framework.Backend

	// store is every account's state: cache, unsaved overlay, schedule.
	store *accountStore

	// now is the clock; tests inject their own.
	now func() time.Time
	// httpClient is used for every call to Ermeo (tests inject their own);
	// with a ca_certificate in config, a copy that trusts it is used instead.
	// See client.go.
	httpClient *http.Client

	// config caches what storage holds, and the Ermeo client built from it,
	// so that a read of a token with enough life left makes no storage
	// call. Written through by every write; dropped by Invalidate when
	// another node changes it. Replaced whole, never changed in place.
	config atomic.Pointer[cachedConfig]
	// configMu serializes config writes and deletes (read-modify-writes);
	// see locks.go for the order.
	configMu outerLock

	// metrics counts what the refresh protocol did (see metrics.go).
	metrics *metrics

	// crashHook, set only by tests, makes the refresh protocol stop dead at
	// a step, as a crashed plugin process would.
	crashHook func(crashPoint) bool
}

func newBackend(now func() time.Time, httpClient *http.Client) *backend {
	if httpClient == nil {
		httpClient = defaultHTTPClient()
	}
	b := &backend{
		now:        now,
		httpClient: httpClient,
		metrics:    newMetrics(),
	}
	b.store = newAccountStore(now, b.cachedConfig, func() hclog.Logger { return b.Logger() })
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			SealWrapStorage: sealWrappedPaths,
		},
		Paths: framework.PathAppend(
			pathConfig(b),
			pathAccounts(b),
			pathCreds(b),
			pathMetrics(b),
		),
		Secrets:        []*framework.Secret{secretAccessToken(b)},
		InitializeFunc: b.initialize,
		Clean:          b.clean,
		PeriodicFunc:   b.periodic,
		Invalidate:     b.invalidate,
		RunningVersion: Version,
	}
	return b
}

// HandleRequest checks the type of every field the request carries before the
// framework converts it (see checkFieldTypes): the framework's own conversion
// error quotes the value, and Vault puts that error into the response, the
// audit log and the server log, which must never see a secret.
func (b *backend) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	// Most requests (creds reads) carry no field: they are not routed twice.
	if len(req.Data) > 0 && takesFields(req.Operation) {
		if route := b.Route(req.Path); route != nil {
			if msg := checkFieldTypes(route.Fields, req.Data); msg != "" {
				return logical.ErrorResponse(msg), nil
			}
		}
	}
	return b.Backend.HandleRequest(ctx, req)
}

// HandleExistenceCheck runs before HandleRequest on every write (Vault asks
// whether the write creates or updates) and converts the same fields: a field
// of the wrong type is left out of it, so that its error is HandleRequest's
// 400 and not Vault's "failed to run existence check", logged with the value.
func (b *backend) HandleExistenceCheck(ctx context.Context, req *logical.Request) (bool, bool, error) {
	if route := b.Route(req.Path); route != nil && len(req.Data) > 0 {
		var clean map[string]any
		for k, v := range req.Data {
			if s, ok := route.Fields[k]; ok && checkFieldType(k, s, v) != "" {
				if clean == nil {
					clean = make(map[string]any, len(req.Data))
					for k2, v2 := range req.Data {
						clean[k2] = v2
					}
				}
				delete(clean, k)
			}
		}
		if clean != nil {
			r := *req
			r.Data = clean
			req = &r
		}
	}
	return b.Backend.HandleExistenceCheck(ctx, req)
}

// takesFields reports whether the framework converts a request's fields for op.
func takesFields(op logical.Operation) bool {
	switch op {
	case logical.CreateOperation, logical.UpdateOperation, logical.PatchOperation,
		logical.ReadOperation, logical.DeleteOperation, logical.ListOperation:
		return true
	}
	return false
}

// cachedConfig is the config as storage holds it (cfg is nil when there is
// none), and the Ermeo client built from it once (or why it could not be).
type cachedConfig struct {
	cfg       *configEntry
	client    *ermeo.Client
	clientErr error
	http      *http.Client // the backend's HTTP client the client was built on
}

// newCachedConfig builds cfg's client.
func (b *backend) newCachedConfig(cfg *configEntry) *cachedConfig {
	c := &cachedConfig{cfg: cfg, http: b.httpClient}
	if cfg != nil {
		c.client, c.clientErr = b.newClient(cfg)
	}
	return c
}

// loadConfigCached returns the config, from memory when it is there.
func (b *backend) loadConfigCached(ctx context.Context, s logical.Storage) (*configEntry, error) {
	if c := b.config.Load(); c != nil {
		return c.cfg, nil
	}
	cfg, err := loadConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	c := b.newCachedConfig(cfg)
	if !b.config.CompareAndSwap(nil, c) {
		// Another request cached it first: use that one, and its client.
		if now := b.config.Load(); now != nil {
			return now.cfg, nil
		}
	}
	return cfg, nil
}

// cachedConfig is the config in memory, or nil if it is not loaded (or none).
func (b *backend) cachedConfig() *configEntry {
	if c := b.config.Load(); c != nil {
		return c.cfg
	}
	return nil
}

// cacheConfig records what was just written to storage.
func (b *backend) cacheConfig(cfg *configEntry) {
	b.config.Store(b.newCachedConfig(cfg))
}

// invalidate drops what another node changed (performance standbys and
// secondaries get the active node's writes this way).
func (b *backend) invalidate(_ context.Context, key string) {
	switch {
	case key == configKey:
		b.config.Store(nil)
	case strings.HasPrefix(key, accountPrefix):
		b.store.invalidate(strings.TrimPrefix(key, accountPrefix))
	}
}

const backendHelp = `
The Ermeo secrets engine hands out Ermeo API access tokens.

It keeps the Ermeo client credentials (config) and, for each Ermeo account
(accounts/<name>), the current refresh token of the account's OAuth chain.
Ermeo's refresh tokens work once: the engine rotates each chain under a lock,
records each refresh before sending it, and stores the new pair before handing
out its access token, so that a chain is never used twice and never lost.

Read creds/<name> for an access token with at least the account's min_ttl of
life left.
`
