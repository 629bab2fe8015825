package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// One Vault dev server serves every test of this package; each test mounts
// the plugin at its own path, against its own fake Ermeo.
var (
	vault      *Vault
	pluginSHA  string
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// Every plugin these tests build checks its lock order (locks.go).
	PluginBuildTags = "lockorder"
	code := runTests(m)
	if reports := LockOrderReports(); len(reports) > 0 {
		fmt.Printf("FAIL: the plugin reported %d lock-order inversions in the servers' logs:\n%s\n", len(reports), strings.Join(reports, "\n"))
		return 1
	}
	return code
}

func runTests(m *testing.M) int {
	bin, why := FindVault()
	if bin == "" {
		if os.Getenv("ERMEO_E2E_REQUIRED") != "" {
			fmt.Fprintln(os.Stderr, "e2e: required (ERMEO_E2E_REQUIRED is set) but "+why)
			return 1
		}
		skipReason = why
		return m.Run()
	}
	work, err := os.MkdirTemp("", "ermeo-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(work)
	pluginDir := work + "/plugins"
	if err := os.Mkdir(pluginDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, sha, err := BuildPlugin(pluginDir, PluginVersion)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pluginSHA = sha
	vault, err = StartDev(DevOptions{VaultBin: bin, PluginDir: pluginDir, WorkDir: work})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer vault.Stop()
	fmt.Printf("e2e: running against %s (%s), pid %d, at %s\n", vault.Version, bin, vault.Pid(), vault.Addr)
	code := m.Run()
	if code != 0 {
		fmt.Printf("--- last lines of the vault log (%s) ---\n%s\n", vault.LogPath, tail(vault.Log(), 60))
	}
	return code
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var registerOnce sync.Once
var registerErr error

// env is one test's mount and fake Ermeo.
type env struct {
	t     *testing.T
	mount string
	fake  *fakeermeo.Server
	url   string
	c     *api.Client
	// responses holds every response body the test got from Vault, to check
	// afterwards that none carries a secret.
	mu        sync.Mutex
	responses []string
}

func newEnv(t *testing.T, opts fakeermeo.Options) *env {
	t.Helper()
	return newEnvAt(t, opts, "")
}

// newEnvAt is newEnv with a suffix to the mount's path, for a test that
// mounts the plugin more than once.
func newEnvAt(t *testing.T, opts fakeermeo.Options, suffix string) *env {
	t.Helper()
	if vault == nil {
		t.Skip("e2e: " + skipReason)
	}
	registerOnce.Do(func() {
		registerErr = vault.Client.Sys().RegisterPluginWithContext(context.Background(), &api.RegisterPluginInput{
			Name: PluginName, Type: api.PluginTypeSecrets, Command: PluginName, SHA256: pluginSHA, Version: PluginVersion,
		})
	})
	if registerErr != nil {
		t.Fatalf("registering the plugin: %v", registerErr)
	}
	fake := fakeermeo.New(opts)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	mount := "ermeo-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + suffix
	err := vault.Client.Sys().Mount(mount, &api.MountInput{Type: PluginName, Config: api.MountConfigInput{PluginVersion: PluginVersion}})
	if err != nil {
		t.Fatalf("enabling the plugin: %v", err)
	}
	t.Cleanup(func() { _ = vault.Client.Sys().Unmount(mount) })
	return &env{t: t, mount: mount, fake: fake, url: srv.URL, c: vault.Client}
}

func (e *env) record(s *api.Secret) {
	if s == nil {
		return
	}
	b, _ := json.Marshal(s)
	e.mu.Lock()
	e.responses = append(e.responses, string(b))
	e.mu.Unlock()
}

func (e *env) write(path string, data map[string]any) (*api.Secret, error) {
	s, err := e.c.Logical().Write(e.mount+"/"+path, data)
	e.record(s)
	if err != nil {
		e.mu.Lock()
		e.responses = append(e.responses, err.Error())
		e.mu.Unlock()
	}
	return s, err
}

func (e *env) read(path string) (*api.Secret, error) {
	s, err := e.c.Logical().Read(e.mount + "/" + path)
	e.record(s)
	if err != nil {
		e.mu.Lock()
		e.responses = append(e.responses, err.Error())
		e.mu.Unlock()
	}
	return s, err
}

func (e *env) mustWrite(path string, data map[string]any) *api.Secret {
	e.t.Helper()
	s, err := e.write(path, data)
	if err != nil {
		e.t.Fatalf("write %s: %v", path, err)
	}
	return s
}

func (e *env) mustRead(path string) *api.Secret {
	e.t.Helper()
	s, err := e.read(path)
	if err != nil {
		e.t.Fatalf("read %s: %v", path, err)
	}
	if s == nil {
		e.t.Fatalf("read %s: nothing there", path)
	}
	return s
}

func (e *env) configure() {
	e.t.Helper()
	e.mustWrite("config", map[string]any{
		"api_url":       e.url,
		"client_id":     testClientID,
		"client_secret": testClientSecret,
	})
}

// The fake's default client and user.
const (
	testClientID     = fakeermeo.DefaultClientID
	testClientSecret = fakeermeo.DefaultClientSecret
	testUser         = fakeermeo.DefaultUsername
	testPassword     = fakeermeo.DefaultPassword
)

// statusOf returns the HTTP status of a Vault API error, or 0.
func statusOf(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

func TestWholePath(t *testing.T) {
	e := newEnv(t, fakeermeo.Options{})
	e.configure()

	cfg := e.mustRead("config")
	if cfg.Data["client_secret_set"] != true || cfg.Data["client_id"] != testClientID || cfg.Data["api_url"] != e.url {
		t.Fatalf("config read: %v", cfg.Data)
	}

	acct := e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword})
	if acct.Data["state"] != "active" || acct.Data["password_stored"] != false {
		t.Fatalf("account write: %v", acct.Data)
	}

	// The first read hands out the access token of the password grant.
	first := e.mustRead("creds/app")
	tok, _ := first.Data["access_token"].(string)
	if !e.fake.AccessTokenValid(tok) {
		t.Fatalf("creds/app returned a token the fake does not accept: %v", first.Data)
	}
	if first.Data["token_type"] != "Bearer" {
		t.Errorf("token_type = %v", first.Data["token_type"])
	}
	if first.LeaseID == "" || !first.Renewable {
		t.Errorf("want a renewable lease, got lease %q renewable %v", first.LeaseID, first.Renewable)
	}
	expiresIn, _ := first.Data["expires_in"].(json.Number).Int64()
	minTTL, _ := cfg.Data["default_min_ttl"].(json.Number).Int64()
	if int64(first.LeaseDuration) != minTTL/2 {
		t.Errorf("lease of %ds: want half of min_ttl (%ds)", first.LeaseDuration, minTTL)
	}
	t.Logf("creds/app: token of %d chars, expires_in %ds, lease %ds", len(tok), expiresIn, first.LeaseDuration)
	// vault lease renew extends it by the same step, which Vault does not
	// cut short; asked for a day, it stops half of min_ttl before the token
	// expires, and says so.
	if renewed, err := e.c.Sys().Renew(first.LeaseID, 0); err != nil || renewed.LeaseDuration != first.LeaseDuration {
		t.Errorf("vault lease renew: want a lease of %ds again, got %+v, %v", first.LeaseDuration, renewed, err)
	}
	renewed, err := e.c.Sys().Renew(first.LeaseID, 86400)
	if err != nil || renewed == nil || int64(renewed.LeaseDuration) > expiresIn-minTTL/2 || renewed.LeaseDuration <= first.LeaseDuration {
		t.Errorf("vault lease renew -increment=24h: want a lease up to %ds, got %+v, %v", expiresIn-minTTL/2, renewed, err)
	} else if !strings.Contains(strings.Join(renewed.Warnings, " "), "never past it") {
		t.Errorf("vault lease renew -increment=24h: want a warning saying where it stops, got %v", renewed.Warnings)
	} else {
		t.Logf("vault lease renew -increment=24h: lease %ds, warnings %q", renewed.LeaseDuration, renewed.Warnings)
	}

	// A second read returns the same token without calling Ermeo.
	before := e.fake.Counters()
	second := e.mustRead("creds/app")
	if second.Data["access_token"] != tok {
		t.Errorf("second read returned another token")
	}
	if after := e.fake.Counters(); after.Requests != before.Requests {
		t.Errorf("second read called Ermeo: %d requests before, %d after", before.Requests, after.Requests)
	}

	// rotate spends the refresh token; the fake then refuses the old one.
	oldRefresh := e.fake.IssuedRefreshTokens()
	if len(oldRefresh) != 1 {
		t.Fatalf("fake issued %d refresh tokens, want 1", len(oldRefresh))
	}
	rot := e.mustWrite("accounts/app/rotate", nil)
	if g, _ := rot.Data["generation"].(json.Number).Int64(); g != 2 {
		t.Errorf("generation after rotate = %v, want 2", rot.Data["generation"])
	}
	third := e.mustRead("creds/app")
	newTok, _ := third.Data["access_token"].(string)
	if newTok == tok || !e.fake.AccessTokenValid(newTok) {
		t.Errorf("after rotate, creds/app must return the new valid token")
	}
	if e.fake.RefreshTokenLive(oldRefresh[0]) {
		t.Errorf("the old refresh token is still live after rotate")
	}
	if c := e.fake.Counters(); c.RefreshTokensUsedTwice != 0 {
		t.Fatalf("refresh tokens used twice: %d", c.RefreshTokensUsedTwice)
	}
	client, err := ermeo.New(ermeo.Config{APIURL: e.url, ClientID: testClientID, ClientSecret: testClientSecret})
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.RefreshGrant(context.Background(), oldRefresh[0])
	var rejected *ermeo.RejectedError
	if !errors.As(err, &rejected) || !rejected.ChainGone() {
		t.Errorf("the fake accepted the old refresh token after rotate: %v", err)
	}

	// The account's status shows no secret, and what it says is right.
	status := e.mustRead("accounts/app")
	for _, k := range []string{"username", "state", "generation", "access_token_expires_at", "refresh_token_expires_at", "rotation_in_flight"} {
		if _, ok := status.Data[k]; !ok {
			t.Errorf("accounts/app read lacks %s: %v", k, status.Data)
		}
	}
	list, err := e.c.Logical().List(e.mount + "/accounts")
	if err != nil || list == nil || fmt.Sprint(list.Data["keys"]) != "[app]" {
		t.Errorf("list accounts: %v %v", list, err)
	}

	e.assertNoSecretReturned(testClientSecret, testPassword)
}

// TestVaultSeesTheEngineAsOperatorsExpect: its version in the mount list, help
// on every path, every path in the OpenAPI document, metrics over HTTP.
func TestVaultSeesTheEngineAsOperatorsExpect(t *testing.T) {
	e := newEnv(t, fakeermeo.Options{})
	e.configure()
	e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword})
	e.mustWrite("accounts/app/rotate", nil)

	mounts, err := e.c.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	m := mounts[e.mount+"/"]
	if m == nil || m.RunningVersion != PluginVersion || m.PluginVersion != PluginVersion || m.Type != PluginName {
		t.Errorf("mount %s: %+v", e.mount, m)
	} else {
		t.Logf("vault secrets list -detailed: %s type=%s plugin_version=%s running_plugin_version=%s running_sha256=%s",
			e.mount, m.Type, m.PluginVersion, m.RunningVersion, m.RunningSha256[:12])
	}

	info, err := e.c.Sys().GetPluginWithContext(context.Background(), &api.GetPluginInput{Name: PluginName, Type: api.PluginTypeSecrets, Version: PluginVersion})
	if err != nil || info.Version != PluginVersion || info.SHA256 != pluginSHA {
		t.Errorf("vault plugin info: %+v %v", info, err)
	}

	for _, p := range []string{"config", "accounts", "accounts/app", "accounts/app/rotate", "creds/app", "metrics"} {
		help, err := e.c.Help(e.mount + "/" + p)
		if err != nil || help == nil || len(help.Help) < 100 {
			t.Errorf("path-help %s: %v %v", p, help, err)
		}
	}

	r := e.c.NewRequest("GET", "/v1/sys/internal/specs/openapi")
	resp, err := e.c.RawRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]any `json:"paths"`
	}
	if err := resp.DecodeJSON(&doc); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, p := range []string{"/config", "/accounts/", "/accounts/{name}", "/accounts/{name}/rotate", "/creds/{name}", "/metrics"} {
		if _, ok := doc.Paths["/"+e.mount+p]; !ok {
			t.Errorf("OpenAPI lacks /%s%s", e.mount, p)
		}
	}

	// The metrics are Prometheus' text, with format=prometheus (as scrape
	// configs send it) or without; the vault CLI prints it with -format=raw.
	bodies := map[string]string{}
	for _, format := range []string{"prometheus", ""} {
		r = e.c.NewRequest("GET", "/v1/"+e.mount+"/metrics")
		if format != "" {
			r.Params.Set("format", format)
		}
		resp, err = e.c.RawRequest(r)
		if err != nil {
			t.Fatal(err)
		}
		body := new(strings.Builder)
		_, _ = io.Copy(body, resp.Body)
		resp.Body.Close()
		bodies["GET ?format="+format] = body.String()
	}
	bin, why := FindVault()
	if bin == "" {
		t.Fatal(why)
	}
	cmd := exec.Command(bin, "read", "-format=raw", e.mount+"/metrics")
	cmd.Env = append(cleanEnv(), "HOME="+t.TempDir(), "VAULT_ADDR="+vault.Addr, "VAULT_TOKEN="+vault.Token)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("vault read -format=raw %s/metrics: %v\n%s", e.mount, err, out)
	}
	bodies["vault read -format=raw"] = string(out)
	for how, body := range bodies {
		for _, want := range []string{`ermeo_refreshes_total{outcome="success"} 1`, `ermeo_refresh_token_expires_in_seconds{account="app"}`} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics (%s) lack %q:\n%s", how, want, body)
			}
		}
	}
	_, err = e.c.Logical().ReadWithData(e.mount+"/metrics", map[string][]string{"format": {"json"}})
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "vault read -format=raw "+e.mount+"/metrics") {
		t.Errorf("format=json: want a 400 naming vault read -format=raw, got %v", err)
	}
}

