// Package ermeosecrets is a HashiCorp Vault secrets engine that holds an Ermeo
// integration's client credentials and, for each Ermeo account, the current
// single-use refresh token, and serves leased access tokens from creds/<name>.
package ermeosecrets

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
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

	// accountLocks serialize every read-modify-write of one account and
	// every rotation of its refresh chain. Never hold two at once.
	accountLocks []*locksutil.LockEntry

	// now is the clock; tests inject their own.
	now func() time.Time
	// httpClient is used for every call to Ermeo; nil means a default one.
	httpClient *http.Client

	// unsaved holds, per account, a refreshed pair whose storage write failed:
	// it is served from memory and written again at the next chance, so that
	// a failed write never drops a refresh token that Ermeo already issued.
	// Guarded by unsavedMu, and only changed under the account's lock.
	unsavedMu sync.Mutex
	unsaved   map[string]*accountEntry

	// schedule is when each account's idle chain is next due for rotation.
	schedule *schedule

	// crashHook, set only by tests, makes the refresh protocol stop dead at
	// a step, as a crashed plugin process would.
	crashHook func(crashPoint) bool
}

func newBackend(now func() time.Time, httpClient *http.Client) *backend {
	b := &backend{
		accountLocks: locksutil.CreateLocks(),
		now:          now,
		httpClient:   httpClient,
		unsaved:      map[string]*accountEntry{},
		schedule:     newSchedule(),
	}
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
		),
		Secrets:        []*framework.Secret{secretAccessToken(b)},
		InitializeFunc: b.initialize,
		Clean:          b.clean,
		PeriodicFunc:   b.periodic,
		RunningVersion: Version,
	}
	return b
}

// accountLock returns the lock that serializes everything done to one account.
func (b *backend) accountLock(name string) *locksutil.LockEntry {
	return locksutil.LockForKey(b.accountLocks, name)
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
