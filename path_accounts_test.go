package ermeosecrets

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

func TestAccountCreateRunsOnePasswordGrantAndForgetsThePassword(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configureUnchecked()
	resp := e.must(logical.UpdateOperation, "accounts/app", map[string]any{"username": testUser, "password": testPassword})
	if resp.Data["state"] != stateActive || resp.Data["password_stored"] != false || resp.Data["generation"] != int64(1) {
		t.Fatalf("account write: %v", resp.Data)
	}
	if c := e.fake.Counters(); c.Grants["password"]["success"] != 1 || c.Requests != 1 {
		t.Errorf("want exactly one password grant, got %+v", c)
	}
	if pw, _ := loadPassword(t.Context(), e.storage, "app"); pw != "" {
		t.Errorf("the password was kept without store_password")
	}
	a := e.stored("app")
	issued := e.fake.IssuedRefreshTokens()
	if a.RefreshToken != issued[0] || !e.fake.AccessTokenValid(a.AccessToken) {
		t.Errorf("stored chain is not the fake's")
	}
	if !a.AccessTokenExpiresAt.Equal(e.clock.Now().Add(7200 * time.Second)) {
		t.Errorf("access token expiry %v", a.AccessTokenExpiresAt)
	}
}

func TestAccountReadShowsStatusNeverASecret(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", map[string]any{"store_password": true})
	resp := e.must(logical.ReadOperation, "accounts/app", nil)
	a := e.stored("app")
	for _, k := range []string{"name", "username", "state", "password_stored", "refresh_token_set", "generation", "access_token_expires_at",
		"refresh_token_issued_at", "refresh_token_expires_at", "last_rotation", "last_error", "rotation_in_flight", "min_ttl", "rotation_period"} {
		if _, ok := resp.Data[k]; !ok {
			t.Errorf("account read lacks %s", k)
		}
	}
	if resp.Data["password_stored"] != true || resp.Data["refresh_token_set"] != true {
		t.Errorf("password_stored = %v, refresh_token_set = %v", resp.Data["password_stored"], resp.Data["refresh_token_set"])
	}
	if resp.Data["refresh_token_expires_at"] != formatTime(e.clock.Now().Add(14*24*time.Hour)) {
		t.Errorf("refresh_token_expires_at = %v", resp.Data["refresh_token_expires_at"])
	}
	text := fmt.Sprint(resp.Data)
	for _, secret := range []string{testPassword, testClientSecret, a.RefreshToken, a.AccessToken} {
		if strings.Contains(text, secret) {
			t.Errorf("account read carries a secret")
		}
	}
}

func TestAccountStorePasswordKeepsItSealWrapped(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", map[string]any{"store_password": true})
	if pw, _ := loadPassword(t.Context(), e.storage, "app"); pw != testPassword {
		t.Fatalf("kept password not stored")
	}
	found := false
	for _, p := range e.b.SpecialPaths().SealWrapStorage {
		if strings.HasPrefix(passwordKey("app"), p) {
			found = true
		}
	}
	if !found {
		t.Errorf("%s is not under a seal-wrapped path", passwordKey("app"))
	}
	// Turning it off forgets the password.
	e.must(logical.UpdateOperation, "accounts/app", map[string]any{"store_password": false})
	if pw, _ := loadPassword(t.Context(), e.storage, "app"); pw != "" {
		t.Errorf("store_password=false kept the password")
	}
	if e.stored("app").PasswordKept {
		t.Errorf("account still says its password is kept")
	}
}

func TestAccountUpdateSettingsWithoutTouchingTheChain(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	before := e.fake.Counters().Requests
	resp := e.must(logical.UpdateOperation, "accounts/app", map[string]any{"min_ttl": "30m", "rotation_period": "3d"})
	if resp.Data["min_ttl"] != int64(1800) || resp.Data["rotation_period"] != int64(3*24*3600) {
		t.Errorf("settings: %v", resp.Data)
	}
	if e.fake.Counters().Requests != before {
		t.Errorf("a settings update called Ermeo")
	}
}

func TestAccountPasswordWriteRestartsTheChain(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	resp := e.must(logical.UpdateOperation, "accounts/app", map[string]any{"password": testPassword})
	if resp.Data["generation"] != int64(2) {
		t.Errorf("generation after a new password grant: %v", resp.Data["generation"])
	}
}

