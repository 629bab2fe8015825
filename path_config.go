package ermeosecrets

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
)

func pathConfig(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern: "config$",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
			OperationSuffix: "configuration",
		},
		Fields: map[string]*framework.FieldSchema{
			"api_url":                 {Type: framework.TypeString, Default: ermeo.DefaultAPIURL, Description: "Base URL of the Ermeo API: https, or http for a loopback test server."},
			"client_id":               {Type: framework.TypeString, Description: "OAuth client id of the Ermeo integration (<number>_<random>). Required when config is first written."},
			"client_secret":           {Type: framework.TypeString, DisplayAttrs: &framework.DisplayAttributes{Sensitive: true}, Description: "OAuth client secret of the Ermeo integration. Write-only. Required when config is first written."},
			"body_format":             {Type: framework.TypeString, Default: string(ermeo.BodyAuto), AllowedValues: []any{string(ermeo.BodyAuto), string(ermeo.BodyJSON), string(ermeo.BodyForm)}, Description: "How token requests are encoded: json (as Ermeo documents), form (as the stock OAuth server library reads), or auto: JSON, then form once if the server answers as a form-only server does (which spends nothing), remembering what worked."},
			"ca_certificate":          {Type: framework.TypeString, Description: "PEM bundle of the CAs to trust for api_url instead of the system's. TLS is always verified."},
			"verify_connection":       {Type: framework.TypeBool, Default: true, Description: "Check the client credentials with Ermeo when config is written, by a refresh grant of a refresh token that cannot exist (invalid_client means bad credentials; nothing is spent). Turn off for air-gapped setups."},
			"verify_accounts":         {Type: framework.TypeBool, Default: true, Description: "Check each new account's chain with Ermeo's GET /api/v1/profile and record whose account it is. Turn off where only the token endpoint is reachable."},
			"request_timeout":         {Type: framework.TypeDurationSecond, Default: int(defaultRequestTimeout.Seconds()), Description: "How long one call to Ermeo may take."},
			"default_min_ttl":         {Type: framework.TypeDurationSecond, Default: int(defaultMinTTL.Seconds()), Description: "Default for accounts' min_ttl: the least life a token handed out has left."},
			"default_lease":           {Type: framework.TypeBool, Default: true, Description: "Default for accounts' lease: whether creds/<name> answers with a lease, or, with false, with a ttl field only."},
			"default_rotation_period": {Type: framework.TypeDurationSecond, Default: int(defaultRotationPeriod.Seconds()), Description: "Default for accounts' rotation_period: an idle chain is rotated once its refresh token is this old (at most 13 days)."},
		},
		ExistenceCheck: b.pathConfigExists,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:  b.pathConfigRead,
				Summary:   "Read the Ermeo connection settings (never the client secret).",
				Responses: map[int][]framework.Response{http.StatusOK: {{Description: "OK", Fields: configResponseFields}}},
			},
			logical.CreateOperation: forwardedWrite(b.pathConfigWrite, "Configure the Ermeo connection.", noContentResponses),
			logical.UpdateOperation: forwardedWrite(b.pathConfigWrite, "Change the Ermeo connection; fields left out keep their value.", noContentResponses),
			logical.DeleteOperation: forwardedWrite(b.pathConfigDelete,
				"Delete the Ermeo connection settings. Accounts stay, but cannot be refreshed until config is written again.", noContentResponses),
		},
		HelpSynopsis:    pathConfigHelpSyn,
		HelpDescription: pathConfigHelpDesc,
	}}
}

// noContentResponses are the answer of a write with no body.
var noContentResponses = map[int][]framework.Response{http.StatusNoContent: {{Description: "No Content"}}}

// forwardedWrite is an operation that writes: it goes to the node that may
// write, before anything is sent to Ermeo (as the openldap engine declares).
func forwardedWrite(cb framework.OperationFunc, summary string, responses map[int][]framework.Response) *framework.PathOperation {
	return &framework.PathOperation{
		Callback:                    cb,
		ForwardPerformanceStandby:   true,
		ForwardPerformanceSecondary: true,
		Summary:                     summary,
		Responses:                   responses,
	}
}

