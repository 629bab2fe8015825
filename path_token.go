package ermeosecrets

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const secretAccessTokenType = "ermeo_access_token"

func pathCreds(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern: "creds/" + accountNamePattern,
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
			OperationVerb:   "generate",
			OperationSuffix: "access-token",
		},
		Fields: map[string]*framework.FieldSchema{"name": accountNameField},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:  withAccountName(b.pathCredsRead),
				Summary:   "An access token of the account with at least min_ttl of life left, under a non-renewable lease that ends before the token does.",
				Responses: map[int][]framework.Response{http.StatusOK: {{Description: "OK", Fields: credsResponseFields}}},
			},
		},
		HelpSynopsis:    pathCredsHelpSyn,
		HelpDescription: pathCredsHelpDesc,
	}}
}

var credsResponseFields = map[string]*framework.FieldSchema{
	"access_token":    {Type: framework.TypeString, Required: true, Description: "Send as the header Authorization: Bearer <access_token>."},
	"token_type":      {Type: framework.TypeString, Required: true, Description: "Always Bearer (capitalised, as Ermeo's Authorization header needs)."},
	"expires_at":      {Type: framework.TypeString, Required: true, Description: "When Ermeo stops accepting the token (RFC 3339)."},
	"expires_in":      {Type: framework.TypeInt64, Required: true, Description: "Seconds until expires_at."},
	"ttl":             {Type: framework.TypeInt64, Description: "Only for accounts with lease=false: seconds until this token should be read again (it then has just over min_ttl left)."},
	"rotation_period": {Type: framework.TypeInt64, Description: "Only for accounts with lease=false: the token's lifetime, in seconds. Vault Agent honours ttl only when this field is present."},
}

func secretAccessToken(b *backend) *framework.Secret {
	return &framework.Secret{
		Type:   secretAccessTokenType,
		Fields: credsResponseFields,
		// Ermeo has no revocation endpoint: revoking the lease does nothing
		// upstream, and the token stays valid until it expires.
		Revoke: func(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
			return nil, nil
		},
	}
}

func (b *backend) pathCredsRead(ctx context.Context, req *logical.Request, _ *framework.FieldData, name string) (*logical.Response, error) {
	a, cfg, warnings, err := b.accessToken(ctx, req.Storage, req.MountPoint, name)
	if err != nil {
		return errorResponse(err)
	}
	if a == nil {
		return nil, nil
	}

	now := b.now()
	remaining := a.AccessTokenExpiresAt.Sub(now)
	ttl := leaseTTL(remaining, effectiveMinTTL(a, cfg))
	data := map[string]any{
		"access_token": a.AccessToken,
		"token_type":   "Bearer",
		"expires_at":   formatTime(a.AccessTokenExpiresAt),
		"expires_in":   int64(remaining.Seconds()),
	}
	var resp *logical.Response
	if !effectiveLease(a, cfg) {
		// As Vault's database static roles do: no lease, a ttl that tells
		// Vault Agent when to read again, and a rotation_period, without
		// which Agent ignores the ttl (consul-template's leaseCheckWait).
		// Agent comes back 1s after the ttl, hence the second less.
		data["ttl"] = int64(max(ttl-time.Second, time.Second).Seconds())
		data["rotation_period"] = int64(a.tokenLifetime().Seconds())
		resp = &logical.Response{Data: data}
	} else {
		resp = b.Secret(secretAccessTokenType).Response(data, map[string]any{"account": name, "generation": a.Generation})
		// Not renewable: Vault Agent then reads again at 85-95% of the
		// lease, in time for the next token. (A renewable lease would let
		// Vault Proxy cache creds, but Agent's renewer and Proxy's need
		// schedules that conflict; see the README's "Which lease mode".)
		resp.Secret.TTL = ttl
		resp.Secret.MaxTTL = remaining
		resp.Secret.Renewable = false
	}
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	return resp, nil
}

// leaseTTL is the lease for a token with remaining life: it ends when the
// token would be refreshed (min_ttl before it expires), so that Vault Agent
// comes back for the next token in time. A token that has less than min_ttl
// left (a short-lived token, or one served while Ermeo is unreachable) gets
// half its remaining life.
func leaseTTL(remaining, minTTL time.Duration) time.Duration {
	ttl := remaining - minTTL
	if ttl < time.Second {
		ttl = remaining / 2
	}
	if ttl < time.Second {
		ttl = time.Second
	}
	return ttl.Truncate(time.Second)
}