func TestAccountBadInput(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configureUnchecked()
	cases := []struct {
		name, path string
		data       map[string]any
		field      string
	}{
		{"no username", "accounts/app", map[string]any{"password": testPassword}, "username"},
		{"empty username", "accounts/app", map[string]any{"username": "", "password": testPassword}, "username"},
		{"no password", "accounts/app", map[string]any{"username": testUser}, "password"},
		{"empty password", "accounts/app", map[string]any{"username": testUser, "password": ""}, "password"},
		{"both secrets", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "refresh_token": "abc"}, "refresh_token"},
		{"store_password without a password", "accounts/app", map[string]any{"username": testUser, "refresh_token": "abc", "store_password": true}, "store_password"},
		{"name with dot", "accounts/a.b", map[string]any{"username": testUser, "password": testPassword}, "name"},
		{"name with slash", "accounts/a/b", map[string]any{"username": testUser, "password": testPassword}, "name"},
		{"name too long", "accounts/" + strings.Repeat("a", 200), map[string]any{"username": testUser, "password": testPassword}, "name"},
		{"min_ttl zero", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "min_ttl": 0}, "min_ttl"},
		{"min_ttl negative", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "min_ttl": -60}, "min_ttl"},
		{"min_ttl over two weeks", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "min_ttl": "400h"}, "min_ttl"},
		{"rotation_period over 13 days", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "rotation_period": "14d"}, "rotation_period"},
		{"rotation_period garbage", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "rotation_period": "often"}, "rotation_period"},
		{"store_password garbage", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "store_password": "perhaps"}, "store_password"},
		{"unknown field", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "pasword": "x"}, "pasword"},
		{"huge username", "accounts/app", map[string]any{"username": strings.Repeat("u", 5000), "password": testPassword}, "username"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.request(logical.UpdateOperation, tc.path, tc.data)
			if err != nil || resp == nil || !resp.IsError() {
				t.Fatalf("want a 400, got resp=%v err=%v", resp, err)
			}
			if msg := resp.Error().Error(); !strings.Contains(msg, tc.field) || strings.Contains(msg, testPassword) {
				t.Errorf("error %q must name %s and not echo the password", msg, tc.field)
			}
		})
	}
	if names, _ := listAccounts(t.Context(), e.storage); len(names) != 0 {
		t.Errorf("bad input stored accounts: %v", names)
	}
	if c := e.fake.Counters(); c.Requests != 0 {
		t.Errorf("bad input reached Ermeo: %d requests", c.Requests)
	}
}

func TestAccountBeforeConfigIsA400(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	resp, err := e.request(logical.UpdateOperation, "accounts/app", map[string]any{"username": testUser, "password": testPassword})
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "config") {
		t.Fatalf("want a 400 naming config, got %v %v", resp, err)
	}
}

func TestAccountWrongPasswordIsA400AndNothingStored(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	resp, err := e.request(logical.UpdateOperation, "accounts/app", map[string]any{"username": testUser, "password": "nope"})
	if err != nil || !resp.IsError() {
		t.Fatalf("want a 400, got %v %v", resp, err)
	}
	msg := resp.Error().Error()
	if !strings.Contains(msg, "password") || !strings.Contains(msg, "Invalid username and password combination") {
		t.Errorf("message: %q", msg)
	}
	if a, _ := loadAccount(t.Context(), e.storage, "app"); a != nil {
		t.Errorf("a refused account was stored")
	}
}

func TestAccountWrongClientSecretNamesTheConfig(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.must(logical.UpdateOperation, "config", map[string]any{"api_url": e.url, "client_id": testClientID, "client_secret": "wrong", "verify_connection": false})
	resp, err := e.request(logical.UpdateOperation, "accounts/app", map[string]any{"username": testUser, "password": testPassword})
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "client_secret") {
		t.Fatalf("want a 400 naming client_secret, got %v %v", resp, err)
	}
}