func TestWrongPasswordIsAClear400(t *testing.T) {
	e := newEnv(t, fakeermeo.Options{})
	e.configure()
	_, err := e.write("accounts/app", map[string]any{"username": testUser, "password": "wrong-horse"})
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "password") || !strings.Contains(err.Error(), "invalid_grant") {
		t.Fatalf("want a 400 naming the password and invalid_grant, got %v", err)
	}
	t.Logf("wrong password: %s", firstError(err))
	if s, _ := e.read("accounts/app"); s != nil {
		t.Errorf("a refused account was stored: %v", s.Data)
	}
	e.assertNoSecretReturned(testClientSecret, "wrong-horse")
}

func TestBadInputIsA400NamingTheField(t *testing.T) {
	e := newEnv(t, fakeermeo.Options{})

	// Before config exists, an account cannot be written.
	_, err := e.write("accounts/app", map[string]any{"username": testUser, "password": testPassword})
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "config") {
		t.Errorf("account before config: want a 400 naming config, got %v", err)
	}

	good := map[string]any{"api_url": e.url, "client_id": testClientID, "client_secret": testClientSecret}
	with := func(k string, v any) map[string]any {
		m := map[string]any{}
		for kk, vv := range good {
			m[kk] = vv
		}
		m[k] = v
		return m
	}
	configCases := []struct {
		name  string
		data  map[string]any
		field string
	}{
		{"api_url without scheme", with("api_url", "api.ermeo.com"), "api_url"},
		{"api_url http to a remote host", with("api_url", "http://api.ermeo.com"), "api_url"},
		{"api_url ftp", with("api_url", "ftp://api.ermeo.com"), "api_url"},
		{"api_url with user info", with("api_url", "https://u:p@api.ermeo.com"), "api_url"},
		{"api_url with fragment", with("api_url", "https://api.ermeo.com/#x"), "api_url"},
		{"body_format xml", with("body_format", "xml"), "body_format"},
		{"request_timeout negative", with("request_timeout", -1), "request_timeout"},
		{"request_timeout zero", with("request_timeout", 0), "request_timeout"},
		{"request_timeout not a duration", with("request_timeout", "soon"), "request_timeout"},
		{"default_rotation_period over 2 weeks", with("default_rotation_period", "15d"), "default_rotation_period"},
		{"unknown field", with("client_sceret", "x"), "client_sceret"},
		{"client_id empty", with("client_id", ""), "client_id"},
		{"huge client_secret", with("client_secret", strings.Repeat("x", 5000)), "client_secret"},
	}
	for _, tc := range configCases {
		_, err := e.write("config", tc.data)
		if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("config, %s: want a 400 naming %s, got %v", tc.name, tc.field, err)
		}
	}
	if s, _ := e.read("config"); s != nil {
		t.Fatalf("bad config was stored: %v", s.Data)
	}

	e.configure()
	checks := e.fake.Counters().Requests // the config write's credentials check
	acctCases := []struct {
		name, path string
		data       map[string]any
		field      string
	}{
		{"no username", "accounts/app", map[string]any{"password": testPassword}, "username"},
		{"no password", "accounts/app", map[string]any{"username": testUser}, "password"},
		{"name with a dot", "accounts/a.b", map[string]any{"username": testUser, "password": testPassword}, "name"},
		{"name with a slash", "accounts/a/b", map[string]any{"username": testUser, "password": testPassword}, "name"},
		{"min_ttl zero", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "min_ttl": 0}, "min_ttl"},
		{"min_ttl negative", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "min_ttl": "-5m"}, "min_ttl"},
		{"rotation_period over 2 weeks", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "rotation_period": "15d"}, "rotation_period"},
		{"store_password not a bool", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "store_password": "maybe"}, "store_password"},
		{"password and refresh_token", "accounts/app", map[string]any{"username": testUser, "password": testPassword, "refresh_token": "x"}, "refresh_token"},
		{"unknown field", "accounts/app", map[string]any{"username": testUser, "passwrd": testPassword}, "passwrd"},
	}
	for _, tc := range acctCases {
		_, err := e.write(tc.path, tc.data)
		if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("account, %s: want a 400 naming %s, got %v", tc.name, tc.field, err)
		}
	}
	_, err = e.read("creds/a.b")
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "name") {
		t.Errorf("creds with a bad name: want a 400 naming name, got %v", err)
	}
	if list, _ := e.c.Logical().List(e.mount + "/accounts"); list != nil {
		t.Errorf("bad input stored accounts: %v", list.Data)
	}
	if c := e.fake.Counters(); c.Requests != checks {
		t.Errorf("bad input reached Ermeo: %d requests", c.Requests-checks)
	}
	e.assertNoSecretReturned(testClientSecret, testPassword)
}

