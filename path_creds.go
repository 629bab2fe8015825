package ermeosecrets

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
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
				Summary:   "An access token of the account with at least min_ttl of life left, under a lease renewable by half of min_ttl, never past half of min_ttl before the token expires.",
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
		Renew:  b.renewAccessToken,
		// Ermeo has no revocation: the token stays valid until it expires.
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
	minTTL := effectiveMinTTL(a, cfg)
	data := map[string]any{
		"access_token": a.AccessToken,
		"token_type":   "Bearer",
		"expires_at":   formatTime(a.AccessTokenExpiresAt),
		"expires_in":   int64(remaining.Seconds()),
	}
	var resp *logical.Response
	if !effectiveLease(a, cfg) {
		// As Vault's database static roles: no lease, a ttl telling Vault Agent
		// when to read again (it comes back 1 s after, hence the second less),
		// and rotation_period, without which Agent ignores the ttl
		// (consul-template's leaseCheckWait).
		data["ttl"] = int64(max(leaseTTL(remaining, minTTL)-time.Second, time.Second).Seconds())
		data["rotation_period"] = int64(a.AccessTokenLifetime.Seconds())
		resp = &logical.Response{Data: data}
	} else {
		lease := leaseFor(now, a.AccessTokenExpiresAt, minTTL)
		internal := map[string]any{"account": name, "generation": a.Generation}
		if lease.renewable {
			if !b.leaseHolder(req, name, a.Generation) {
				lease = credsLease{ttl: lease.step, end: now.Add(lease.step)}
				warnings = append(warnings, fmt.Sprintf("this lease is not renewable: this Vault token was given a renewable lease on the same access token under %s ago (Vault Proxy and Agent cache one answer per request and renew it; a second renewable lease would evict it when its renewal ends)",
					renewableLeaseWait))
			} else {
				internal["renew_step"] = int64(lease.step.Seconds())
				internal["lease_end"] = lease.end.UTC().Format(time.RFC3339Nano)
			}
		}
		resp = b.Secret(secretAccessTokenType).Response(data, internal)
		resp.Secret.TTL = lease.ttl
		resp.Secret.MaxTTL = lease.end.Sub(now)
		resp.Secret.Renewable = lease.renewable
	}
	resp.Warnings = append(resp.Warnings, warnings...)
	return resp, nil
}

// A creds lease, by the token's life left (usable end: min_ttl before expiry):
//
//	life left                     lease                                      why
//	at least min_ttl + 2 s        renewable, min_ttl/2 a step, up to          Vault's renewer (Agent, Proxy) lets go at a
//	                              min_ttl/2 before expiry, never past it     short renewal, only past the usable end: the
//	                                                                         next read refreshes; Proxy caches one answer
//	the last 2 s before the end   non-renewable, half the life left          Agent reads again in a later second
//	                                                                         (consul-template keeps one answer a second)
//	less than min_ttl             non-renewable, half the life left          readers come back while it is still valid
//
// One exception: a read of the same token generation by the same Vault token
// within renewableLeaseWait of its renewable lease gets a lease of one step
// that is not renewable (at most maxNotRenewable such reads; then a renewable
// one again). Vault Proxy (and Agent's cache) let concurrent misses through:
// each would cache its renewable answer under the one request's index and
// renew it, and each renewer, when it lets go, evicts whatever answer the
// index then holds, the next generation's included, whose readers then read
// again, and so on (the cascade). An answer that is not renewable Proxy
// passes through, without caching or renewing it. VSO, vault read and Agent's
// templates get a lease longer than 0 either way (VSO reads again at 67 to
// 77% of it).
type credsLease struct {
	ttl       time.Duration
	renewable bool
	end       time.Time     // the latest the lease may reach (renewable: min_ttl/2 before expiry)
	step      time.Duration // what one renewal adds
}

// leaseHolder reports whether a creds read by req's Vault token may have a
// renewable lease on the account's token generation (see credsLease); always,
// if Vault named no token.
func (b *backend) leaseHolder(req *logical.Request, name string, generation uint64) bool {
	return req.ClientToken == "" || b.store.claimRenewableLease(name, req.ClientToken, generation)
}