func TestAccountFormBodyAgainstAServerThatRefusesJSON(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{RefuseJSON: true})
	// With body_format=json, the config write's credentials check finds it first.
	resp, err := e.request(logical.UpdateOperation, "config", map[string]any{"api_url": e.url, "client_id": testClientID, "client_secret": testClientSecret, "body_format": "json"})
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "body_format=form") {
		t.Fatalf("want the config write refused with a 400 suggesting body_format=form, got %v %v", resp, err)
	}
	e.must(logical.UpdateOperation, "config", map[string]any{"api_url": e.url, "client_id": testClientID, "client_secret": testClientSecret, "body_format": "json", "verify_connection": false})
	resp, err = e.request(logical.UpdateOperation, "accounts/app", map[string]any{"username": testUser, "password": testPassword})
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "body_format=form") {
		t.Fatalf("want a 400 suggesting body_format=form, got %v %v", resp, err)
	}
	e.must(logical.UpdateOperation, "config", map[string]any{"body_format": "form"})
	e.createAccount("app", nil)
	if tok := e.creds("app").Data["access_token"].(string); !e.fake.AccessTokenValid(tok) {
		t.Errorf("form body: token not valid")
	}
}

// body_format=auto (the default) finds the format the server reads, at the
// config write's credentials check, remembers it, and a later process starts
// from it; no refresh token is ever sent twice.
func TestBodyFormatAutoFindsAndRemembersForm(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{RefuseJSON: true})
	e.configure()
	if got := e.must(logical.ReadOperation, "config", nil).Data["body_format_detected"]; got != "form" {
		t.Fatalf("body_format_detected after the credentials check: %v", got)
	}
	e.createAccount("app", nil)
	before := e.fake.Counters().Requests
	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	if n := e.fake.Counters().Requests - before; n != 1 {
		t.Errorf("a rotation after detection made %d requests, want 1", n)
	}
	// A new process (a restart) reads the detected format from config.
	e.restart()
	before = e.fake.Counters().Requests
	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	if n := e.fake.Counters().Requests - before; n != 1 {
		t.Errorf("a rotation after a restart made %d requests, want 1", n)
	}
	if tok := e.creds("app").Data["access_token"].(string); !e.fake.AccessTokenValid(tok) {
		t.Errorf("token not valid")
	}
	e.assertNoTokenUsedTwice()

	// Without the check, the first grant finds it, and the next periodic
	// tick records it (the refresh path never writes config: locks.go).
	e2 := newTestEnv(t, fakeermeo.Options{RefuseJSON: true})
	e2.configureUnchecked()
	e2.createAccount("app", nil)
	if got := e2.must(logical.ReadOperation, "config", nil).Data["body_format_detected"]; got != "" {
		t.Errorf("body_format_detected after the first grant, before a tick: %v", got)
	}
	e2.tick()
	if got := e2.must(logical.ReadOperation, "config", nil).Data["body_format_detected"]; got != "form" {
		t.Errorf("body_format_detected after the first grant and a tick: %v", got)
	}
	e2.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	e2.assertNoTokenUsedTwice()
	// Another connection forgets it.
	e2.must(logical.UpdateOperation, "config", map[string]any{"client_secret": testClientSecret + "x", "verify_connection": false})
	if got := e2.must(logical.ReadOperation, "config", nil).Data["body_format_detected"]; got != "" {
		t.Errorf("body_format_detected after a new secret: %v", got)
	}
}

func TestAccountAdoptsARefreshToken(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	// An operator's chain, started outside Vault.
	e.createAccount("elsewhere", nil)
	held := e.stored("elsewhere").RefreshToken
	e.must(logical.DeleteOperation, "accounts/elsewhere", nil)

	resp := e.must(logical.UpdateOperation, "accounts/app", map[string]any{"username": testUser, "refresh_token": held})
	if resp.Data["state"] != stateActive {
		t.Fatalf("adopted account: %v", resp.Data)
	}
	if e.fake.RefreshTokenLive(held) {
		t.Errorf("the adopted refresh token was not spent at once")
	}
	if tok := e.creds("app").Data["access_token"].(string); !e.fake.AccessTokenValid(tok) {
		t.Errorf("adopted account: token not valid")
	}
	// A token Ermeo refuses is a 400, and says so.
	resp, err := e.request(logical.UpdateOperation, "accounts/bad", map[string]any{"username": testUser, "refresh_token": held})
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "refresh_token") {
		t.Fatalf("adopting a used token: %v %v", resp, err)
	}
}

