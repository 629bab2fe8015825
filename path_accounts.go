package ermeosecrets

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
)

// The name pattern is broad on purpose: the handlers check names themselves,
// so that a bad name gets a 400 that says what is allowed, not a 404.
const accountNamePattern = `(?P<name>.+)`

var accountNameField = &framework.FieldSchema{
	Type:        framework.TypeString,
	Description: "Name of the account: letters, digits, '-' and '_'.",
	Required:    true,
}

func pathAccounts(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "accounts/?$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "accounts",
				Navigation:      true,
				ItemType:        "Account",
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback: b.pathAccountsList,
					Summary:  "List the accounts.",
					Responses: map[int][]framework.Response{http.StatusOK: {{
						Description: "OK",
						Fields:      map[string]*framework.FieldSchema{"keys": {Type: framework.TypeStringSlice, Description: "Account names."}},
					}}},
				},
			},
			HelpSynopsis:    pathAccountsListHelpSyn,
			HelpDescription: pathAccountsListHelpDesc,
		},
		{
			Pattern: "accounts/" + accountNamePattern + "/rotate$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationVerb:   "rotate",
				OperationSuffix: "account",
			},
			Fields: map[string]*framework.FieldSchema{"name": accountNameField},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: forwardedWrite(withAccountName(b.pathAccountRotate), "Rotate the account's refresh chain now.",
					map[int][]framework.Response{http.StatusOK: {{Description: "OK", Fields: accountResponseFields}}}),
			},
			HelpSynopsis:    pathAccountRotateHelpSyn,
			HelpDescription: pathAccountRotateHelpDesc,
		},
		{
			Pattern: "accounts/" + accountNamePattern,
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "account",
				Action:          "Create",
				ItemType:        "Account",
			},
			Fields: map[string]*framework.FieldSchema{
				"name": accountNameField,
				"username": {
					Type:        framework.TypeString,
					Description: "The Ermeo username (e-mail) of the account. Required when the account is created.",
				},
				"password": {
					Type:         framework.TypeString,
					Description:  "The Ermeo password, used once for a password grant that starts a new refresh chain, then forgotten unless store_password=true. Write-only.",
					DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
				},
				"store_password": {
					Type:        framework.TypeBool,
					Description: "Keep the password (seal-wrapped) so that a lost chain is restarted without an operator. Ermeo calls keeping passwords a bad practice; off by default.",
					Default:     false,
				},
				"refresh_token": {
					Type:         framework.TypeString,
					Description:  "Adopt an existing refresh chain instead of giving a password: the token is spent at once for a new pair, which verifies it. Write-only.",
					DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
				},
				"min_ttl": {
					Type:        framework.TypeDurationSecond,
					Description: "The least life an access token handed out by creds/<name> has left; a token with less is refreshed first. Defaults to config's default_min_ttl.",
				},
				"rotation_period": {
					Type:        framework.TypeDurationSecond,
					Description: "Rotate an idle chain once its refresh token is this old (at most 13 days: refresh tokens live 2 weeks). Defaults to config's default_rotation_period.",
				},
				"lease": {
					Type:        framework.TypeBool,
					Description: "Whether creds/<name> returns a lease. With lease=false it returns no lease, and a ttl field that tells Vault Agent when to read again, as Vault's static credentials do; reads are then cheaper for Vault. Defaults to config's default_lease (true).",
				},
			},
			ExistenceCheck: b.pathAccountExists,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback:  withAccountName(b.pathAccountRead),
					Summary:   "Read the account's status (never a secret).",
					Responses: map[int][]framework.Response{http.StatusOK: {{Description: "OK", Fields: accountResponseFields}}},
				},
				logical.CreateOperation: forwardedWrite(withAccountName(b.pathAccountWrite), "Create the account: start its refresh chain with a password grant (or adopt a refresh token).",
					map[int][]framework.Response{http.StatusOK: {{Description: "OK", Fields: accountResponseFields}}}),
				logical.UpdateOperation: forwardedWrite(withAccountName(b.pathAccountWrite), "Change the account's settings, or restart its chain with a new password.",
					map[int][]framework.Response{http.StatusOK: {{Description: "OK", Fields: accountResponseFields}}}),
				logical.DeleteOperation: forwardedWrite(withAccountName(b.pathAccountDelete), "Forget the account, its refresh chain and any kept password.",
					map[int][]framework.Response{http.StatusNoContent: {{Description: "No Content"}}}),
			},
			HelpSynopsis:    pathAccountHelpSyn,
			HelpDescription: pathAccountHelpDesc,
		},
	}
}