var configResponseFields = map[string]*framework.FieldSchema{
	"api_url":                 {Type: framework.TypeString, Required: true, Description: "Base URL of the Ermeo API."},
	"client_id":               {Type: framework.TypeString, Required: true, Description: "OAuth client id of the Ermeo integration."},
	"client_secret_set":       {Type: framework.TypeBool, Required: true, Description: "Whether a client secret is stored (its value is never returned)."},
	"body_format":             {Type: framework.TypeString, Required: true, Description: "How token requests are encoded: auto, json or form."},
	"body_format_detected":    {Type: framework.TypeString, Required: true, Description: "With body_format auto: the format Ermeo was found to read (json or form), or empty before its first answer."},
	"verify_accounts":         {Type: framework.TypeBool, Required: true, Description: "Whether each new account's chain is checked with Ermeo's GET /api/v1/profile."},
	"verify_connection":       {Type: framework.TypeBool, Required: true, Description: "Whether the client credentials are checked with Ermeo when config is written."},
	"credentials_checked_at":  {Type: framework.TypeString, Required: true, Description: "When Ermeo last accepted the client credentials (RFC 3339), or empty if they were not checked."},
	"ca_certificate":          {Type: framework.TypeString, Required: true, Description: "The CA bundle trusted for api_url (public certificates), or empty for the system's."},
	"request_timeout":         {Type: framework.TypeDurationSecond, Required: true, Description: "How long one call to Ermeo may take, in seconds."},
	"default_min_ttl":         {Type: framework.TypeDurationSecond, Required: true, Description: "Default for accounts' min_ttl, in seconds."},
	"default_rotation_period": {Type: framework.TypeDurationSecond, Required: true, Description: "Default for accounts' rotation_period, in seconds."},
	"default_lease":           {Type: framework.TypeBool, Required: true, Description: "Default for accounts' lease."},
}

func (b *backend) pathConfigExists(ctx context.Context, req *logical.Request, _ *framework.FieldData) (bool, error) {
	c, err := b.getConfig(ctx, req.Storage)
	return c != nil, err
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	c, err := b.getConfig(ctx, req.Storage)
	if err != nil || c == nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]any{
		"api_url":                 c.APIURL,
		"client_id":               c.ClientID,
		"client_secret_set":       c.ClientSecret != "",
		"body_format":             c.BodyFormat,
		"body_format_detected":    c.BodyFormatDetected,
		"ca_certificate":          c.CACertificate,
		"verify_accounts":         c.VerifyAccounts,
		"verify_connection":       c.VerifyConnection,
		"credentials_checked_at":  formatTime(c.CredentialsCheckedAt),
		"request_timeout":         int64(c.RequestTimeout.Seconds()),
		"default_min_ttl":         int64(c.DefaultMinTTL.Seconds()),
		"default_rotation_period": int64(c.DefaultRotationPeriod.Seconds()),
		"default_lease":           c.DefaultLease,
	}}, nil
}

func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	// One config write at a time: each is a read-modify-write.
	b.configMu.Lock()
	defer b.configMu.Unlock()

	// Read: the stored config, and the request's fields on a copy of it.
	old, err := loadConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	c := newConfig()
	if old != nil {
		*c = *old
	}
	trimmed, err := parseConfigFields(d, c)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}

	// Validate.
	switch {
	case c.ClientID == "":
		return logical.ErrorResponse("client_id: required: the OAuth client id of your Ermeo integration"), nil
	case c.ClientSecret == "":
		return logical.ErrorResponse("client_secret: required: the OAuth client secret of your Ermeo integration"), nil
	}
	// Every account is read only when the default they may use changes.
	if old == nil || c.DefaultMinTTL != old.DefaultMinTTL {
		if msg, err := b.defaultMinTTLError(ctx, req.Storage, c); err != nil {
			return nil, err
		} else if msg != "" {
			return logical.ErrorResponse(msg), nil
		}
	}

	// Act: prove the credentials before they replace the stored ones.
	if old == nil || connectionChanged(old, c) {
		c.CredentialsCheckedAt, c.BodyFormatDetected = time.Time{}, ""
		c.Revision++
	}
	if c.VerifyConnection && c.CredentialsCheckedAt.IsZero() {
		detected, err := b.checkCredentials(ctx, c)
		if err != nil {
			return errorResponse(err)
		}
		c.CredentialsCheckedAt = b.now()
		if c.BodyFormat == string(ermeo.BodyAuto) {
			c.BodyFormatDetected = string(detected)
		}
	}
	if err := saveConfig(ctx, req.Storage, c); err != nil {
		return nil, err
	}
	b.setConfig(c)
	b.store.reschedule()

	// Respond.
	resp := &logical.Response{}
	if len(trimmed) > 0 {
		resp.AddWarning(trimmedWarning(trimmed))
	}
	if !strings.Contains(c.ClientID, "_") {
		resp.AddWarning("client_id has no '_': Ermeo's client ids have the form <number>_<random>, and the server rejects others as invalid_client")
	}
	if len(resp.Warnings) == 0 {
		return nil, nil
	}
	return resp, nil
}