const (
	// renewableLeaseWait and maxNotRenewable bound the exception in
	// credsLease. Proxy's concurrent misses reach the plugin over about 0.1 s
	// (50 of them, measured by the Proxy e2e test), one per reader at most.
	// Two kinds of request under one Proxy token (two clients whose headers
	// differ) are two cache entries, each needing its renewable lease: the
	// second, if its entry is evicted within the wait, passes reads through
	// until it gets one, at most maxNotRenewable.
	renewableLeaseWait = 2 * time.Second
	maxNotRenewable    = 64
	// minRenewStep is the shortest renewable step: with less, Vault's
	// whole-second leases leave the renewer no room between renewals.
	minRenewStep    = 3 * time.Second
	renewableWindow = 2 * time.Second // credsLease's last 2 s before the usable end
)

func leaseFor(now, expiresAt time.Time, minTTL time.Duration) credsLease {
	remaining := expiresAt.Sub(now)
	step := (minTTL / 2).Truncate(time.Second)
	if step >= minRenewStep && remaining-minTTL >= renewableWindow {
		return credsLease{ttl: step, renewable: true, end: expiresAt.Add(-minTTL / 2), step: step}
	}
	ttl := leaseTTL(remaining, minTTL)
	if remaining < minTTL+renewableWindow && remaining >= minTTL {
		ttl = max((remaining / 2).Truncate(time.Second), time.Second)
	}
	return credsLease{ttl: ttl, end: now.Add(ttl)}
}

// renewAccessToken renews a creds lease by its step up to its end (see
// credsLease), with a warning when it is cut short; at the end it fails.
func (b *backend) renewAccessToken(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	name, _ := req.Secret.InternalData["account"].(string)
	generation, okGen := internalUint(req.Secret.InternalData["generation"])
	step, okStep := internalUint(req.Secret.InternalData["renew_step"])
	end, errEnd := time.Parse(time.RFC3339Nano, fmt.Sprint(req.Secret.InternalData["lease_end"]))
	if validateAccountName(name) != nil || !okGen || !okStep || errEnd != nil {
		return logical.ErrorResponse("this lease cannot be renewed: it does not name an account of this engine's renewable leases; read creds/<name> again"), nil
	}
	a, err := b.store.get(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if a == nil {
		return logical.ErrorResponse("account %q no longer exists: its access token cannot be renewed", name), nil
	}
	now := b.now()
	left := end.Sub(now)
	if left <= 0 {
		return logical.ErrorResponse("this lease's access token is at the end of its lease life (%s, half of min_ttl before Ermeo stops accepting it): read %screds/%s again for the next token",
			formatTime(end), req.MountPoint, name), nil
	}
	ttl := time.Duration(step) * time.Second
	resp := &logical.Response{Secret: req.Secret}
	switch {
	case a.Generation != generation:
		// The token was replaced (an operator's rotate, or a refresh): one
		// second, so that Vault's renewer lets go at once and the next read
		// gets the current token; a refused renewal would be retried
		// (hashicorp/vault#28611).
		ttl = min(time.Second, left)
		resp.AddWarning(fmt.Sprintf("the access token of this lease was replaced (generation %d, now %d): renewed for one second only; read %screds/%s for the current one",
			generation, a.Generation, req.MountPoint, name))
	case req.Secret.Increment > 0:
		// vault lease renew -increment: as asked, up to the end.
		ttl = min(req.Secret.Increment, left)
		if req.Secret.Increment > left {
			resp.AddWarning(fmt.Sprintf("renewed only up to %s, the end of this access token's lease life (half of min_ttl before Ermeo stops accepting it), and never past it: read %screds/%s again then for the next token",
				formatTime(end), req.MountPoint, name))
		}
	case ttl > left:
		// The last renewal: short enough (at most 40% of the step) that
		// Vault's renewer lets go at once rather than renew again into
		// the end, and the next read refreshes.
		ttl = min(left, max((ttl*2/5).Truncate(time.Second), time.Second))
		resp.AddWarning(fmt.Sprintf("renewed only up to %s at most, the end of this access token's lease life (half of min_ttl before Ermeo stops accepting it), and never past it: read %screds/%s again for the next token",
			formatTime(end), req.MountPoint, name))
	}
	resp.Secret.TTL = ttl
	resp.Secret.Renewable = true
	// Vault caps a renewal (and an -increment) at the issue time plus MaxTTL,
	// on its clock, a little later than ours: a second more, so that it does
	// not cut the step short, but never past the end.
	resp.Secret.MaxTTL = now.Add(min(ttl+time.Second, left)).Sub(req.Secret.IssueTime)
	return resp, nil
}

// internalUint reads a whole number from a lease's internal data: as stored,
// or as a JSON number read back from Vault's storage.
func internalUint(v any) (uint64, bool) {
	n, err := strconv.ParseUint(fmt.Sprint(v), 10, 64)
	return n, err == nil
}

// leaseTTL is a token's lease (or ttl): until it would be refreshed, min_ttl
// before it expires, so that Vault Agent comes back in time; with less than
// min_ttl left (short-lived, or served while Ermeo is unreachable), half of it.
func leaseTTL(remaining, minTTL time.Duration) time.Duration {
	ttl := remaining - minTTL
	if ttl < time.Second {
		ttl = remaining / 2
	}
	return max(ttl, time.Second).Truncate(time.Second)
}

// accessToken returns the account with an access token that has at least the
// account's min_ttl of life left, refreshing its chain first if it must
// (serveStale if that fails). A reader that finds such a token never takes the lock.
func (b *backend) accessToken(ctx context.Context, s logical.Storage, mount, name string) (*accountEntry, *configEntry, []string, error) {
	cfg, err := b.getConfig(ctx, s)
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
		return b.serveStale(a, cfg, requestError(http.StatusBadRequest,
			fmt.Sprintf("config: not written, so the token cannot be refreshed: run vault write %sconfig client_id=... client_secret=-", mount)))
	}
	next, err := b.rotateLocked(ctx, accountOp{storage: s, cfg: cfg, mount: mount, name: name}, a)
	if err != nil {
		return b.serveStale(cmp.Or(next, a), cfg, err)
	}
	return next, cfg, nil, nil
}