var accountResponseFields = map[string]*framework.FieldSchema{
	"name":                     {Type: framework.TypeString, Required: true, Description: "Name of the account."},
	"username":                 {Type: framework.TypeString, Required: true, Description: "The Ermeo username (e-mail) of the account."},
	"state":                    {Type: framework.TypeString, Required: true, Description: "active, or needs_reauth when the chain is gone and a password must be written."},
	"password_stored":          {Type: framework.TypeBool, Required: true, Description: "Whether a password is kept (seal-wrapped) to restart a lost chain (its value is never returned)."},
	"refresh_token_set":        {Type: framework.TypeBool, Required: true, Description: "Whether the account holds a refresh token (its value is never returned)."},
	"generation":               {Type: framework.TypeInt64, Required: true, Description: "How many grants the account's chains have had."},
	"access_token_expires_at":  {Type: framework.TypeString, Required: true, Description: "When the current access token expires (RFC 3339), or empty if there is none."},
	"refresh_token_issued_at":  {Type: framework.TypeString, Required: true, Description: "When the current refresh token was issued (RFC 3339)."},
	"refresh_token_expires_at": {Type: framework.TypeString, Required: true, Description: "When the current refresh token expires, 2 weeks after its issue (RFC 3339), or empty if there is none."},
	"last_rotation":            {Type: framework.TypeString, Required: true, Description: "When the chain last got a new pair (RFC 3339)."},
	"last_error":               {Type: framework.TypeString, Required: true, Description: "Why the last refresh or grant failed, or empty since the last success."},
	"rotation_in_flight":       {Type: framework.TypeBool, Required: true, Description: "A refresh was sent whose answer never arrived: the stored refresh token may be spent. The next refresh finds out."},
	"chain_lost_at":            {Type: framework.TypeString, Required: true, Description: "When the account's chain was last found gone (RFC 3339), or empty if never."},
	"chain_lost_how":           {Type: framework.TypeString, Required: true, Description: "How it was lost: lost_in_flight (an answer from Ermeo never arrived) or refused (the stored refresh token was spent or revoked elsewhere, as after a restore of Vault's storage from an older snapshot); empty if never."},
	"min_ttl":                  {Type: framework.TypeDurationSecond, Required: true, Description: "The min_ttl in effect (the account's own, or config's default_min_ttl), in seconds."},
	"rotation_period":          {Type: framework.TypeDurationSecond, Required: true, Description: "The rotation_period in effect (the account's own, or config's default_rotation_period), in seconds."},
	"lease":                    {Type: framework.TypeBool, Required: true, Description: "Whether creds/<name> returns a lease, or only a ttl field."},
	"ermeo_user_id":            {Type: framework.TypeString, Required: true, Description: "The Ermeo user id that GET /api/v1/profile returned for the chain's token, when the account was written."},
	"ermeo_email":              {Type: framework.TypeString, Required: true, Description: "The e-mail that GET /api/v1/profile returned, if any."},
	"checked_at":               {Type: framework.TypeString, Required: true, Description: "When the profile check last passed."},
}

func (b *backend) pathAccountsList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := listAccounts(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathAccountExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	name := d.Get("name").(string)
	if validateAccountName(name) != nil {
		return false, nil
	}
	a, err := b.store.get(ctx, req.Storage, name)
	return a != nil, err
}