// accessToken returns the account with an access token that has at least the
// account's min_ttl of life left, refreshing its chain first if it must. A
// reader that finds such a token never takes the lock. When a refresh fails,
// a still valid access token is served with a warning.
func (b *backend) accessToken(ctx context.Context, s logical.Storage, mount, name string) (*accountEntry, *configEntry, []string, error) {
	cfg, err := b.loadConfigCached(ctx, s)
	if err != nil {
		return nil, nil, nil, err
	}
	if b.store.hasUnsaved(name) {
		b.store.flush(ctx, s, name)
	}
	a, err := b.store.get(ctx, s, name)
	if err != nil || a == nil {
		return nil, cfg, nil, err
	}
	if b.hasLife(a, effectiveMinTTL(a, cfg)) {
		return a, cfg, b.stateWarnings(a, mount, name), nil
	}
	if w := b.youngTokenWarning(a, cfg); w != "" {
		return a, cfg, append(b.stateWarnings(a, mount, name), w), nil
	}
	if !b.WriteSafeReplicationState() {
		return nil, cfg, nil, logical.ErrReadOnly
	}

	lock := b.store.lock(name)
	lock.Lock()
	defer lock.Unlock()

	// Another reader may have refreshed while this one waited for the lock.
	a, err = b.store.getLocked(ctx, s, name)
	if err != nil || a == nil {
		return nil, cfg, nil, err
	}
	if b.hasLife(a, effectiveMinTTL(a, cfg)) {
		return a, cfg, b.stateWarnings(a, mount, name), nil
	}
	if cfg == nil {
		return b.serveStale(a, cfg, &statusError{code: http.StatusBadRequest,
			msg: fmt.Sprintf("config: not written, so the token cannot be refreshed: run vault write %sconfig client_id=... client_secret=-", mount)})
	}
	next, err := b.rotateLocked(ctx, rotation{storage: s, cfg: cfg, mount: mount, name: name}, a)
	if err != nil {
		if next == nil {
			next = a
		}
		return b.serveStale(next, cfg, err)
	}
	return next, cfg, nil, nil
}

// youngTokenWarning guards against a min_ttl that asks for more life than a
// token can have: a read never spends a refresh on an access token younger
// than half its lifetime (only an operator's rotate does). For such a token
// it returns the warning to serve it with, naming the setting; otherwise "".
func (b *backend) youngTokenWarning(a *accountEntry, cfg *configEntry) string {
	lifetime := a.tokenLifetime()
	if lifetime <= 0 || a.AccessToken == "" || a.AccessTokenExpiresAt.Sub(b.now()) <= lifetime/2 {
		return ""
	}
	setting, whose := "min_ttl", "the account's"
	if a.MinTTL == 0 {
		setting, whose = "default_min_ttl", "config's"
	}
	left := a.AccessTokenExpiresAt.Sub(b.now()).Truncate(time.Second)
	return fmt.Sprintf("not refreshing: this access token has %s left of its %s, but %s %s (%s) asks for more; a read refreshes only tokens past half their life: set %s below %s",
		humanDuration(left), humanDuration(lifetime), whose, setting, humanDuration(effectiveMinTTL(a, cfg)), setting, humanDuration(lifetime/2))
}

// serveStale serves an access token that could not be refreshed, with a
// warning, while it is still valid; after that, the refresh's error.
func (b *backend) serveStale(a *accountEntry, cfg *configEntry, err error) (*accountEntry, *configEntry, []string, error) {
	if errors.Is(err, logical.ErrReadOnly) || a.AccessToken == "" || !b.hasLife(a, time.Second) {
		return nil, cfg, nil, err
	}
	left := a.AccessTokenExpiresAt.Sub(b.now()).Truncate(time.Second)
	return a, cfg, []string{fmt.Sprintf("serving the last access token, valid for %s more, because the refresh failed: %s", left, err)}, nil
}

// stateWarnings warns the reader of a token that is still good of an account
// whose chain is gone: the token will not be replaced without an operator.
func (b *backend) stateWarnings(a *accountEntry, mount, name string) []string {
	if a.State != stateNeedsReauth {
		return nil
	}
	left := a.AccessTokenExpiresAt.Sub(b.now()).Truncate(time.Second)
	return []string{fmt.Sprintf("this access token is valid for %s more and will not be replaced: %s", left,
		(&errNeedsReauth{mount: mount, name: name, reason: a.LastError}).Error())}
}

// hasLife reports whether a's access token has at least min of life left.
func (b *backend) hasLife(a *accountEntry, min time.Duration) bool {
	return a.AccessToken != "" && a.AccessTokenExpiresAt.Sub(b.now()) >= min
}

const pathCredsHelpSyn = `Get an access token of the account, with at least min_ttl of life left.`

const pathCredsHelpDesc = `
Returns access_token, token_type (Bearer), expires_at and expires_in. Send the
token to Ermeo as the header "Authorization: Bearer <access_token>".

A token with at least the account's min_ttl of life left is returned as it is,
without calling Ermeo. Otherwise the account's refresh chain is rotated first,
under the account's lock: many readers at once cause one refresh.

The token comes with a non-renewable lease that ends min_ttl before the token
expires, so that Vault Agent reads again in time for a fresh token. Revoking
the lease does nothing at Ermeo (Ermeo has no revocation): the token stays
valid until it expires. For an account written with lease=false there is no
lease; a ttl field says when to read again, as with Vault's static credentials.

If a refresh fails while the current token is still valid, that token is
served with a warning. If the account's chain is gone, the error says which
command restarts it.

Example:
  vault read ermeo/creds/app
  vault read -field=access_token ermeo/creds/app
`