func TestAccountListAndDelete(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", map[string]any{"store_password": true})
	e.createAccount("batch", nil)
	resp := e.must(logical.ListOperation, "accounts/", nil)
	if fmt.Sprint(resp.Data["keys"]) != "[app batch]" {
		t.Errorf("list: %v", resp.Data["keys"])
	}
	e.must(logical.DeleteOperation, "accounts/app", nil)
	if a, _ := loadAccount(t.Context(), e.storage, "app"); a != nil {
		t.Errorf("deleted account still stored")
	}
	if pw, _ := loadPassword(t.Context(), e.storage, "app"); pw != "" {
		t.Errorf("deleted account's password still stored")
	}
	resp, err := e.request(logical.ReadOperation, "creds/app", nil)
	if err != nil || resp != nil {
		t.Errorf("creds of a deleted account: %v %v", resp, err)
	}
}

func TestEveryPathHasHelp(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	for _, p := range e.b.Paths {
		if strings.TrimSpace(p.HelpSynopsis) == "" || strings.TrimSpace(p.HelpDescription) == "" {
			t.Errorf("path %s has no help", p.Pattern)
		}
		if p.DisplayAttrs == nil || p.DisplayAttrs.OperationPrefix != operationPrefix {
			t.Errorf("path %s has no operation prefix", p.Pattern)
		}
		for op, h := range p.Operations {
			if len(h.Properties().Responses) == 0 {
				t.Errorf("path %s %s declares no responses", p.Pattern, op)
			}
		}
	}
}

func TestAccountWriteChecksTheProfileAndShowsWhoseAccountItIs(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	resp := e.must(logical.UpdateOperation, "accounts/app", map[string]any{"username": testUser, "password": testPassword})
	if resp.Data["ermeo_user_id"] != "1" || resp.Data["ermeo_email"] != testUser || resp.Data["checked_at"] == "" {
		t.Errorf("account after the profile check: %v", resp.Data)
	}
	if len(resp.Warnings) != 0 {
		t.Errorf("warnings: %v", resp.Warnings)
	}
	// Switched off: no check, nothing recorded.
	e.must(logical.UpdateOperation, "config", map[string]any{"verify_accounts": false})
	resp = e.must(logical.UpdateOperation, "accounts/other", map[string]any{"username": testUser, "password": testPassword})
	if resp.Data["ermeo_user_id"] != "" || resp.Data["checked_at"] != "" {
		t.Errorf("with verify_accounts=false: %v", resp.Data)
	}
}

func TestAccountProfileRefusalIsAWarningAndTheChainIsKept(t *testing.T) {
	fake := fakeermeo.New(fakeermeo.Options{})
	mux := http.NewServeMux()
	mux.Handle("/", fake)
	mux.HandleFunc("/api/v1/profile", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"The access token provided is invalid."}`))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	e := newTestEnv(t, fakeermeo.Options{})
	e.b.httpClient = srv.Client()
	e.must(logical.UpdateOperation, "config", map[string]any{"api_url": srv.URL, "client_id": testClientID, "client_secret": testClientSecret})
	resp := e.must(logical.UpdateOperation, "accounts/app", map[string]any{"username": testUser, "password": testPassword})
	if len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], "profile") {
		t.Fatalf("want a warning about the profile check, got %v", resp.Warnings)
	}
	if a := e.stored("app"); !fake.RefreshTokenLive(a.RefreshToken) {
		t.Errorf("the chain was not kept")
	}
}

func TestRotateAndMetricsBadInput(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	cases := []struct {
		op    logical.Operation
		path  string
		data  map[string]any
		field string
	}{
		{logical.UpdateOperation, "accounts/app/rotate", map[string]any{"force": true}, "force"},
		{logical.UpdateOperation, "accounts/a.b/rotate", nil, "name"},
		{logical.ReadOperation, "creds/a b", nil, "name"},
		{logical.ReadOperation, "accounts/-x", nil, "name"},
		{logical.DeleteOperation, "accounts/x/../y", nil, "name"},
		{logical.ReadOperation, "metrics", map[string]any{"format": "xml"}, "format"},
	}
	before := e.fake.Counters().Requests
	for _, c := range cases {
		resp, err := e.request(c.op, c.path, c.data)
		if err != nil || resp == nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), c.field) {
			t.Errorf("%s %s %v: want a 400 naming %s, got %v %v", c.op, c.path, c.data, c.field, resp, err)
		}
	}
	if e.fake.Counters().Requests != before {
		t.Errorf("bad input reached Ermeo")
	}
}
