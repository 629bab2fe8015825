package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// TestLeakNoSecretInLogsAuditOrResponses drives every path of the plugin,
// failures and recoveries included, in a vault server of its own that logs
// at trace level and writes a file audit log, and then searches the audit
// log, the server log (which holds the plugin's log lines) and every raw
// response body for the client secret, the passwords, every refresh token
// the fake Ermeo ever issued, and each secret it sent with a wrong JSON type
// (a list, an object, a number).
func TestLeakNoSecretInLogsAuditOrResponses(t *testing.T) {
	bin, why := FindVault()
	if bin == "" {
		t.Skip("leak test: " + why)
	}
	work := t.TempDir()
	pluginDir := filepath.Join(work, "plugins")
	if err := os.Mkdir(pluginDir, 0o755); err != nil {
		t.Fatal(err)
	}
	const version = "v0.1.0-leak"
	_, sha, err := BuildPlugin(pluginDir, version)
	if err != nil {
		t.Fatal(err)
	}
	v, err := StartDev(DevOptions{VaultBin: bin, PluginDir: pluginDir, WorkDir: work, LogLevel: "trace"})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	defer func() {
		if t.Failed() {
			t.Logf("last lines of the leak test's vault log:\n%s", tail(v.Log(), 40))
		}
	}()
	t.Logf("leak test: %s, pid %d, log %s", v.Version, v.Pid(), v.LogPath)

	// Every byte Vault answers goes through rec.
	rec := &leakRecorder{}
	c := leakClient(t, v, rec)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	auditPath := filepath.Join(work, "audit.log")
	if err := c.Sys().EnableAuditWithOptions("file", &api.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": auditPath},
	}); err != nil {
		t.Fatalf("enabling the file audit device: %v", err)
	}
	if err := v.RegisterAndMount(ctx, sha, version, "ermeo"); err != nil {
		t.Fatal(err)
	}

	// Recognisable secrets, all different, none a substring of another.
	var (
		clientID     = "9_leak" + randomHex(8)
		clientSecret = "leakcs" + randomHex(16)
		wrongSecret  = "leakwcs" + randomHex(16)
		passwordKept = "leakpwkept" + randomHex(12)
		passwordOnce = "leakpwonce" + randomHex(12)
		wrongPass    = "leakpwwrong" + randomHex(12)
		userKept     = "kept@example.com"
		userOnce     = "once@example.com"
	)
	fake := fakeermeo.New(fakeermeo.Options{
		ClientID: clientID, ClientSecret: clientSecret,
		Users:          map[string]string{userKept: passwordKept, userOnce: passwordOnce},
		AccessTokenTTL: 30 * time.Second,
	})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	upstream, err := ermeo.New(ermeo.Config{APIURL: srv.URL, ClientID: clientID, ClientSecret: clientSecret})
	if err != nil {
		t.Fatal(err)
	}

	s := &leakSession{t: t, c: c, rec: rec}
	// spend uses the newest refresh token behind the plugin's back, as
	// another holder of the chain would.
	spend := func(what string) {
		t.Helper()
		issued := fake.IssuedRefreshTokens()
		if _, err := upstream.RefreshGrant(ctx, issued[len(issued)-1]); err != nil {
			t.Fatalf("spending %s's refresh token behind the plugin's back: %v", what, err)
		}
	}

	// Config, with the client secret; accounts with and without a kept
	// password; each rotate below refreshes a chain.
	s.mustWrite("ermeo/config", map[string]any{
		"api_url": srv.URL, "client_id": clientID, "client_secret": clientSecret,
		"default_min_ttl": "10s", "request_timeout": "10s",
	})
	s.mustWrite("ermeo/accounts/kept", map[string]any{
		"username": userKept, "password": passwordKept, "store_password": true, "min_ttl": "15s",
	})
	s.mustWrite("ermeo/accounts/once", map[string]any{"username": userOnce, "password": passwordOnce})
	for range 3 {
		s.mustRead("ermeo/creds/kept")
		s.mustRead("ermeo/creds/once")
		s.mustWrite("ermeo/accounts/kept/rotate", nil)
	}
	s.mustWrite("ermeo/accounts/kept/rotate", nil)
	s.mustWrite("ermeo/accounts/once/rotate", nil)

	// A wrong password, and a refresh_token adopted instead of a password.
	if _, err := s.write("ermeo/accounts/wrong", map[string]any{"username": userOnce, "password": wrongPass}); statusOf(err) != http.StatusBadRequest {
		t.Errorf("a wrong password: want a 400, got %v", err)
	}
	adopt, err := upstream.PasswordGrant(ctx, userOnce, passwordOnce)
	if err != nil {
		t.Fatal(err)
	}
	s.mustWrite("ermeo/accounts/adopted", map[string]any{"username": userOnce, "refresh_token": adopt.RefreshToken})
	s.mustRead("ermeo/creds/adopted")

	// A failed rotation: Ermeo answers 503 once; the next rotation resolves it.
	fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: http.StatusServiceUnavailable, Grant: "refresh_token", Times: 1})
	if _, err := s.write("ermeo/accounts/once/rotate", nil); err == nil {
		t.Error("rotate during a 503: want an error")
	}
	s.mustRead("ermeo/accounts/once")
	s.mustRead("ermeo/creds/once")
	s.mustWrite("ermeo/accounts/once/rotate", nil)

	// A wrong client secret: Ermeo rejects the client, the refresh token
	// stays unspent; then the right one again.
	s.mustWrite("ermeo/config", map[string]any{"client_secret": wrongSecret, "verify_connection": false})
	if _, err := s.write("ermeo/accounts/kept/rotate", nil); err == nil {
		t.Error("rotate with a wrong client secret: want an error")
	}
	s.mustRead("ermeo/accounts/kept")
	s.mustWrite("ermeo/config", map[string]any{"client_secret": clientSecret})

	// A lost chain without a kept password: needs_reauth, and the error
	// names the command to run.
	s.mustWrite("ermeo/accounts/once/rotate", nil)
	spend("once")
	_, err = s.write("ermeo/accounts/once/rotate", nil)
	if want := "vault write ermeo/accounts/once password="; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("rotate of a lost chain: want an error naming %q, got %v", want, err)
	}
	if st := s.mustRead("ermeo/accounts/once"); st.Data["state"] != "needs_reauth" {
		t.Errorf("once after its chain was lost: state %v", st.Data["state"])
	}
	s.read("ermeo/creds/once") // the last token, with a warning, or the error
	s.mustWrite("ermeo/accounts/once", map[string]any{"password": passwordOnce})

	// A lost chain with a kept password: the plugin starts a new one itself.
	s.mustWrite("ermeo/accounts/kept/rotate", nil)
	spend("kept")
	if st := s.mustWrite("ermeo/accounts/kept/rotate", nil); st.Data["state"] != "active" {
		t.Errorf("kept after its chain was lost: state %v", st.Data["state"])
	}
	s.mustRead("ermeo/creds/kept")

	// Status reads, list, help of every path, and a delete.
	s.mustRead("ermeo/config")
	for _, name := range []string{"kept", "once", "adopted"} {
		s.mustRead("ermeo/accounts/" + name)
		s.mustRead("ermeo/creds/" + name)
	}
	if _, err := c.Logical().ListWithContext(ctx, "ermeo/accounts"); err != nil {
		t.Errorf("list: %v", err)
	}
	for _, p := range []string{"config", "accounts", "accounts/kept", "accounts/kept/rotate", "creds/kept", "creds/x"} {
		req := c.NewRequest(http.MethodGet, "/v1/ermeo/"+p)
		req.Params.Set("help", "1")
		resp, err := c.RawRequestWithContext(ctx, req)
		if err != nil {
			t.Errorf("help of %s: %v", p, err)
			continue
		}
		resp.Body.Close()
	}
	s.mustWrite("ermeo/accounts/adopted/rotate", nil)
	if _, err := c.Logical().DeleteWithContext(ctx, "ermeo/accounts/adopted"); err != nil {
		t.Errorf("delete: %v", err)
	}

	// Every secret field with the wrong JSON type (a list, an object, a
	// number), on a create (Vault runs the existence check first) and on an
	// update: refused, and echoed nowhere. On an account of its own, since a
	// write that is wrongly taken may spend its chain; the client secret is
	// written again afterwards.
	s.mustWrite("ermeo/accounts/typed", map[string]any{"username": userOnce, "password": passwordOnce})
	wrongTyped := map[string]string{}
	wrongTypedRefused := 0
	for _, shape := range wrongShapes {
		for _, w := range []struct {
			what, path, field string
			base              map[string]any
		}{
			{"create", "ermeo/accounts/typed-new-password-" + shape, "password", map[string]any{"username": userOnce}},
			{"create", "ermeo/accounts/typed-new-refresh-" + shape, "refresh_token", map[string]any{"username": userOnce}},
			{"update", "ermeo/accounts/typed", "password", nil},
			{"update", "ermeo/accounts/typed", "refresh_token", nil},
			{"update", "ermeo/config", "client_secret", nil},
		} {
			value, secret := wronglyTyped(shape)
			wrongTyped[fmt.Sprintf("%s as a %s (%s of %s)", w.field, shape, w.what, w.path)] = secret
			data := map[string]any{w.field: value}
			for k, v := range w.base {
				data[k] = v
			}
			if _, err := s.write(w.path, data); statusOf(err) == http.StatusBadRequest {
				wrongTypedRefused++
			}
		}
	}
	s.mustWrite("ermeo/config", map[string]any{"client_secret": clientSecret})

	// The scenario did what it says: the plugin logged its rotations, lost
	// chains and recovery, and the fake issued the tokens searched for.
	refresh := fake.IssuedRefreshTokens()
	counters := fake.Counters()
	// The fake counts the plugin's refresh with each of the two tokens
	// spent behind its back as a second use: two, and no more.
	if counters.RefreshTokensUsedTwice != 2 {
		t.Errorf("refresh tokens used twice: %d, want the 2 spent behind the plugin's back", counters.RefreshTokensUsedTwice)
	}
	if len(refresh) < 10 {
		t.Fatalf("the fake issued %d refresh tokens; the scenario should cause at least 10 (grants: %v)", len(refresh), counters.Grants)
	}
	for _, tok := range refresh {
		if len(tok) < 16 {
			t.Fatalf("the fake issued a refresh token of %d chars: too short to search for", len(tok))
		}
	}
	serverLog := v.Log()
	audit, err := os.ReadFile(auditPath)
	if err != nil {
		t.Fatalf("reading the audit log: %v", err)
	}
	if len(serverLog) == 0 || len(audit) == 0 {
		t.Fatalf("empty logs: server log %d bytes, audit log %d bytes", len(serverLog), len(audit))
	}
	for _, msg := range []string{"rotated refresh chain", "refresh chain is gone", "started a new refresh chain with the kept password", "refresh outcome unknown"} {
		if !strings.Contains(serverLog, msg) {
			t.Errorf("the server log has no plugin line %q: the plugin's log does not reach it", msg)
		}
	}
	// The audit log saw the secret-bearing requests, with their secrets hashed.
	for _, field := range []string{`"client_secret":"hmac-sha256:`, `"password":"hmac-sha256:`, `"refresh_token":"hmac-sha256:`} {
		if !bytes.Contains(audit, []byte(field)) {
			t.Errorf("the audit log has no %s...: the secret-bearing requests were not audited", field)
		}
	}
	// The responses are raw and complete: they hold the access tokens handed out.
	responses := rec.bodies()
	access := fake.IssuedAccessTokens()
	if !containsAny(responses, access) {
		t.Fatalf("no response holds an access token the fake issued: the responses were not captured")
	}

	// The search.
	secrets := map[string]string{
		"client secret":         clientSecret,
		"wrong client secret":   wrongSecret,
		"kept password":         passwordKept,
		"password used once":    passwordOnce,
		"wrong password":        wrongPass,
		"adopted refresh token": adopt.RefreshToken,
	}
	for i, tok := range refresh {
		secrets[fmt.Sprintf("refresh token #%d", i+1)] = tok
	}
	for what, secret := range wrongTyped {
		secrets["wrongly typed "+what] = secret
	}
	haystacks := []leakHaystack{
		{name: "audit log " + auditPath, text: string(audit)},
		{name: "server log " + v.LogPath, text: serverLog},
	}
	files := len(haystacks)
	for i, r := range responses {
		haystacks = append(haystacks, leakHaystack{name: fmt.Sprintf("response #%d (%s)", i+1, r.what), text: r.body})
	}
	var searched int
	found := 0
	for _, h := range haystacks {
		searched += len(h.text)
		for what, secret := range secrets {
			if n := strings.Count(h.text, secret); n > 0 {
				found += n
				t.Errorf("LEAK: the %s appears %d times in %s; first at: %s", what, n, h.name, maskedLine(h.text, secret))
			}
		}
	}
	// Access tokens are handed out by creds, by design, but never logged.
	accessInLogs := 0
	for _, h := range haystacks[:files] {
		for _, tok := range access {
			if n := strings.Count(h.text, tok); n > 0 {
				accessInLogs += n
				t.Errorf("LEAK: an access token appears %d times in %s; first at: %s", n, h.name, maskedLine(h.text, tok))
			}
		}
	}
	summary := fmt.Sprintf("leak test: searched %d files + %d responses (%d bytes) for %d secret values (2 client secrets, 3 passwords, %d refresh tokens, %d wrongly typed secrets of which %d got a 400): %d found; and the %d logs for %d access tokens: %d found",
		files, len(responses), searched, len(secrets), len(refresh), len(wrongTyped), wrongTypedRefused, found, files, len(access), accessInLogs)
	t.Log(summary)
	fmt.Println(summary)
	t.Logf("leak test: fake grants %v", counters.Grants)
}

