package ermeosecrets

import (
	"context"
	"net/http"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
	"github.com/hashicorp/vault/sdk/logical"
)

// configVersion is the config entry's version this build writes (upgradeConfig).
const configVersion = 1

// configEntry is the mount's connection to Ermeo.
type configEntry struct {
	Version      int    `json:"version"`
	APIURL       string `json:"api_url"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	BodyFormat   string `json:"body_format"`
	// BodyFormatDetected: with body_format auto, the format Ermeo was found
	// to read (json or form), or "" before the first answer.
	BodyFormatDetected string        `json:"body_format_detected,omitempty"`
	RequestTimeout     time.Duration `json:"request_timeout"`
	CACertificate      string        `json:"ca_certificate,omitempty"`
	// VerifyAccounts: a new account's chain is checked with GET
	// /api/v1/profile. VerifyConnection: the client credentials are checked
	// when config is written.
	VerifyAccounts   bool `json:"verify_accounts"`
	VerifyConnection bool `json:"verify_connection"`
	// CredentialsCheckedAt: when Ermeo last accepted the client credentials (zero: unchecked).
	CredentialsCheckedAt time.Time     `json:"credentials_checked_at,omitempty"`
	DefaultMinTTL        time.Duration `json:"default_min_ttl"`
	// DefaultLease: accounts that set no lease mode answer creds with a lease.
	DefaultLease          bool          `json:"default_lease"`
	DefaultRotationPeriod time.Duration `json:"default_rotation_period"`
	// Revision counts the changes of how Ermeo is reached and as whom
	// (connectionChanged), from 1: an account whose refresh Ermeo rejected
	// under one revision stops backing off under the next.
	Revision uint64 `json:"revision"`
}

// newConfig is a config with every default.
func newConfig() *configEntry {
	return &configEntry{
		Version:               configVersion,
		APIURL:                ermeo.DefaultAPIURL,
		BodyFormat:            string(ermeo.BodyAuto),
		RequestTimeout:        defaultRequestTimeout,
		VerifyAccounts:        true,
		VerifyConnection:      true,
		DefaultMinTTL:         defaultMinTTL,
		DefaultLease:          true,
		DefaultRotationPeriod: defaultRotationPeriod,
	}
}

func loadConfig(ctx context.Context, s logical.Storage) (*configEntry, error) {
	var c configV0
	ok, err := getJSON(ctx, s, configKey, &c)
	if err != nil || !ok {
		return nil, err
	}
	return upgradeConfig(&c), nil
}

// configV0 is a config entry as any version stored it: this version's
// fields, and the negations that entries before versions (v0.1.0 and
// v0.2.0's development) stored instead of the positive fields.
type configV0 struct {
	configEntry
	SkipAccountCheck    bool `json:"skip_account_check"`
	SkipConnectionCheck bool `json:"skip_connection_check"`
	DefaultNoLease      bool `json:"default_no_lease"`
}

// upgradeConfig is the one place where an older config entry becomes this
// version's, written as such at the next config write.
func upgradeConfig(c *configV0) *configEntry {
	if c.Version < 1 {
		c.VerifyAccounts, c.VerifyConnection, c.DefaultLease = !c.SkipAccountCheck, !c.SkipConnectionCheck, !c.DefaultNoLease
		c.Revision = max(c.Revision, 1) // written before revisions were counted
		if c.DefaultMinTTL == 0 {
			c.DefaultMinTTL = defaultMinTTL
		}
		if c.DefaultRotationPeriod == 0 {
			c.DefaultRotationPeriod = defaultRotationPeriod
		}
		c.Version = 1
	}
	return &c.configEntry
}

func saveConfig(ctx context.Context, s logical.Storage, c *configEntry) error {
	return putJSON(ctx, s, configKey, c)
}

func deleteConfig(ctx context.Context, s logical.Storage) error {
	return s.Delete(ctx, configKey)
}

// Limits on what an operator can write: anything outside gets a 400 that
// names the field and what is allowed.
const (
	maxFieldLen = 4096

	minRequestTimeout     = time.Second
	maxRequestTimeout     = 5 * time.Minute
	defaultRequestTimeout = 30 * time.Second

	// refreshTokenLifetime is how long Ermeo's refresh tokens live, counted
	// from issue. Ermeo does not send it; the plugin tracks it.
	refreshTokenLifetime = 14 * 24 * time.Hour

	minMinTTL     = time.Second
	maxMinTTL     = refreshTokenLifetime
	defaultMinTTL = 10 * time.Minute

	minRotationPeriod     = time.Minute
	maxRotationPeriod     = 13 * 24 * time.Hour
	defaultRotationPeriod = 7 * 24 * time.Hour
)

// durationLimits are the ranges allowed for every duration field, by name.
var durationLimits = map[string]durationLimit{
	"request_timeout":         {minRequestTimeout, maxRequestTimeout},
	"default_min_ttl":         {minMinTTL, maxMinTTL},
	"min_ttl":                 {minMinTTL, maxMinTTL},
	"default_rotation_period": {minRotationPeriod, maxRotationPeriod},
	"rotation_period":         {minRotationPeriod, maxRotationPeriod},
}

type durationLimit struct{ min, max time.Duration }

// cachedConfig is the config as storage holds it (cfg is nil when there is
// none), and the Ermeo client built from it once (or why it could not be).
type cachedConfig struct {
	cfg       *configEntry
	client    *ermeo.Client
	clientErr error
	http      *http.Client // the backend's HTTP client the client was built on
}

func (b *backend) newCachedConfig(cfg *configEntry) *cachedConfig {
	c := &cachedConfig{cfg: cfg, http: b.httpClient}
	if cfg != nil {
		c.client, c.clientErr = b.newClient(cfg)
	}
	return c
}

// getConfig returns the config, from memory when it is there.
func (b *backend) getConfig(ctx context.Context, s logical.Storage) (*configEntry, error) {
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

// peekConfig is the config in memory, or nil if not loaded (or none).
func (b *backend) peekConfig() *configEntry {
	if c := b.config.Load(); c != nil {
		return c.cfg
	}
	return nil
}

// setConfig records what was just written to storage.
func (b *backend) setConfig(cfg *configEntry) {
	b.config.Store(b.newCachedConfig(cfg))
}

// connectionChanged reports whether how Ermeo is reached, or as whom,
// differs between a and b.
func connectionChanged(a, b *configEntry) bool {
	return a.APIURL != b.APIURL || a.ClientID != b.ClientID || a.ClientSecret != b.ClientSecret ||
		a.BodyFormat != b.BodyFormat || a.CACertificate != b.CACertificate
}

// recordBodyFormat records in config the body format the cached client found
// to work in body_format=auto, so that later clients (after a restart, or on
// another node) start from it, unless recorded already or config changed
// meanwhile. The periodic tick calls it before taking any account lock (locks.go).
func (b *backend) recordBodyFormat(ctx context.Context, s logical.Storage) {
	c := b.config.Load()
	if c == nil || c.cfg == nil || c.client == nil {
		return
	}
	cfg, detected := c.cfg, string(c.client.Detected())
	if cfg.BodyFormat != string(ermeo.BodyAuto) || detected == "" || detected == cfg.BodyFormatDetected {
		return
	}
	b.configMu.Lock()
	defer b.configMu.Unlock()
	stored, err := loadConfig(ctx, s)
	if err != nil || stored == nil || connectionChanged(stored, cfg) || stored.BodyFormatDetected == detected {
		return
	}
	stored.BodyFormatDetected = detected
	if err := saveConfig(ctx, s, stored); err != nil {
		b.Logger().Warn("could not record the body format Ermeo reads; the next tick tries again", "body_format_detected", detected, "error", err)
		return
	}
	b.setConfig(stored)
	b.Logger().Info("recorded the body format Ermeo reads", "body_format_detected", detected)
}

// client returns the Ermeo client for cfg: the cached one when cfg is the
// cached config, else (a config write's candidate) a new one. A test that
// replaced the backend's HTTP client gets a client built on the new one.
func (b *backend) client(cfg *configEntry) (*ermeo.Client, error) {
	c := b.config.Load()
	switch {
	case c == nil || c.cfg != cfg || cfg == nil:
		return b.newClient(cfg)
	case c.http != b.httpClient:
		rebuilt := b.newCachedConfig(cfg)
		b.config.CompareAndSwap(c, rebuilt)
		return rebuilt.client, rebuilt.clientErr
	default:
		return c.client, c.clientErr
	}
}