func (b *backend) pathAccountRead(ctx context.Context, req *logical.Request, d *framework.FieldData, name string) (*logical.Response, error) {
	a, err := b.store.get(ctx, req.Storage, name)
	if err != nil || a == nil {
		return nil, err
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if msg := b.store.failure(name); msg != "" {
		a.LastError = msg
	}
	return &logical.Response{Data: accountView(name, a, cfg)}, nil
}

// accountRequest is what a write to accounts/<name> asks for.
type accountRequest struct {
	username, password, refreshToken string
	hasUsername, hasPassword         bool
	hasRefreshToken                  bool
	storePassword, hasStorePassword  bool
	minTTL, rotationPeriod           time.Duration
	hasMinTTL, hasRotationPeriod     bool
	lease, hasLease                  bool
	// trimmed are the credential fields whose trailing line ending was removed.
	trimmed []string
}

// parseAccountRequest reads a write's fields; the first that fails is the 400.
func parseAccountRequest(d *framework.FieldData) (*accountRequest, error) {
	r, f := &accountRequest{}, &fieldReader{d: d, err: unknownFields(d)}
	r.hasUsername = f.str("username", &r.username)
	r.hasPassword = f.str("password", &r.password)
	r.hasRefreshToken = f.str("refresh_token", &r.refreshToken)
	r.hasMinTTL = f.duration("min_ttl", &r.minTTL)
	r.hasRotationPeriod = f.duration("rotation_period", &r.rotationPeriod)
	if v, ok := d.GetOk("store_password"); ok {
		r.storePassword, r.hasStorePassword = v.(bool), true
	}
	if v, ok := d.GetOk("lease"); ok {
		r.lease, r.hasLease = v.(bool), true
	}
	switch {
	case f.err != nil:
		return nil, f.err
	case r.hasPassword && r.hasRefreshToken:
		return nil, fieldError("password, refresh_token", "give one or the other, not both")
	}
	r.trimmed = f.trimmed
	return r, nil
}

// validate checks the request against the account as stored (nil when it is
// new), and returns the 400's message, or "".
func (r *accountRequest) validate(old *accountEntry, cfg *configEntry) string {
	switch {
	case old == nil && !r.hasUsername:
		return "username: required to create an account"
	case old == nil && !r.hasPassword && !r.hasRefreshToken:
		return "password: required to create an account (or refresh_token, to adopt an existing chain)"
	case old != nil && r.hasUsername && r.username != old.Username && !r.hasPassword && !r.hasRefreshToken:
		return "username: changing it needs the new account's password too"
	case r.hasStorePassword && r.storePassword && !r.hasPassword && (old == nil || !old.PasswordKept):
		return "store_password: true needs the password in the same write"
	}
	if old != nil && !r.hasPassword && !r.hasRefreshToken {
		// The chain stays: its token lifetime is known.
		return minTTLError(r.settings(old), cfg, old.AccessTokenLifetime)
	}
	return ""
}

// settings returns a copy of the account (a new one when a is nil) with the
// request's settings applied; its chain is untouched.
func (r *accountRequest) settings(a *accountEntry) *accountEntry {
	next := &accountEntry{Version: accountVersion, State: stateActive}
	if a != nil {
		c := *a
		next = &c
	}
	if r.hasUsername {
		next.Username = r.username
	}
	if r.hasMinTTL {
		next.MinTTL = r.minTTL
	}
	if r.hasRotationPeriod {
		next.RotationPeriod = r.rotationPeriod
	}
	if r.hasLease {
		lease := r.lease
		next.Lease = &lease
	}
	return next
}

// keepPassword says whether the account keeps a password after the write.
func (r *accountRequest) keepPassword(old *accountEntry) bool {
	switch {
	case r.hasStorePassword:
		return r.storePassword
	case r.hasPassword || r.hasRefreshToken:
		// A new chain from a new secret: keep a password only if asked again.
		return false
	default:
		return old != nil && old.PasswordKept
	}
}

func (b *backend) pathAccountWrite(ctx context.Context, req *logical.Request, d *framework.FieldData, name string) (*logical.Response, error) {
	// Read the request (the name is checked by withAccountName).
	r, err := parseAccountRequest(d)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return logical.ErrorResponse("config: not written yet: run vault write %sconfig client_id=... client_secret=- first", req.MountPoint), nil
	}
	if (r.hasPassword || r.hasRefreshToken) && !b.WriteSafeReplicationState() {
		return nil, logical.ErrReadOnly
	}

	lock := b.store.lock(name)
	lock.Lock()
	defer lock.Unlock()
	old, err := b.store.getLocked(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}

	// Validate.
	if msg := r.validate(old, cfg); msg != "" {
		return logical.ErrorResponse(msg), nil
	}

	// Act: nothing stored changes until a new chain is in hand.
	ctx = context.WithoutCancel(ctx)
	rot := accountOp{storage: req.Storage, cfg: cfg, mount: req.MountPoint, name: name, force: true}
	a := r.settings(old)
	keep := r.keepPassword(old)
	var next *accountEntry
	switch {
	case r.hasPassword:
		next, err = b.startChainLocked(ctx, rot, a, r.password, keep)
	case r.hasRefreshToken:
		a.PasswordKept = keep
		next, err = b.adoptLocked(ctx, rot, a, r.refreshToken)
	default:
		a.PasswordKept = keep
		err = b.store.put(ctx, req.Storage, name, a, failWrite)
		next = a
	}
	if err != nil {
		return errorResponse(err)
	}
	if old != nil && old.PasswordKept && !keep {
		if err := deletePassword(ctx, req.Storage, name); err != nil {
			return nil, err
		}
	}
	resp := &logical.Response{}
	if r.hasRefreshToken {
		// The adopted chain is stored whatever its lifetime: it is the only
		// link there is. A min_ttl it makes too long is said, and the read
		// guard (see accessToken) keeps it from refreshing on every read.
		if msg := minTTLError(next, cfg, next.AccessTokenLifetime); msg != "" {
			resp.AddWarning("the chain is adopted, but " + msg)
		}
	}
	if r.hasPassword || r.hasRefreshToken {
		resp.Warnings = append(resp.Warnings, b.checkAccountLocked(ctx, rot, next)...)
	}

	// Respond.
	if len(r.trimmed) > 0 {
		resp.AddWarning(trimmedWarning(r.trimmed))
	}
	resp.Data = accountView(name, next, cfg)
	return resp, nil
}

