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
				logical.UpdateOperation: forwardedWrite(withAccountName(b.pathAccountRotate), "Rotate the account's refresh chain now.", accountResponses),
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
				"name":            accountNameField,
				"username":        {Type: framework.TypeString, Description: "The Ermeo username (e-mail). Required to create the account."},
				"password":        {Type: framework.TypeString, DisplayAttrs: &framework.DisplayAttributes{Sensitive: true}, Description: "The Ermeo password: used once, for a password grant that starts a new refresh chain, then forgotten unless store_password=true. Write-only."},
				"store_password":  {Type: framework.TypeBool, Default: false, Description: "Keep the password (seal-wrapped), so that a lost chain restarts without an operator. Ermeo calls keeping passwords a bad practice."},
				"refresh_token":   {Type: framework.TypeString, DisplayAttrs: &framework.DisplayAttributes{Sensitive: true}, Description: "Adopt a refresh chain you hold instead of giving a password: the token is spent at once for a new pair, which proves it works. Write-only."},
				"min_ttl":         {Type: framework.TypeDurationSecond, Description: "The least life a token handed out by creds/<name> has left; one with less is refreshed first. Defaults to config's default_min_ttl."},
				"rotation_period": {Type: framework.TypeDurationSecond, Description: "Rotate an idle chain once its refresh token is this old (at most 13 days: refresh tokens live 2 weeks). Defaults to config's default_rotation_period."},
				"lease":           {Type: framework.TypeBool, Description: "Whether creds/<name> returns a lease; with false, only a ttl field that tells Vault Agent when to read again, as Vault's static credentials do (cheaper for Vault). Defaults to config's default_lease."},
			},
			ExistenceCheck: b.pathAccountExists,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback:  withAccountName(b.pathAccountRead),
					Summary:   "Read the account's status (never a secret).",
					Responses: accountResponses,
				},
				logical.CreateOperation: forwardedWrite(withAccountName(b.pathAccountWrite),
					"Create the account: start its refresh chain with a password grant (or adopt a refresh token).", accountResponses),
				logical.UpdateOperation: forwardedWrite(withAccountName(b.pathAccountWrite),
					"Change the account's settings, or restart its chain with a new password.", accountResponses),
				logical.DeleteOperation: forwardedWrite(withAccountName(b.pathAccountDelete),
					"Forget the account, its refresh chain and any kept password.", noContentResponses),
			},
			HelpSynopsis:    pathAccountHelpSyn,
			HelpDescription: pathAccountHelpDesc,
		},
	}
}

// accountResponses are the answer of a read or write of an account: its status.
var accountResponses = map[int][]framework.Response{http.StatusOK: {{Description: "OK", Fields: accountResponseFields}}}

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

// accountRequest is what a write to accounts/<name> asks for; nil is a field not given.
type accountRequest struct {
	username, password, refreshToken *string
	minTTL, rotationPeriod           *time.Duration
	storePassword, lease             *bool
	trimmed                          []string // the credentials that lost a trailing line ending
}

// parseAccountRequest reads a write's fields; the first that fails is the 400.
func parseAccountRequest(d *framework.FieldData) (*accountRequest, error) {
	f := &fieldReader{d: d, err: unknownFields(d)}
	r := &accountRequest{
		username: f.str("username"), password: f.str("password"), refreshToken: f.str("refresh_token"),
		minTTL: f.duration("min_ttl"), rotationPeriod: f.duration("rotation_period"),
		storePassword: f.boolean("store_password"), lease: f.boolean("lease"),
	}
	switch {
	case f.err != nil:
		return nil, f.err
	case r.password != nil && r.refreshToken != nil:
		return nil, fieldError("password, refresh_token", "give one or the other, not both")
	}
	r.trimmed = f.trimmed
	return r, nil
}

// newChain says whether the write starts a new chain: it gives a password or a refresh token.
func (r *accountRequest) newChain() bool { return r.password != nil || r.refreshToken != nil }

// validate checks the request against the account as stored (nil when it is
// new), and returns the 400's message, or "".
func (r *accountRequest) validate(old *accountEntry, cfg *configEntry) string {
	switch {
	case old == nil && r.username == nil:
		return "username: required to create an account"
	case old == nil && !r.newChain():
		return "password: required to create an account (or refresh_token, to adopt an existing chain)"
	case old != nil && r.username != nil && *r.username != old.Username && !r.newChain():
		return "username: changing it needs the new account's password too"
	case r.storePassword != nil && *r.storePassword && r.password == nil && (old == nil || !old.PasswordKept):
		return "store_password: true needs the password in the same write"
	case old != nil && !r.newChain():
		// The chain stays: its token lifetime is known.
		return minTTLError(r.settings(old), cfg, old.AccessTokenLifetime)
	}
	return ""
}