// leakSession drives the plugin and keeps every error text it got.
type leakSession struct {
	t   *testing.T
	c   *api.Client
	rec *leakRecorder
}

func (s *leakSession) write(path string, data map[string]any) (*api.Secret, error) {
	sec, err := s.c.Logical().Write(path, data)
	if err != nil {
		s.rec.add("error of write "+path, err.Error())
	}
	return sec, err
}

func (s *leakSession) read(path string) (*api.Secret, error) {
	sec, err := s.c.Logical().Read(path)
	if err != nil {
		s.rec.add("error of read "+path, err.Error())
	}
	return sec, err
}

func (s *leakSession) mustWrite(path string, data map[string]any) *api.Secret {
	s.t.Helper()
	sec, err := s.write(path, data)
	if err != nil {
		s.t.Fatalf("write %s: %v", path, err)
	}
	if sec == nil {
		return &api.Secret{}
	}
	return sec
}

func (s *leakSession) mustRead(path string) *api.Secret {
	s.t.Helper()
	sec, err := s.read(path)
	if err != nil || sec == nil {
		s.t.Fatalf("read %s: %v %v", path, sec, err)
	}
	return sec
}

// leakRecorder is an http.RoundTripper that keeps every response body, raw.
type leakRecorder struct {
	base http.RoundTripper
	mu   sync.Mutex
	got  []leakResponse
}

