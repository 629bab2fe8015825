package ermeosecrets

import (
	"context"
	"errors"
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
				Description:   "How token requests are encoded: json (as Ermeo documents) or form (as the stock OAuth server library reads).",
				Default:       string(ermeo.BodyJSON),
				AllowedValues: []any{string(ermeo.BodyJSON), string(ermeo.BodyForm)},
			},
			"ca_certificate": {
				Type:        framework.TypeString,
				Description: "PEM bundle of the CA certificates to trust for api_url, instead of the system's. TLS verification is always on; there is no option to skip it.",
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
			logical.CreateOperation: &framework.PathOperation{
				Callback:  b.pathConfigWrite,
				Summary:   "Configure the Ermeo connection.",
				Responses: map[int][]framework.Response{http.StatusNoContent: {{Description: "No Content"}}},
			},
			logical.UpdateOperation: &framework.PathOperation{
				Callback:  b.pathConfigWrite,
				Summary:   "Change the Ermeo connection; fields left out keep their value.",
				Responses: map[int][]framework.Response{http.StatusNoContent: {{Description: "No Content"}}},
			},
			logical.DeleteOperation: &framework.PathOperation{
				Callback:  b.pathConfigDelete,
				Summary:   "Delete the Ermeo connection settings. Accounts stay, but cannot be refreshed until config is written again.",
				Responses: map[int][]framework.Response{http.StatusNoContent: {{Description: "No Content"}}},
			},
		},
		HelpSynopsis:    pathConfigHelpSyn,
		HelpDescription: pathConfigHelpDesc,
	}}
}

var configResponseFields = map[string]*framework.FieldSchema{
	"api_url":                 {Type: framework.TypeString, Required: true},
	"client_id":               {Type: framework.TypeString, Required: true},
	"client_secret_set":       {Type: framework.TypeBool, Required: true, Description: "Whether a client secret is stored (its value is never returned)."},
	"body_format":             {Type: framework.TypeString, Required: true},
	"verify_accounts":         {Type: framework.TypeBool, Required: true},
	"ca_certificate":          {Type: framework.TypeString, Required: true, Description: "The CA bundle trusted for api_url (public certificates), or empty for the system's."},
	"request_timeout":         {Type: framework.TypeDurationSecond, Required: true},
	"default_min_ttl":         {Type: framework.TypeDurationSecond, Required: true},
	"default_rotation_period": {Type: framework.TypeDurationSecond, Required: true},
}

func (b *backend) pathConfigExists(ctx context.Context, req *logical.Request, _ *framework.FieldData) (bool, error) {
	c, err := b.loadConfigCached(ctx, req.Storage)
	return c != nil, err
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	c, err := b.loadConfigCached(ctx, req.Storage)
	if err != nil || c == nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]any{
		"api_url":                 c.APIURL,
		"client_id":               c.ClientID,
		"client_secret_set":       c.ClientSecret != "",
		"body_format":             c.BodyFormat,
		"ca_certificate":          c.CACertificate,
		"verify_accounts":         !c.SkipAccountCheck,
		"request_timeout":         int64(c.RequestTimeout.Seconds()),
		"default_min_ttl":         int64(c.DefaultMinTTL.Seconds()),
		"default_rotation_period": int64(c.DefaultRotationPeriod.Seconds()),
	}}, nil
}

func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	// Read.
	old, err := loadConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	c := &configEntry{
		APIURL:                ermeo.DefaultAPIURL,
		BodyFormat:            string(ermeo.BodyJSON),
		RequestTimeout:        defaultRequestTimeout,
		DefaultMinTTL:         defaultMinTTL,
		DefaultRotationPeriod: defaultRotationPeriod,
	}
	if old != nil {
		*c = *old
	}

	// Validate.
	if err := parseConfigFields(d, c); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	switch {
	case c.ClientID == "":
		return logical.ErrorResponse("client_id: required: the OAuth client id of your Ermeo integration"), nil
	case c.ClientSecret == "":
		return logical.ErrorResponse("client_secret: required: the OAuth client secret of your Ermeo integration"), nil
	}
	if _, err := ermeo.New(clientConfig(c, b.httpClient)); err != nil {
		return logical.ErrorResponse("api_url: %s", err), nil
	}

	// Act.
	if err := saveConfig(ctx, req.Storage, c); err != nil {
		return nil, err
	}
	b.cacheConfig(c)
	b.rescheduleAll()
	var resp *logical.Response
	if !strings.Contains(c.ClientID, "_") {
		resp = &logical.Response{}
		resp.AddWarning("client_id has no '_': Ermeo's client ids have the form <number>_<random>, and the server rejects others as invalid_client")
	}
	return resp, nil
}