// youngTokenWarning is the warning, naming the setting, to serve a token
// younger than half its lifetime with, or "": a read never refreshes such a
// token (only an operator's rotate does), even if min_ttl asks for more.
func (b *backend) youngTokenWarning(a *accountEntry, cfg *configEntry) string {
	lifetime, left := a.AccessTokenLifetime, a.AccessTokenExpiresAt.Sub(b.now())
	if lifetime <= 0 || a.AccessToken == "" || left <= lifetime/2 {
		return ""
	}
	setting, whose := "min_ttl", "the account's"
	if a.MinTTL == 0 {
		setting, whose = "default_min_ttl", "config's"
	}
	return fmt.Sprintf("not refreshing: this access token has %s left of its %s, but %s %s (%s) asks for more; a read refreshes only tokens past half their life: set %s below %s",
		humanDuration(left.Truncate(time.Second)), humanDuration(lifetime), whose, setting, humanDuration(effectiveMinTTL(a, cfg)), setting, humanDuration(lifetime/2))
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
		needsReauth(mount, name, a.LastError))}
}

// hasLife reports whether a's access token has at least min of life left.
func (b *backend) hasLife(a *accountEntry, min time.Duration) bool {
	return a.AccessToken != "" && a.AccessTokenExpiresAt.Sub(b.now()) >= min
}

const pathCredsHelpSyn = `Get an access token of the account, with at least min_ttl of life left.`

const pathCredsHelpDesc = `
Returns access_token, token_type (Bearer), expires_at and expires_in. Send the
token to Ermeo as the header "Authorization: Bearer <access_token>".

A token with at least the account's min_ttl of life left is returned without
calling Ermeo; otherwise the account's chain is rotated first, under its lock
(many readers at once cause one refresh). If the refresh fails, a token still
valid is served with a warning; if the chain is gone, the error says which
command restarts it.

The lease is renewable by half of min_ttl up to half of min_ttl before the
token expires, never past it, so that Vault Agent and Vault Proxy read again
when the next read refreshes (docs/leases.md in the plugin's repository has
the schedule). A read by the same Vault token of the same access token
within 2 s of its renewable lease gets a lease that is not renewable, which
Vault Proxy passes through rather than caching a second answer. Revoking the
lease does nothing at Ermeo, which has no revocation. An
account written with lease=false answers without a lease, with a ttl field
that says when to read again, as Vault's static credentials do.

Example:
  vault read ermeo/creds/app
  vault read -field=access_token ermeo/creds/app
`
