package ermeosecrets

import (
	"cmp"
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	stateActive      = "active"
	stateNeedsReauth = "needs_reauth"
)

// rotationIntent records, before a refresh token is sent to Ermeo, that it is
// about to be spent: found later (after a crash or an unanswered request), it
// means the stored refresh token may no longer work.
type rotationIntent struct {
	Generation uint64    `json:"generation"`
	StartedAt  time.Time `json:"started_at"`
	Attempts   int       `json:"attempts"`
}

// accountVersion is the account entry's version this build writes (upgradeAccount).
const accountVersion = 1

// accountEntry is one Ermeo account and the current link of its refresh chain.
type accountEntry struct {
	Version              int           `json:"version"`
	Username             string        `json:"username"`
	PasswordKept         bool          `json:"password_kept"`
	RefreshToken         string        `json:"refresh_token"`
	RefreshTokenIssuedAt time.Time     `json:"refresh_token_issued_at"`
	AccessToken          string        `json:"access_token"`
	AccessTokenExpiresAt time.Time     `json:"access_token_expires_at"`
	AccessTokenLifetime  time.Duration `json:"access_token_lifetime,omitempty"` // the grant's expires_in, 0 if unknown
	Generation           uint64        `json:"generation"`
	LastRotation         time.Time     `json:"last_rotation"`
	LastError            string        `json:"last_error,omitempty"`
	State                string        `json:"state"`
	MinTTL               time.Duration `json:"min_ttl,omitempty"`
	RotationPeriod       time.Duration `json:"rotation_period,omitempty"`
	Lease                *bool         `json:"lease,omitempty"` // nil: config's default_lease
	// Whose Ermeo account this is, from GET /api/v1/profile when written.
	ErmeoUserID    string          `json:"ermeo_user_id,omitempty"`
	ErmeoEmail     string          `json:"ermeo_email,omitempty"`
	CheckedAt      time.Time       `json:"checked_at,omitempty"`
	RotationIntent *rotationIntent `json:"rotation_intent,omitempty"`
	// NextAttemptAt is set when a refresh failed at Ermeo (no answer, or a
	// rejected client): refreshes wait until then (backoff, or Retry-After)
	// unless an operator forces one. Failures counts the failed refreshes
	// since the last grant, which the backoff doubles with.
	NextAttemptAt    time.Time `json:"next_attempt_at,omitempty"`
	Failures         int       `json:"failures,omitempty"`
	RejectedByConfig uint64    `json:"rejected_by_config,omitempty"` // the revision whose client Ermeo rejected (backoffLifted)
	// ChainLostAt and ChainLostHow (lost_in_flight or refused): the last chain
	// found gone, kept across chains so that status and metrics show it even
	// after a plugin reload restarts the counters.
	ChainLostAt  time.Time `json:"chain_lost_at,omitempty"`
	ChainLostHow string    `json:"chain_lost_how,omitempty"`
}

// clone returns a copy that shares nothing with a.
func (a *accountEntry) clone() *accountEntry {
	c := *a
	if a.RotationIntent != nil {
		intent := *a.RotationIntent
		c.RotationIntent = &intent
	}
	if a.Lease != nil {
		lease := *a.Lease
		c.Lease = &lease
	}
	return &c
}

// effectiveLease says whether creds/<name> answers with a lease: the
// account's own setting, or config's default_lease (on by default).
func effectiveLease(a *accountEntry, cfg *configEntry) bool {
	if a.Lease != nil {
		return *a.Lease
	}
	return cfg == nil || cfg.DefaultLease
}

// effectiveMinTTL is the least life a token handed out has left, and
// effectiveRotationPeriod how old an idle chain's refresh token may get before
// the keep-alive rotates it: the account's own, or config's default (which
// upgradeConfig fills in older configs), or the engine's with no config.
func effectiveMinTTL(a *accountEntry, cfg *configEntry) time.Duration {
	if a.MinTTL > 0 || cfg == nil {
		return cmp.Or(a.MinTTL, defaultMinTTL)
	}
	return cfg.DefaultMinTTL
}