// checkAccountLocked checks a new chain with Ermeo's profile route and, when
// that passes, stores whose account it is; a failed check is a warning.
// Called with the account's lock held, after the chain is stored.
func (b *backend) checkAccountLocked(ctx context.Context, r accountOp, a *accountEntry) []string {
	if !r.cfg.VerifyAccounts {
		return nil
	}
	client, err := b.client(r.cfg)
	if err != nil {
		return []string{"the new refresh chain is stored, but its profile was not checked: " + err.Error()}
	}
	if warnings := b.checkAccount(ctx, r.cfg, client, a); len(warnings) > 0 {
		return warnings
	}
	if err := b.store.put(ctx, r.storage, r.name, a, keepUnsaved); err != nil {
		return []string{"the new refresh chain is stored, but not whose account it is: " + err.Error()}
	}
	return nil
}

// checkAccount calls Ermeo's GET /api/v1/profile with a new chain's access
// token, which proves the token works for the API, and records whose account
// it is. A failed check is a warning: the chain itself is good. Off with
// config's verify_accounts=false (air-gapped setups; see checkAccountLocked).
func (b *backend) checkAccount(ctx context.Context, cfg *configEntry, client *ermeo.Client, a *accountEntry) []string {
	pctx, cancel := upstreamContext(ctx, cfg)
	profile, err := client.Profile(pctx, a.AccessToken)
	cancel()
	if err != nil {
		return []string{"the new refresh chain is stored, but Ermeo's GET /api/v1/profile refused its access token: " + ermeo.Message(err) +
			" (check api_url; set verify_accounts=false in config to skip this check)"}
	}
	a.ErmeoUserID, a.ErmeoEmail = "", ""
	if id, ok := profile["id"]; ok && id != nil {
		a.ErmeoUserID = truncate(fmt.Sprint(id), 128)
	}
	if email, ok := profile["email"].(string); ok {
		a.ErmeoEmail = truncate(email, 256)
	}
	a.CheckedAt = b.now()
	return nil
}

func (b *backend) pathAccountDelete(ctx context.Context, req *logical.Request, d *framework.FieldData, name string) (*logical.Response, error) {
	lock := b.store.lock(name)
	lock.Lock()
	defer lock.Unlock()
	return nil, b.store.remove(ctx, req.Storage, name)
}

func (b *backend) pathAccountRotate(ctx context.Context, req *logical.Request, d *framework.FieldData, name string) (*logical.Response, error) {
	if err := unknownFields(d); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return logical.ErrorResponse("config: not written yet: run vault write %sconfig client_id=... client_secret=- first", req.MountPoint), nil
	}
	if !b.WriteSafeReplicationState() {
		return nil, logical.ErrReadOnly
	}

	lock := b.store.lock(name)
	lock.Lock()
	defer lock.Unlock()

	a, err := b.store.getLocked(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if a == nil {
		return errorResponse(&statusError{code: http.StatusNotFound, msg: fmt.Sprintf("account %q not found: create it with vault write %saccounts/%s username=... password=-", name, req.MountPoint, name)})
	}
	next, err := b.rotateLocked(ctx, accountOp{storage: req.Storage, cfg: cfg, mount: req.MountPoint, name: name, force: true}, a)
	if err != nil {
		return errorResponse(err)
	}
	return &logical.Response{Data: accountView(name, next, cfg)}, nil
}

const pathAccountsListHelpSyn = `List the Ermeo accounts of this engine.`

const pathAccountsListHelpDesc = `
Each account holds one Ermeo user's refresh chain. Read creds/<name> for its
access token, and accounts/<name> for its status.
`

const pathAccountHelpSyn = `Manage one Ermeo account: its username and its refresh chain.`

const pathAccountHelpDesc = `
Creating an account runs Ermeo's password grant once, with the username and
password given, and stores the refresh token it returns. The password is then
forgotten, unless store_password=true: a kept password lets the engine start a
new chain by itself when the old one is lost. Instead of a password you may
give a refresh_token to adopt a chain you already hold; it is spent at once.

Writing a password to an existing account starts a new chain (use this when
the account's state is needs_reauth). Writing only min_ttl or rotation_period
changes those settings.

A read shows the account's status and never a secret: state (active or
needs_reauth), whether a password is kept, the access token's expiry, the
refresh token's issue and expiry times, the chain's generation, the last
rotation and the last error.

Examples:
  vault write ermeo/accounts/app username=jane@example.com password=-
  vault read ermeo/accounts/app
`

const pathAccountRotateHelpSyn = `Rotate the account's refresh chain now.`

const pathAccountRotateHelpDesc = `
Spends the account's current refresh token for a new access token and refresh
token, under the account's lock, as a read of creds/<name> does when the access
token is too old. Use it to test the chain, or after an incident.

Example:
  vault write -f ermeo/accounts/app/rotate
`
