// Package ermeosecrets is a HashiCorp Vault secrets engine that holds an Ermeo
// integration's client credentials and, for each Ermeo account, the current
// single-use refresh token, and serves leased access tokens from creds/<name>.
//
// One file per noun; docs/code.md says which holds what.
package ermeosecrets

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
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

	store *accountStore    // every account's state (store.go)
	now   func() time.Time // the clock; tests inject their own
	// httpClient serves every call to Ermeo (tests inject their own); a
	// ca_certificate in config makes client.go use a copy that trusts it.
	httpClient *http.Client
	// config caches the stored config and the Ermeo client built from it, so
	// that a read of a token with enough life left makes no storage call.
	// Replaced whole by every write, never changed in place; dropped by
	// invalidate when another node changes it.
	config   atomic.Pointer[cachedConfig]
	configMu outerLock // serializes config writes and deletes (locks.go)
	metrics  *metrics
	// crashHook, set only by tests, stops the refresh protocol dead at a
	// step, as a crashed plugin process would.
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
	b.store = newAccountStore(now, b.peekConfig, func() hclog.Logger { return b.Logger() })
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

// HandleRequest answers a secret sent as another JSON type than a string with
// a 400 that names it and not its value (wrongSecret), before the framework
// converts the fields: its own conversion error would quote the value, and
// Vault writes that error into the response, the audit log and the server log.
func (b *backend) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	// Most requests (creds reads) carry no field: they are not routed twice.
	if len(req.Data) > 0 && fieldOps[req.Operation] {
		if route := b.Route(req.Path); route != nil {
			if err := wrongSecret(route.Fields, req.Data); err != nil {
				return logical.ErrorResponse(err.Error()), nil
			}
		}
	}
	return b.Backend.HandleRequest(ctx, req)
}

// fieldOps are the operations whose fields the framework converts.
var fieldOps = map[logical.Operation]bool{logical.CreateOperation: true, logical.UpdateOperation: true,
	logical.PatchOperation: true, logical.ReadOperation: true, logical.DeleteOperation: true, logical.ListOperation: true}

// HandleExistenceCheck runs before HandleRequest on every write (Vault asks
// whether it creates or updates), and the framework converts the request's
// fields for it too. The existence checks read only the path, so they get no
// field: a field of the wrong type is then HandleRequest's 400, never Vault's
// "failed to run existence check", which Vault logs with the value.
func (b *backend) HandleExistenceCheck(ctx context.Context, req *logical.Request) (bool, bool, error) {
	r := *req
	r.Data = nil
	return b.Backend.HandleExistenceCheck(ctx, &r)
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

// initialize runs when the mount starts on a node that may write: it loads
// the schedule in the background (runLoad reports interrupted refreshes).
func (b *backend) initialize(_ context.Context, req *logical.InitializationRequest) error {
	// Registered before the goroutine starts, so that a clean at once stops it.
	load := b.store.beginLoad(context.Background())
	if load == nil {
		return nil
	}
	go func() {
		if err := b.runScheduleLoad(load, req.Storage); err != nil && !errors.Is(err, context.Canceled) {
			b.Logger().Error("could not load the keep-alive schedule; the next periodic tick tries again", "error", err)
		}
	}()
	return nil
}

// clean cancels a schedule load in progress, over when clean returns.
func (b *backend) clean(context.Context) { b.store.stopLoad() }

// loadSchedule loads the schedule, unless it is loaded or being loaded.
func (b *backend) loadSchedule(ctx context.Context, s logical.Storage) error {
	if load := b.store.beginLoad(ctx); load != nil {
		return b.runScheduleLoad(load, s)
	}
	return nil
}

// runScheduleLoad reads config (its defaults decide when accounts are due),
// then every account.
func (b *backend) runScheduleLoad(load *scheduleLoad, s logical.Storage) error {
	return b.store.runLoad(load, s, func(ctx context.Context) error {
		_, err := b.getConfig(ctx, s)
		return err
	})
}