// settings returns a copy of the account (a new one when a is nil) with the
// request's settings applied; its chain is untouched. A new chain keeps a
// password only when store_password says so again.
func (r *accountRequest) settings(a *accountEntry) *accountEntry {
	next := &accountEntry{Version: accountVersion, State: stateActive}
	if a != nil {
		next = a.clone()
	}
	setIf(&next.Username, r.username)
	setIf(&next.MinTTL, r.minTTL)
	setIf(&next.RotationPeriod, r.rotationPeriod)
	if r.lease != nil {
		next.Lease = r.lease
	}
	if r.newChain() {
		next.PasswordKept = false
	}
	setIf(&next.PasswordKept, r.storePassword)
	return next
}

func (b *backend) pathAccountWrite(ctx context.Context, req *logical.Request, d *framework.FieldData, name string) (*logical.Response, error) {
	// Read the request (withAccountName checked the name), config and the account.
	r, err := parseAccountRequest(d)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return noConfigResponse(req.MountPoint), nil
	}
	if r.newChain() && !b.WriteSafeReplicationState() {
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
	op := accountOp{storage: req.Storage, cfg: cfg, mount: req.MountPoint, name: name, force: true}
	a := r.settings(old)
	next := a
	switch {
	case r.password != nil:
		next, err = b.startChainLocked(ctx, op, a, *r.password, a.PasswordKept)
	case r.refreshToken != nil:
		next, err = b.adoptLocked(ctx, op, a, *r.refreshToken)
	default:
		err = b.store.put(ctx, req.Storage, name, a, failWrite)
	}
	if err != nil {
		return errorResponse(err)
	}
	if old != nil && old.PasswordKept && !next.PasswordKept {
		if err := deletePassword(ctx, req.Storage, name); err != nil {
			return nil, err
		}
	}
	var checkWarnings []string
	if r.newChain() {
		checkWarnings = b.checkAccountLocked(ctx, op, next)
	}

	// Respond.
	resp := &logical.Response{Data: accountView(name, next, cfg)}
	if r.refreshToken != nil {
		// An adopted chain is stored whatever its lifetime: it is the only link
		// there is. The read guard (see accessToken) keeps a min_ttl it makes
		// too long from refreshing on every read.
		if msg := minTTLError(next, cfg, next.AccessTokenLifetime); msg != "" {
			resp.AddWarning("the chain is adopted, but " + msg)
		}
	}
	resp.Warnings = append(resp.Warnings, checkWarnings...)
	if len(r.trimmed) > 0 {
		resp.AddWarning(trimmedWarning(r.trimmed))
	}
	return resp, nil
}

// checkAccountLocked calls Ermeo's GET /api/v1/profile with a new chain's access
// token, which proves the token works for the API, and stores whose account it is.
// A failed check is a warning: the chain itself is good, and stored. Off with
// config's verify_accounts=false (air-gapped setups). Called with the account's lock held.
func (b *backend) checkAccountLocked(ctx context.Context, op accountOp, a *accountEntry) []string {
	if !op.cfg.VerifyAccounts {
		return nil
	}
	op, err := b.withClient(op)
	if err != nil {
		return []string{"the new refresh chain is stored, but its profile was not checked: " + err.Error()}
	}
	pctx, cancel := upstreamContext(ctx, op.cfg)
	profile, err := op.client.Profile(pctx, a.AccessToken)
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
	if err := b.store.put(ctx, op.storage, op.name, a, keepUnsaved); err != nil {
		return []string{"the new refresh chain is stored, but not whose account it is: " + err.Error()}
	}
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
		return noConfigResponse(req.MountPoint), nil
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
		return errorResponse(requestError(http.StatusNotFound, fmt.Sprintf("account %q not found: create it with vault write %saccounts/%s username=... password=-", name, req.MountPoint, name)))
	}
	next, err := b.rotateLocked(ctx, accountOp{storage: req.Storage, cfg: cfg, mount: req.MountPoint, name: name, force: true}, a)
	if err != nil {
		return errorResponse(err)
	}
	return &logical.Response{Data: accountView(name, next, cfg)}, nil
}

const pathAccountsListHelpSyn = `List the Ermeo accounts of this engine.`

const pathAccountsListHelpDesc = `
Each account holds one Ermeo user's refresh chain: read creds/<name> for its
access token, and accounts/<name> for its status.
`

const pathAccountHelpSyn = `Manage one Ermeo account: its username and its refresh chain.`

const pathAccountHelpDesc = `
Creating an account runs Ermeo's password grant once and stores the refresh
token it returns; the password is then forgotten, unless store_password=true
keeps it to restart a lost chain. A refresh_token instead adopts a chain you
hold. Writing a password to an existing account starts a new chain (as
needs_reauth asks); other fields change only themselves. A read shows the
account's status, never a secret. See docs/paths.md in the plugin's repository.

Example:
  vault write ermeo/accounts/app username=jane@example.com password=-
`

const pathAccountRotateHelpSyn = `Rotate the account's refresh chain now.`

const pathAccountRotateHelpDesc = `
Spends the refresh token for a new pair, under the account's lock, as a read of
creds/<name> does when the access token is too old: to test the chain, or after
an incident.

Example:
  vault write -f ermeo/accounts/app/rotate
`