func effectiveRotationPeriod(a *accountEntry, cfg *configEntry) time.Duration {
	if a.RotationPeriod > 0 || cfg == nil {
		return cmp.Or(a.RotationPeriod, defaultRotationPeriod)
	}
	return cfg.DefaultRotationPeriod
}

// backoffLifted reports whether config changed since Ermeo rejected the
// account's refresh: the client may be fixed, so the next refresh need not wait.
func (a *accountEntry) backoffLifted(cfg *configEntry) bool {
	return a.RejectedByConfig != 0 && cfg != nil && cfg.Revision != a.RejectedByConfig
}

// dueAt is when the keep-alive should next look at an account, if ever. It
// depends on the entry alone (and config's defaults): every put reschedules.
func dueAt(a *accountEntry, cfg *configEntry, now time.Time) (time.Time, bool) {
	switch {
	case a.State == stateNeedsReauth:
		// Only an operator (or a kept password, tried when the chain was
		// found gone) restarts it: a refused password retried on a timer
		// could lock the user out.
		return time.Time{}, false
	case !a.NextAttemptAt.IsZero() && !a.backoffLifted(cfg):
		return a.NextAttemptAt, true
	case a.RotationIntent != nil, a.RefreshToken == "", a.RefreshTokenIssuedAt.IsZero():
		// An interrupted refresh, or a chain to start: resolve it soon.
		return now, true
	default:
		return a.RefreshTokenIssuedAt.Add(effectiveRotationPeriod(a, cfg)), true
	}
}

// minTTLError is the 400's message for an account whose min_ttl (its own or
// config's default) is at or above its access tokens' lifetime, which would
// make every read refresh; "" otherwise, or when the lifetime is unknown.
func minTTLError(a *accountEntry, cfg *configEntry, lifetime time.Duration) string {
	minTTL := effectiveMinTTL(a, cfg)
	if lifetime <= 0 || minTTL < lifetime {
		return ""
	}
	field := "min_ttl"
	if a.MinTTL == 0 {
		field = "default_min_ttl (in config)"
	}
	return fmt.Sprintf("%s: %s is at or above the account's access token lifetime (%s, from Ermeo's expires_in): every read would refresh the chain; give less than %s",
		field, humanDuration(minTTL), humanDuration(lifetime), humanDuration(lifetime))
}

// accountNameRe is what an account name may be: it becomes part of a path.
var accountNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)

// reservedAccountNames are words of the engine's own paths, which an account
// must not be named after (accounts/rotate would read as a path, not a name).
var reservedAccountNames = map[string]bool{"rotate": true}

func validateAccountName(name string) error {
	if reservedAccountNames[strings.ToLower(name)] {
		return fmt.Errorf("name: %q is reserved for the engine's own paths: choose another name", name)
	}
	if !accountNameRe.MatchString(name) {
		return fmt.Errorf("name: %q is not allowed: use 1 to 128 letters, digits, '-' or '_', starting with a letter or digit", truncate(name, 64))
	}
	return nil
}

// applyGrant records a new link of the chain from a grant's answer onto a.
// Both tokens' lives count from sentAt, when the request was sent: Ermeo
// issued them no earlier, and an answer can take up to request_timeout, by
// which counting from the answer would overstate their life.
func applyGrant(a *accountEntry, tok *ermeo.Token, sentAt, now time.Time) {
	a.AccessToken, a.AccessTokenExpiresAt, a.AccessTokenLifetime = tok.AccessToken, sentAt.Add(tok.ExpiresIn), tok.ExpiresIn
	if tok.RefreshToken != "" {
		a.RefreshToken, a.RefreshTokenIssuedAt = tok.RefreshToken, sentAt
	}
	a.Generation++
	a.LastRotation, a.LastError, a.State, a.RotationIntent = now, "", stateActive, nil
	a.NextAttemptAt, a.Failures, a.RejectedByConfig = time.Time{}, 0, 0
}

