package ermeosecrets

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The entries as older versions stored them: v0.1.0 (released), and v0.2.0's
// development before entries had a version (f0c3291). Each is read through
// the one upgrade step (upgradeConfig, upgradeAccount), served as before, and
// written back as this version's, without the negated fields.
func TestOlderEntriesAreUpgradedWhereTheyAreRead(t *testing.T) {
	cases := []struct {
		name, config, account string
		// What the API shows of them.
		verifyAccounts, verifyConnection, defaultLease, lease bool
	}{
		{
			name: "v0.1.0",
			config: `{"api_url":"%s","client_id":"%s","client_secret":"%s","body_format":"json","request_timeout":30000000000,` +
				`"skip_account_check":true,"default_min_ttl":600000000000,"default_rotation_period":604800000000000}`,
			account: `{"username":"jane@example.com","password_kept":false,"refresh_token":"%s","refresh_token_issued_at":"%s",` +
				`"access_token":"%s","access_token_expires_at":"%s","generation":1,"last_rotation":"%s","state":"active","no_lease":true}`,
			verifyAccounts: false, verifyConnection: true, defaultLease: true, lease: false,
		},
		{
			name: "before versions",
			config: `{"api_url":"%s","client_id":"%s","client_secret":"%s","body_format":"auto","body_format_detected":"json","request_timeout":30000000000,` +
				`"skip_connection_check":true,"default_min_ttl":600000000000,"default_no_lease":true,"default_rotation_period":604800000000000}`,
			account: `{"username":"jane@example.com","password_kept":false,"refresh_token":"%s","refresh_token_issued_at":"%s",` +
				`"access_token":"%s","access_token_expires_at":"%s","access_token_lifetime":7200000000000,"generation":1,"last_rotation":"%s","state":"active","lease":true}`,
			verifyAccounts: true, verifyConnection: false, defaultLease: false, lease: true,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newTestEnv(t, fakeermeo.Options{})
			// A chain that Ermeo issued, stored as the old version did.
			e.configureUnchecked()
			e.createAccount("app", nil)
			a := e.stored("app")
			at := func(tm time.Time) string { return tm.UTC().Format(time.RFC3339Nano) }
			put := func(key, format string, args ...any) {
				if err := e.storage.Put(t.Context(), &logical.StorageEntry{Key: key, Value: []byte(strings.TrimSpace(fmt.Sprintf(format, args...)))}); err != nil {
					t.Fatal(err)
				}
			}
			put(configKey, c.config, e.url, testClientID, testClientSecret)
			put(accountKey("app"), c.account, a.RefreshToken, at(a.RefreshTokenIssuedAt), a.AccessToken, at(a.AccessTokenExpiresAt), at(a.LastRotation))
			e.restart()

			cfg := e.must(logical.ReadOperation, "config", nil).Data
			if cfg["verify_accounts"] != c.verifyAccounts || cfg["verify_connection"] != c.verifyConnection || cfg["default_lease"] != c.defaultLease {
				t.Errorf("config as read: %v", cfg)
			}
			if got := e.must(logical.ReadOperation, "accounts/app", nil).Data["lease"]; got != c.lease {
				t.Errorf("the account's lease: %v, want %v", got, c.lease)
			}
			if up := e.stored("app"); up.AccessTokenLifetime != 2*time.Hour || up.Version != accountVersion {
				t.Errorf("upgraded account: lifetime %s, version %d", up.AccessTokenLifetime, up.Version)
			}
			if r := e.creds("app"); (r.Secret != nil) != c.lease || r.Data["access_token"] != a.AccessToken {
				t.Errorf("creds of the old entry: lease %v, want %v: %v", r.Secret != nil, c.lease, r)
			}
			// Written back as this version's: the next writes.
			e.must(logical.UpdateOperation, "config", map[string]any{"request_timeout": 20})
			e.must(logical.UpdateOperation, "accounts/app", map[string]any{"min_ttl": 300})
			for key, negations := range map[string][]string{configKey: {"skip_account_check", "skip_connection_check", "default_no_lease"}, accountKey("app"): {"no_lease"}} {
				entry, err := e.storage.Get(t.Context(), key)
				if err != nil || entry == nil {
					t.Fatal(key, err)
				}
				var fields map[string]any
				if err := json.Unmarshal(entry.Value, &fields); err != nil {
					t.Fatal(err)
				}
				if fields["version"] != float64(1) {
					t.Errorf("%s written back with version %v", key, fields["version"])
				}
				for _, n := range negations {
					if _, ok := fields[n]; ok {
						t.Errorf("%s written back with %s", key, n)
					}
				}
			}
			if cfg := e.must(logical.ReadOperation, "config", nil).Data; cfg["verify_accounts"] != c.verifyAccounts || cfg["default_lease"] != c.defaultLease {
				t.Errorf("config after a write: %v", cfg)
			}
			if got := e.must(logical.ReadOperation, "accounts/app", nil).Data["lease"]; got != c.lease {
				t.Errorf("the account's lease after a write: %v", got)
			}
			e.assertNoTokenUsedTwice()
		})
	}
}