// parseConfigFields copies the fields present in the request onto c.
func parseConfigFields(d *framework.FieldData, c *configEntry) error {
	if err := unknownFields(d); err != nil {
		return err
	}
	if v, ok, err := stringField(d, "api_url"); err != nil {
		return err
	} else if ok {
		v = strings.TrimRight(strings.TrimSpace(v), "/")
		if err := validateAPIURL(v); err != nil {
			return err
		}
		c.APIURL = v
	}
	if v, ok, err := stringField(d, "client_id"); err != nil {
		return err
	} else if ok {
		if strings.TrimSpace(v) == "" {
			return errors.New("client_id: must not be empty")
		}
		c.ClientID = strings.TrimSpace(v)
	}
	if v, ok, err := stringField(d, "client_secret"); err != nil {
		return err
	} else if ok {
		if v == "" {
			return errors.New("client_secret: must not be empty")
		}
		c.ClientSecret = v
	}
	if v, ok, err := stringField(d, "body_format"); err != nil {
		return err
	} else if ok {
		if v != string(ermeo.BodyJSON) && v != string(ermeo.BodyForm) {
			return errors.New("body_format: must be json or form")
		}
		c.BodyFormat = v
	}
	if raw, ok, err := d.GetOkErr("verify_accounts"); err != nil {
		return errors.New("verify_accounts: must be true or false")
	} else if ok {
		c.SkipAccountCheck = !raw.(bool)
	}
	if v, ok, err := caCertificateField(d); err != nil {
		return err
	} else if ok {
		c.CACertificate = v
	}
	durations := []struct {
		name     string
		min, max time.Duration
		dst      *time.Duration
	}{
		{"request_timeout", minRequestTimeout, maxRequestTimeout, &c.RequestTimeout},
		{"default_min_ttl", minMinTTL, maxMinTTL, &c.DefaultMinTTL},
		{"default_rotation_period", minRotationPeriod, maxRotationPeriod, &c.DefaultRotationPeriod},
	}
	for _, f := range durations {
		v, ok, err := durationField(d, f.name, f.min, f.max)
		if err != nil {
			return err
		}
		if ok {
			*f.dst = v
		}
	}
	return nil
}

func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	if err := deleteConfig(ctx, req.Storage); err != nil {
		return nil, err
	}
	b.cacheConfig(nil)
	return nil, nil
}

// caCertificateField returns the ca_certificate field, checked to be PEM;
// an empty value means the system's CAs.
func caCertificateField(d *framework.FieldData) (string, bool, error) {
	raw, ok := d.GetOk("ca_certificate")
	if !ok {
		return "", false, nil
	}
	v := strings.TrimSpace(raw.(string))
	if len(v) > 256*1024 {
		return "", true, errors.New("ca_certificate: too long (at most 256 KiB)")
	}
	if v != "" {
		if _, err := certPool(v); err != nil {
			return "", true, err
		}
	}
	return v, true, nil
}

// clientConfig is the Ermeo client configuration for c.
func clientConfig(c *configEntry, httpClient *http.Client) ermeo.Config {
	return ermeo.Config{
		APIURL:       c.APIURL,
		ClientID:     c.ClientID,
		ClientSecret: c.ClientSecret,
		BodyFormat:   ermeo.BodyFormat(c.BodyFormat),
		HTTPClient:   httpClient,
	}
}

const operationPrefix = "ermeo"

const pathConfigHelpSyn = `Configure how the engine reaches Ermeo: the API URL and the integration's OAuth client credentials.`

const pathConfigHelpDesc = `
The client id and secret are those of your Ermeo integration. The secret is
write-only: a read says only whether it is set (client_secret_set).

api_url defaults to https://api.ermeo.com. It must be https, except for a test
server on a loopback address. body_format is json by default, as Ermeo
documents; if Ermeo answers "Invalid grant_type parameter or parameter missing",
try body_format=form.

TLS certificates are always verified. For a server whose certificate is signed
by a private CA, give that CA in PEM as ca_certificate.

The defaults for accounts (default_min_ttl, default_rotation_period) apply to
accounts that do not set their own.

Example:
  vault write ermeo/config client_id=5_abc... client_secret=...
`