// accountView is what a read of an account shows: status, never a secret.
func accountView(name string, a *accountEntry, cfg *configEntry) map[string]any {
	refreshExpires := time.Time{}
	if !a.RefreshTokenIssuedAt.IsZero() && a.RefreshToken != "" {
		refreshExpires = a.RefreshTokenIssuedAt.Add(refreshTokenLifetime)
	}
	return map[string]any{
		"name":                     name,
		"username":                 a.Username,
		"state":                    a.State,
		"password_stored":          a.PasswordKept,
		"refresh_token_set":        a.RefreshToken != "",
		"generation":               int64(a.Generation),
		"access_token_expires_at":  formatTime(a.AccessTokenExpiresAt),
		"refresh_token_issued_at":  formatTime(a.RefreshTokenIssuedAt),
		"refresh_token_expires_at": formatTime(refreshExpires),
		"last_rotation":            formatTime(a.LastRotation),
		"last_error":               a.LastError,
		"rotation_in_flight":       a.RotationIntent != nil,
		"chain_lost_at":            formatTime(a.ChainLostAt),
		"chain_lost_how":           a.ChainLostHow,
		"min_ttl":                  int64(effectiveMinTTL(a, cfg).Seconds()),
		"rotation_period":          int64(effectiveRotationPeriod(a, cfg).Seconds()),
		"lease":                    effectiveLease(a, cfg),
		"ermeo_user_id":            a.ErmeoUserID,
		"ermeo_email":              a.ErmeoEmail,
		"checked_at":               formatTime(a.CheckedAt),
	}
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// passwordEntry is an account's password, kept only when the operator opted in.
type passwordEntry struct {
	Password string `json:"password"`
}

func accountKey(name string) string  { return accountPrefix + name }
func passwordKey(name string) string { return passwordPrefix + name }

func loadAccount(ctx context.Context, s logical.Storage, name string) (*accountEntry, error) {
	var a accountV0
	ok, err := getJSON(ctx, s, accountKey(name), &a)
	if err != nil || !ok {
		return nil, err
	}
	return upgradeAccount(&a), nil
}

// accountV0 is an account entry as any version stored it: this version's
// fields, and no_lease, which entries of v0.1.0 stored for lease=false.
type accountV0 struct {
	accountEntry
	NoLease bool `json:"no_lease"`
}

// upgradeAccount is the one place where an older account entry becomes this
// version's; it is written as such at the account's next write.
func upgradeAccount(a *accountV0) *accountEntry {
	if a.Version < 1 {
		if a.NoLease && a.Lease == nil {
			a.Lease = new(bool) // lease=false
		}
		if a.AccessTokenLifetime == 0 && a.AccessToken != "" && !a.LastRotation.IsZero() && a.AccessTokenExpiresAt.After(a.LastRotation) {
			// v0.1.0 did not record expires_in: its grants were stored at
			// once, so the lifetime is the expiry less the rotation.
			a.AccessTokenLifetime = a.AccessTokenExpiresAt.Sub(a.LastRotation)
		}
		a.Version = 1
	}
	return &a.accountEntry
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
	var p passwordEntry // "" when there is none
	_, err := getJSON(ctx, s, passwordKey(name), &p)
	return p.Password, err
}

func savePassword(ctx context.Context, s logical.Storage, name, password string) error {
	return putJSON(ctx, s, passwordKey(name), &passwordEntry{Password: password})
}

func deletePassword(ctx context.Context, s logical.Storage, name string) error {
	return s.Delete(ctx, passwordKey(name))
}

// withAccountName checks the path's account name for every accountHandler: a
// bad name is a 400 that says what is allowed.
func withAccountName(h accountHandler) framework.OperationFunc {
	return func(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
		name := d.Get("name").(string)
		if err := validateAccountName(name); err != nil {
			return logical.ErrorResponse(err.Error()), nil
		}
		return h(ctx, req, d, name)
	}
}

type accountHandler func(ctx context.Context, req *logical.Request, d *framework.FieldData, name string) (*logical.Response, error)

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
