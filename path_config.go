package ermeosecrets

import (
	"context"
	"fmt"
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
			"api_url": {
				Type:        framework.TypeString,
				Description: "Base URL of the Ermeo API. https is required, except for loopback test servers.",
				Default:     ermeo.DefaultAPIURL,
			},
			"client_id": {
				Type:        framework.TypeString,
				Description: "OAuth client id of the Ermeo integration (of the form <number>_<random>). Required when config is first written.",
			},
			"client_secret": {
				Type:         framework.TypeString,
				Description:  "OAuth client secret of the Ermeo integration. Write-only: never returned. Required when config is first written.",
				DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
			},
			"body_format": {
				Type:          framework.TypeString,
				Description:   "How token requests are encoded: auto (JSON, then the same grant form-encoded once if the server answers exactly what a form-only server answers to JSON, which spends nothing; the format that worked is remembered), json (as Ermeo documents) or form (as the stock OAuth server library reads).",
				Default:       string(ermeo.BodyAuto),
				AllowedValues: []any{string(ermeo.BodyAuto), string(ermeo.BodyJSON), string(ermeo.BodyForm)},
			},
			"ca_certificate": {
				Type:        framework.TypeString,
				Description: "PEM bundle of the CA certificates to trust for api_url, instead of the system's. TLS verification is always on; there is no option to skip it.",
			},
			"verify_connection": {
				Type:        framework.TypeBool,
				Description: "Check the client credentials with Ermeo when config is written: a refresh grant with a refresh token that cannot exist, which Ermeo answers invalid_client for bad credentials and invalid_grant for good ones, spending nothing. Turn off for air-gapped setups.",
				Default:     true,
			},
			"verify_accounts": {
				Type:        framework.TypeBool,
				Description: "Check each new account's chain with Ermeo's GET /api/v1/profile and record whose account it is. Turn off where only the token endpoint is reachable.",
				Default:     true,
			},
			"request_timeout": {
				Type:        framework.TypeDurationSecond,
				Description: "How long one call to Ermeo may take, from 1s to 5m.",
				Default:     int(defaultRequestTimeout.Seconds()),
			},
			"default_min_ttl": {
				Type:        framework.TypeDurationSecond,
				Description: "Default for accounts' min_ttl: the least life an access token handed out has left.",
				Default:     int(defaultMinTTL.Seconds()),
			},
			"default_lease": {
				Type:        framework.TypeBool,
				Description: "Default for accounts' lease: whether creds/<name> answers with a lease (renewable by half of min_ttl, never past half of min_ttl before the token expires), or, with false, with no lease but a ttl field. An account's own lease setting wins.",
				Default:     true,
			},
			"default_rotation_period": {
				Type:        framework.TypeDurationSecond,
				Description: "Default for accounts' rotation_period: an idle chain is rotated once its refresh token is this old. At most 13 days (refresh tokens live 2 weeks).",
				Default:     int(defaultRotationPeriod.Seconds()),
			},
		},
		ExistenceCheck: b.pathConfigExists,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:  b.pathConfigRead,
				Summary:   "Read the Ermeo connection settings (never the client secret).",
				Responses: map[int][]framework.Response{http.StatusOK: {{Description: "OK", Fields: configResponseFields}}},
			},
			logical.CreateOperation: forwardedWrite(b.pathConfigWrite, "Configure the Ermeo connection.",
				map[int][]framework.Response{http.StatusNoContent: {{Description: "No Content"}}}),
			logical.UpdateOperation: forwardedWrite(b.pathConfigWrite, "Change the Ermeo connection; fields left out keep their value.",
				map[int][]framework.Response{http.StatusNoContent: {{Description: "No Content"}}}),
			logical.DeleteOperation: forwardedWrite(b.pathConfigDelete, "Delete the Ermeo connection settings. Accounts stay, but cannot be refreshed until config is written again.",
				map[int][]framework.Response{http.StatusNoContent: {{Description: "No Content"}}}),
		},
		HelpSynopsis:    pathConfigHelpSyn,
		HelpDescription: pathConfigHelpDesc,
	}}
}

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

	// Read.
	old, err := loadConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	c := newConfig()
	if old != nil {
		*c = *old
	}

	// Validate.
	trimmed, err := parseConfigFields(d, c)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
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
	if f.str("api_url", &c.APIURL) {
		c.APIURL = strings.TrimRight(c.APIURL, "/")
	}
	f.str("client_id", &c.ClientID)
	f.str("client_secret", &c.ClientSecret)
	f.str("body_format", &c.BodyFormat)
	f.str("ca_certificate", &c.CACertificate)
	f.duration("request_timeout", &c.RequestTimeout)
	f.duration("default_min_ttl", &c.DefaultMinTTL)
	f.duration("default_rotation_period", &c.DefaultRotationPeriod)
	for name, dst := range map[string]*bool{"verify_accounts": &c.VerifyAccounts, "verify_connection": &c.VerifyConnection, "default_lease": &c.DefaultLease} {
		if v, ok := d.GetOk(name); ok {
			*dst = v.(bool)
		}
	}
	return f.trimmed, f.err
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
The client id and secret are those of your Ermeo integration. The secret is
write-only: a read says only whether it is set (client_secret_set).

api_url defaults to https://api.ermeo.com. It must be https, except for a test
server on a loopback address. body_format is auto by default: token requests
are sent as JSON, as Ermeo documents, and if the server answers exactly what a
server that reads only form fields answers to JSON ("Invalid grant_type
parameter or parameter missing", which spends nothing), the same grant is sent
once more form-encoded; the format that worked is remembered and shown as
body_format_detected. body_format=json or form fixes the format.

TLS certificates are always verified. For a server whose certificate is signed
by a private CA, give that CA in PEM as ca_certificate.

The defaults for accounts (default_min_ttl, default_rotation_period) apply to
accounts that do not set their own.

Example:
  vault write ermeo/config client_id=5_abc... client_secret=...
`