type leakResponse struct{ what, body string }

func (r *leakRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	what := req.Method + " " + req.URL.RequestURI()
	if err != nil {
		r.add("transport error of "+what, err.Error())
		return resp, err
	}
	body, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	r.add(fmt.Sprintf("%s -> %d", what, resp.StatusCode), string(body))
	if rerr != nil {
		return nil, rerr
	}
	return resp, nil
}

func (r *leakRecorder) add(what, body string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, leakResponse{what, body})
}

func (r *leakRecorder) bodies() []leakResponse {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]leakResponse(nil), r.got...)
}

// leakClient is a client of v whose every response goes through rec.
func leakClient(t *testing.T, v *Vault, rec *leakRecorder) *api.Client {
	t.Helper()
	conf := api.DefaultConfig()
	if conf.Error != nil {
		t.Fatal(conf.Error)
	}
	conf.Address = v.Addr
	conf.MaxRetries = 0
	rec.base = conf.HttpClient.Transport
	conf.HttpClient.Transport = rec
	c, err := api.NewClient(conf)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(v.Token)
	c.SetNamespace("")
	return c
}

type leakHaystack struct{ name, text string }

func containsAny(rs []leakResponse, values []string) bool {
	for _, r := range rs {
		for _, v := range values {
			if v != "" && strings.Contains(r.body, v) {
				return true
			}
		}
	}
	return false
}

// maskedLine returns the first line of text holding secret, with the secret
// masked and the line cut to a readable length.
func maskedLine(text, secret string) string {
	i := strings.Index(text, secret)
	if i < 0 {
		return ""
	}
	start := strings.LastIndexByte(text[:i], '\n') + 1
	end := strings.IndexByte(text[i:], '\n')
	if end < 0 {
		end = len(text)
	} else {
		end += i
	}
	line := strings.ReplaceAll(text[start:end], secret, "<SECRET:"+fmt.Sprint(len(secret))+" chars>")
	if len(line) > 600 {
		line = line[:600] + "..."
	}
	return fmt.Sprintf("line %d: %s", strings.Count(text[:start], "\n")+1, line)
}