func TestStoredPasswordRebootstrapsALostChain(t *testing.T) {
	e := newEnv(t, fakeermeo.Options{AccessTokenTTL: time.Hour})
	e.configure()
	e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword, "store_password": true})
	// Someone else spends the chain: the plugin's refresh gets invalid_grant.
	stolen := e.fake.IssuedRefreshTokens()[0]
	client, _ := ermeo.New(ermeo.Config{APIURL: e.url, ClientID: testClientID, ClientSecret: testClientSecret})
	if _, err := client.RefreshGrant(context.Background(), stolen); err != nil {
		t.Fatal(err)
	}
	rot := e.mustWrite("accounts/app/rotate", nil)
	if rot.Data["state"] != "active" || rot.Data["password_stored"] != true {
		t.Fatalf("after a lost chain with a kept password: %v", rot.Data)
	}
	if c := e.fake.Counters(); c.Grants["password"]["success"] != 2 {
		t.Errorf("want a second password grant, got %v", c.Grants)
	}
	tok := e.mustRead("creds/app").Data["access_token"].(string)
	if !e.fake.AccessTokenValid(tok) {
		t.Errorf("token after re-bootstrap not valid")
	}
	e.assertNoSecretReturned(testClientSecret, testPassword)
}

func TestLostChainWithoutPasswordNamesTheCommand(t *testing.T) {
	e := newEnv(t, fakeermeo.Options{AccessTokenTTL: time.Hour})
	e.configure()
	e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword})
	stolen := e.fake.IssuedRefreshTokens()[0]
	client, _ := ermeo.New(ermeo.Config{APIURL: e.url, ClientID: testClientID, ClientSecret: testClientSecret})
	if _, err := client.RefreshGrant(context.Background(), stolen); err != nil {
		t.Fatal(err)
	}
	_, err := e.write("accounts/app/rotate", nil)
	want := "vault write " + e.mount + "/accounts/app password="
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("want an error naming %q, got %v", want, err)
	}
	st := e.mustRead("accounts/app")
	if st.Data["state"] != "needs_reauth" {
		t.Errorf("state = %v", st.Data["state"])
	}
	// The last access token still has life: it is served, with a warning.
	s := e.mustRead("creds/app")
	if !e.fake.AccessTokenValid(s.Data["access_token"].(string)) {
		t.Errorf("creds after a lost chain: want the last valid token")
	}
	// Writing the password again restarts the chain.
	e.mustWrite("accounts/app", map[string]any{"password": testPassword})
	if st := e.mustRead("accounts/app"); st.Data["state"] != "active" {
		t.Errorf("state after re-auth = %v", st.Data["state"])
	}
	e.assertNoSecretReturned(testClientSecret, testPassword)
}

func firstError(err error) string {
	var re *api.ResponseError
	if errors.As(err, &re) && len(re.Errors) > 0 {
		return re.Errors[0]
	}
	return err.Error()
}

// assertNoSecretReturned checks every response the test got for the given
// secrets and for every refresh token the fake ever issued.
func (e *env) assertNoSecretReturned(secrets ...string) {
	e.t.Helper()
	secrets = append(secrets, e.fake.IssuedRefreshTokens()...)
	e.mu.Lock()
	defer e.mu.Unlock()
	found := 0
	for _, r := range e.responses {
		for _, s := range secrets {
			if strings.Contains(r, s) {
				found++
				e.t.Errorf("a response carries a secret (%d chars)", len(s))
			}
		}
	}
	e.t.Logf("searched %d responses for %d secrets: %d found", len(e.responses), len(secrets), found)
}