// defaultMinTTLError is the 400's message for a default_min_ttl at or above
// the token lifetime of an account that uses it; "" when there is none.
func (b *backend) defaultMinTTLError(ctx context.Context, s logical.Storage, c *configEntry) (string, error) {
	names, err := listAccounts(ctx, s)
	if err != nil {
		return "", err
	}
	for _, name := range names {
		a, err := b.store.get(ctx, s, name)
		if err != nil {
			return "", err
		}
		if a == nil || a.MinTTL > 0 {
			continue
		}
		if msg := minTTLError(a, c, a.AccessTokenLifetime); msg != "" {
			return fmt.Sprintf("default_min_ttl: account %q uses it, and %s", name, strings.TrimPrefix(msg, "default_min_ttl (in config): ")), nil
		}
	}
	return "", nil
}

// parseConfigFields copies the fields present in the request onto c, and
// returns the credential fields whose trailing line ending it removed.
func parseConfigFields(d *framework.FieldData, c *configEntry) ([]string, error) {
	f := &fieldReader{d: d, err: unknownFields(d)}
	if u := f.str("api_url"); u != nil {
		c.APIURL = strings.TrimRight(*u, "/")
	}
	setIf(&c.ClientID, f.str("client_id"))
	setIf(&c.ClientSecret, f.str("client_secret"))
	setIf(&c.BodyFormat, f.str("body_format"))
	setIf(&c.CACertificate, f.str("ca_certificate"))
	setIf(&c.RequestTimeout, f.duration("request_timeout"))
	setIf(&c.DefaultMinTTL, f.duration("default_min_ttl"))
	setIf(&c.DefaultRotationPeriod, f.duration("default_rotation_period"))
	setIf(&c.VerifyAccounts, f.boolean("verify_accounts"))
	setIf(&c.VerifyConnection, f.boolean("verify_connection"))
	setIf(&c.DefaultLease, f.boolean("default_lease"))
	return f.trimmed, f.err
}

// checkAPIURL: ParseAPIURL's checks, no space, https or (test servers) http on loopback.
func checkAPIURL(raw string) error {
	u, err := ermeo.ParseAPIURL(raw)
	switch {
	case strings.Contains(raw, " "):
		return fieldError("api_url", "contains a space at byte %d: a URL has none (write %%20 if the path really has one)", strings.Index(raw, " "))
	case err != nil:
		return fieldError("api_url", "%v: use https://host", err)
	case u.Scheme != "https" && u.Hostname() != "localhost" && !net.ParseIP(u.Hostname()).IsLoopback():
		return fieldError("api_url", "http is only allowed for loopback test servers (127.0.0.1, ::1, localhost): use https://%s", u.Host)
	}
	return nil
}

// checkCABundle: ca_certificate is PEM (certPool), or empty for the system's CAs.
func checkCABundle(s string) error {
	if s == "" {
		return nil
	}
	_, err := certPool(s)
	return err
}

// noConfigResponse is the 400 of a write that needs config before config is written.
func noConfigResponse(mount string) *logical.Response {
	return logical.ErrorResponse("config: not written yet: run vault write %sconfig client_id=... client_secret=- first", mount)
}

func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	b.configMu.Lock()
	defer b.configMu.Unlock()
	names, err := listAccounts(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if err := deleteConfig(ctx, req.Storage); err != nil {
		return nil, err
	}
	b.setConfig(nil)
	if len(names) == 0 {
		return nil, nil
	}
	resp := &logical.Response{}
	resp.AddWarning(fmt.Sprintf("config deleted: the %d account(s) of this mount keep their chains but cannot refresh them until config is written again; an idle chain dies 2 weeks after its last rotation", len(names)))
	return resp, nil
}

const operationPrefix = "ermeo"

const pathConfigHelpSyn = `Configure how the engine reaches Ermeo: the API URL and the integration's OAuth client credentials.`

const pathConfigHelpDesc = `
client_id and client_secret are your Ermeo integration's; the secret is
write-only (a read shows client_secret_set). A write changes only the fields
it gives, and checks the credentials with Ermeo first (verify_connection).
TLS certificates are always verified: give a private CA as ca_certificate.
The default_* fields apply to accounts that set none of their own. See
docs/paths.md in the plugin's repository.

Example:
  vault write ermeo/config client_id=5_abc... client_secret=-
`
