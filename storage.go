package ermeosecrets

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Every storage key the plugin uses is built in this file, and nowhere else.
//
//	config               configEntry: api_url, client id and secret, defaults   (seal-wrapped)
//	accounts/<name>      accountEntry: username, the current refresh token and
//	                     access token, the chain's generation, the rotation
//	                     intent record, state                                    (seal-wrapped)
//	passwords/<name>     passwordEntry: kept only with store_password=true       (seal-wrapped)
//
// The rotation intent record lives inside the account entry, so that clearing
// it and storing the new pair is one atomic write.
const (
	configKey      = "config"
	accountPrefix  = "accounts/"
	passwordPrefix = "passwords/"
)

// sealWrappedPaths are declared in PathsSpecial.SealWrapStorage: everything
// that holds a secret.
var sealWrappedPaths = []string{configKey, accountPrefix, passwordPrefix}

func accountKey(name string) string  { return accountPrefix + name }
func passwordKey(name string) string { return passwordPrefix + name }

// configEntry is the mount's connection to Ermeo.
type configEntry struct {
	APIURL       string `json:"api_url"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	BodyFormat   string `json:"body_format"`
	// BodyFormatDetected is, with body_format auto, the format Ermeo was
	// found to read (json or form), or "" before the first answer.
	BodyFormatDetected string        `json:"body_format_detected,omitempty"`
	RequestTimeout     time.Duration `json:"request_timeout"`
	CACertificate      string        `json:"ca_certificate,omitempty"`
	// SkipAccountCheck turns off the GET /api/v1/profile check of a new
	// account (verify_accounts=false).
	SkipAccountCheck bool `json:"skip_account_check,omitempty"`
	// SkipConnectionCheck turns off the check of the client credentials
	// when config is written (verify_connection=false).
	SkipConnectionCheck bool `json:"skip_connection_check,omitempty"`
	// CredentialsCheckedAt is when Ermeo last accepted the client
	// credentials; zero when they were not checked.
	CredentialsCheckedAt time.Time     `json:"credentials_checked_at,omitempty"`
	DefaultMinTTL        time.Duration `json:"default_min_ttl"`
	// DefaultNoLease: accounts that set no lease mode answer creds without
	// a lease (default_lease=false).
	DefaultNoLease        bool          `json:"default_no_lease,omitempty"`
	DefaultRotationPeriod time.Duration `json:"default_rotation_period"`
	// Revision counts the changes of how Ermeo is reached and as whom
	// (connectionChanged), from 1: an account whose refresh Ermeo rejected
	// under one revision stops backing off under the next.
	Revision uint64 `json:"revision"`
}

// passwordEntry is an account's password, kept only when the operator opted in.
type passwordEntry struct {
	Password string `json:"password"`
}

func loadConfig(ctx context.Context, s logical.Storage) (*configEntry, error) {
	var c configEntry
	ok, err := getJSON(ctx, s, configKey, &c)
	if err != nil || !ok {
		return nil, err
	}
	if c.Revision == 0 {
		c.Revision = 1 // written before revisions were counted
	}
	return &c, nil
}

func saveConfig(ctx context.Context, s logical.Storage, c *configEntry) error {
	return putJSON(ctx, s, configKey, c)
}

func deleteConfig(ctx context.Context, s logical.Storage) error {
	return s.Delete(ctx, configKey)
}

func loadAccount(ctx context.Context, s logical.Storage, name string) (*accountEntry, error) {
	var a accountEntry
	ok, err := getJSON(ctx, s, accountKey(name), &a)
	if err != nil || !ok {
		return nil, err
	}
	return &a, nil
}

func saveAccount(ctx context.Context, s logical.Storage, name string, a *accountEntry) error {
	return putJSON(ctx, s, accountKey(name), a)
}

func deleteAccount(ctx context.Context, s logical.Storage, name string) error {
	if err := s.Delete(ctx, passwordKey(name)); err != nil {
		return err
	}
	return s.Delete(ctx, accountKey(name))
}

func listAccounts(ctx context.Context, s logical.Storage) ([]string, error) {
	return s.List(ctx, accountPrefix)
}

func loadPassword(ctx context.Context, s logical.Storage, name string) (string, error) {
	var p passwordEntry
	ok, err := getJSON(ctx, s, passwordKey(name), &p)
	if err != nil || !ok {
		return "", err
	}
	return p.Password, nil
}

func savePassword(ctx context.Context, s logical.Storage, name, password string) error {
	return putJSON(ctx, s, passwordKey(name), &passwordEntry{Password: password})
}

func deletePassword(ctx context.Context, s logical.Storage, name string) error {
	return s.Delete(ctx, passwordKey(name))
}

func getJSON(ctx context.Context, s logical.Storage, key string, out any) (bool, error) {
	e, err := s.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", key, err)
	}
	if e == nil {
		return false, nil
	}
	if err := e.DecodeJSON(out); err != nil {
		return false, fmt.Errorf("decoding %s: %w", key, err)
	}
	return true, nil
}

func putJSON(ctx context.Context, s logical.Storage, key string, v any) error {
	e, err := logical.StorageEntryJSON(key, v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	if err := s.Put(ctx, e); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}
