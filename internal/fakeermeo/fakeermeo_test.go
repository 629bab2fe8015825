package fakeermeo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

const vectorsPath = "../../../shared/ermeo-vectors.json"

type fixture struct {
	s     *Server
	ts    *httptest.Server
	clock *Clock
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	clock := NewClock(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC))
	if opts.Now == nil {
		opts.Now = clock.Now
	}
	s := New(opts)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	t.Cleanup(s.ReleaseHeld) // runs before ts.Close: never leave a request held
	return &fixture{s, ts, clock}
}

// reply is a decoded answer of the fake.
type reply struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (r reply) str(key string) string {
	s, _ := r.body[key].(string)
	return s
}

// send sends a request and returns the reply or the transport error.
func (f *fixture) send(ctx context.Context, method, path, contentType string, body []byte, header map[string]string) (reply, error) {
	req, err := http.NewRequestWithContext(ctx, method, f.ts.URL+path, bytes.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := f.ts.Client().Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	r := reply{status: resp.StatusCode, header: resp.Header, raw: raw}
	json.Unmarshal(raw, &r.body)
	return r, nil
}

func (f *fixture) mustSend(t *testing.T, method, path, contentType string, body []byte, header map[string]string) reply {
	t.Helper()
	r, err := f.send(context.Background(), method, path, contentType, body, header)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// tokenJSON posts fields as a JSON body to the token endpoint.
func (f *fixture) tokenJSON(t *testing.T, fields map[string]string) reply {
	t.Helper()
	body, _ := json.Marshal(fields)
	return f.mustSend(t, "POST", TokenPath, "application/json", body, nil)
}

// tokenForm posts fields as a form body to the token endpoint.
func (f *fixture) tokenForm(t *testing.T, fields map[string]string, header map[string]string) reply {
	t.Helper()
	return f.mustSend(t, "POST", TokenPath, "application/x-www-form-urlencoded", []byte(form(fields)), header)
}

func form(fields map[string]string) string {
	v := url.Values{}
	for k, s := range fields {
		v.Set(k, s)
	}
	return v.Encode()
}

func passwordFields() map[string]string {
	return map[string]string{
		"grant_type":    "password",
		"client_id":     DefaultClientID,
		"client_secret": DefaultClientSecret,
		"username":      DefaultUsername,
		"password":      DefaultPassword,
	}
}

func refreshFields(tok string) map[string]string {
	return map[string]string{
		"grant_type":    "refresh_token",
		"client_id":     DefaultClientID,
		"client_secret": DefaultClientSecret,
		"refresh_token": tok,
	}
}

// login runs a password grant and returns the access and refresh tokens.
func (f *fixture) login(t *testing.T) (access, refresh string) {
	t.Helper()
	r := f.tokenJSON(t, passwordFields())
	if r.status != 200 {
		t.Fatalf("password grant: %d %s", r.status, r.raw)
	}
	return r.str("access_token"), r.str("refresh_token")
}

// refresh runs a refresh grant that must succeed.
func (f *fixture) refresh(t *testing.T, tok string) (access, refresh string) {
	t.Helper()
	r := f.tokenJSON(t, refreshFields(tok))
	if r.status != 200 {
		t.Fatalf("refresh grant: %d %s", r.status, r.raw)
	}
	return r.str("access_token"), r.str("refresh_token")
}

func (f *fixture) profile(t *testing.T, authorization string) reply {
	t.Helper()
	return f.mustSend(t, "GET", ProfilePath, "", nil, map[string]string{"Authorization": authorization})
}

func isToken(s string) bool {
	if len(s) != 86 {
		return false
	}
	for _, c := range s {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

func wantError(t *testing.T, r reply, status int, code, description string) {
	t.Helper()
	if r.status != status || r.str("error") != code || r.str("error_description") != description {
		t.Fatalf("got %d %s, want %d %s %q", r.status, r.raw, status, code, description)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// ---- the recorded vectors ----

type vectorFile struct {
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	Vectors      []struct {
		Case    string `json:"case"`
		Request struct {
			Method      string            `json:"method"`
			Path        string            `json:"path"`
			ContentType string            `json:"content_type"`
			Body        map[string]any    `json:"body"`
			Headers     map[string]string `json:"headers"`
		} `json:"request"`
		Status  int               `json:"status"`
		Headers map[string]string `json:"headers"`
		Body    map[string]any    `json:"body"`
	} `json:"vectors"`
}

func TestVectors(t *testing.T) {
	data, err := os.ReadFile(vectorsPath)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s not found", vectorsPath)
	}
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(data, &vf); err != nil {
		t.Fatal(err)
	}
	if vf.ClientID != DefaultClientID || vf.ClientSecret != DefaultClientSecret {
		t.Fatalf("the default client credentials differ from the vectors'")
	}
	if len(vf.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range vf.Vectors {
		t.Run(v.Case, func(t *testing.T) {
			f := newFixture(t, Options{}) // a fresh fake: vectors do not depend on each other

			// Recorded token values (86 characters) stand for real tokens.
			body := map[string]any{}
			for k, val := range v.Request.Body {
				body[k] = val
			}
			if tok, ok := body["refresh_token"].(string); ok && len(tok) == 86 {
				_, rt := f.login(t)
				if strings.Contains(v.Case, "used") {
					f.refresh(t, rt) // consume it first
				}
				body["refresh_token"] = rt
			}
			header := map[string]string{}
			for k, val := range v.Request.Headers {
				if strings.HasPrefix(val, "Bearer ") && len(val) == len("Bearer ")+86 {
					at, _ := f.login(t)
					val = "Bearer " + at
				}
				header[k] = val
			}

			var raw []byte
			switch v.Request.ContentType {
			case "application/json":
				raw, _ = json.Marshal(body)
			case "application/x-www-form-urlencoded":
				fields := map[string]string{}
				for k, val := range body {
					fields[k] = val.(string)
				}
				raw = []byte(form(fields))
			}
			r := f.mustSend(t, v.Request.Method, v.Request.Path, v.Request.ContentType, raw, header)

			if r.status != v.Status {
				t.Errorf("status %d, want %d (%s)", r.status, v.Status, r.raw)
			}
			for k, want := range v.Headers {
				if got := r.header.Get(k); got != want {
					t.Errorf("header %s: %q, want %q", k, got, want)
				}
			}
			if _, listed := v.Headers["www-authenticate"]; !listed && r.header.Get("WWW-Authenticate") != "" {
				t.Errorf("unexpected WWW-Authenticate: %q", r.header.Get("WWW-Authenticate"))
			}
			if len(r.body) != len(v.Body) {
				t.Errorf("body %s, want the fields of %v", r.raw, v.Body)
			}
			for k, want := range v.Body {
				got, ok := r.body[k]
				if !ok {
					t.Errorf("body field %s missing: %s", k, r.raw)
					continue
				}
				if want == "<86-char token>" {
					if s, _ := got.(string); !isToken(s) {
						t.Errorf("body field %s = %v, want an 86-character token", k, got)
					}
					continue
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("body field %s = %#v, want %#v", k, got, want)
				}
			}
		})
	}
}

// ---- tokens and rotation ----

func TestTokenShape(t *testing.T) {
	f := newFixture(t, Options{})
	seen := map[string]bool{}
	for range 5 {
		r := f.tokenJSON(t, passwordFields())
		for _, k := range []string{"access_token", "refresh_token"} {
			tok := r.str(k)
			if !isToken(tok) {
				t.Fatalf("%s %q is not 86 letters and digits", k, tok)
			}
			if seen[tok] {
				t.Fatalf("token issued twice: %q", tok)
			}
			seen[tok] = true
		}
		if !bytes.Contains(r.raw, []byte(`"expires_in":7200,`)) {
			t.Fatalf("expires_in is not the number 7200: %s", r.raw)
		}
		if r.str("token_type") != "bearer" || r.str("scope") != "user" {
			t.Fatalf("body %s", r.raw)
		}
	}
	if n := len(f.s.IssuedAccessTokens()) + len(f.s.IssuedRefreshTokens()); n != 10 {
		t.Fatalf("%d tokens recorded, want 10", n)
	}

	f = newFixture(t, Options{AccessTokenTTL: time.Minute})
	if r := f.tokenJSON(t, passwordFields()); !bytes.Contains(r.raw, []byte(`"expires_in":60,`)) {
		t.Fatalf("expires_in with a 1-minute TTL: %s", r.raw)
	}

	// AccessTokenBytes: a long access token, valid as any other; the
	// refresh token keeps Ermeo's shape.
	f = newFixture(t, Options{AccessTokenBytes: 16 << 10})
	r := f.tokenJSON(t, passwordFields())
	if at := r.str("access_token"); len(at) != 16<<10 || strings.Trim(at, tokenAlphabet) != "" || !f.s.AccessTokenValid(at) {
		t.Fatalf("access token of %d chars with AccessTokenBytes 16384", len(at))
	}
	if !isToken(r.str("refresh_token")) {
		t.Fatalf("refresh token %q is not 86 letters and digits", r.str("refresh_token"))
	}
}

func TestRefreshTokenWorksOnce(t *testing.T) {
	f := newFixture(t, Options{})
	at1, rt1 := f.login(t)
	at2, rt2 := f.refresh(t, rt1)

	if f.s.RefreshTokenLive(rt1) || !f.s.RefreshTokenLive(rt2) {
		t.Fatal("a refresh must consume the old refresh token and issue a live one")
	}
	if !f.s.AccessTokenValid(at1) || !f.s.AccessTokenValid(at2) {
		t.Fatal("old and new access tokens must both stay valid")
	}
	if r := f.profile(t, "Bearer "+at1); r.status != 200 {
		t.Fatalf("old access token after a refresh: %d %s", r.status, r.raw)
	}

	for i := 1; i <= 2; i++ {
		r := f.tokenJSON(t, refreshFields(rt1))
		wantError(t, r, 400, "invalid_grant", "Invalid refresh token")
		if got := f.s.Counters().RefreshTokensUsedTwice; got != i {
			t.Fatalf("RefreshTokensUsedTwice = %d, want %d", got, i)
		}
	}
	// An unknown token is not a replay.
	wantError(t, f.tokenJSON(t, refreshFields("nope")), 400, "invalid_grant", "Invalid refresh token")
	if got := f.s.Counters().RefreshTokensUsedTwice; got != 2 {
		t.Fatalf("RefreshTokensUsedTwice = %d after an unknown token, want 2", got)
	}

	// The replays did not hurt the new pair, and a password grant revokes nothing.
	_, rt3 := f.refresh(t, rt2)
	_, rt4 := f.login(t)
	if !f.s.RefreshTokenLive(rt3) || !f.s.RefreshTokenLive(rt4) {
		t.Fatal("a password grant must not revoke the other chain")
	}
	c := f.s.Counters()
	if c.LiveRefreshTokens != 2 || c.Requests != 7 {
		t.Fatalf("counters %+v", c)
	}
	want := map[string]map[string]int{
		"password":      {"success": 2},
		"refresh_token": {"success": 2, "invalid_grant": 3},
	}
	if !reflect.DeepEqual(c.Grants, want) {
		t.Fatalf("Grants = %v, want %v", c.Grants, want)
	}
}

func TestExpiry(t *testing.T) {
	f := newFixture(t, Options{})
	at, rt1 := f.login(t)
	_, rt2 := f.login(t)

	if exp, ok := f.s.AccessTokenExpiresAt(at); !ok || !exp.Equal(f.clock.Now().Add(DefaultAccessTokenTTL)) {
		t.Fatalf("AccessTokenExpiresAt = %v %v, want %v", exp, ok, f.clock.Now().Add(DefaultAccessTokenTTL))
	}
	if _, ok := f.s.AccessTokenExpiresAt("never-issued"); ok {
		t.Fatal("AccessTokenExpiresAt of a token never issued")
	}
	f.clock.Advance(DefaultAccessTokenTTL)
	if r := f.profile(t, "Bearer "+at); r.status != 200 {
		t.Fatalf("access token at its expiry instant: %d %s", r.status, r.raw)
	}
	f.clock.Advance(time.Second)
	r := f.profile(t, "Bearer "+at)
	wantError(t, r, 401, "invalid_grant", "The access token provided has expired.")
	if got, want := r.header.Get("WWW-Authenticate"), `Bearer realm="Service", error="invalid_grant", error_description="The access token provided has expired."`; got != want {
		t.Fatalf("WWW-Authenticate %q, want %q", got, want)
	}
	if f.s.AccessTokenValid(at) {
		t.Fatal("AccessTokenValid after expiry")
	}

	f.clock.Advance(DefaultRefreshTokenTTL - DefaultAccessTokenTTL - time.Second) // now exactly at the refresh tokens' expiry
	if !f.s.RefreshTokenLive(rt1) {
		t.Fatal("refresh token not live at its expiry instant")
	}
	_, rt3 := f.refresh(t, rt1)
	f.clock.Advance(time.Second)
	wantError(t, f.tokenJSON(t, refreshFields(rt2)), 400, "invalid_grant", "Refresh token has expired")
	if f.s.RefreshTokenLive(rt2) || !f.s.RefreshTokenLive(rt3) {
		t.Fatal("RefreshTokenLive wrong after expiry")
	}
	if c := f.s.Counters(); c.LiveRefreshTokens != 1 {
		t.Fatalf("LiveRefreshTokens = %d, want 1", c.LiveRefreshTokens)
	}
	// A consumed token stays "invalid", even once expired.
	wantError(t, f.tokenJSON(t, refreshFields(rt1)), 400, "invalid_grant", "Invalid refresh token")
}

// ---- request formats ----

func TestBodyFormats(t *testing.T) {
	f := newFixture(t, Options{})
	if r := f.tokenForm(t, passwordFields(), nil); r.status != 200 || !isToken(r.str("refresh_token")) {
		t.Fatalf("form body: %d %s", r.status, r.raw)
	}
	if r := f.mustSend(t, "POST", TokenPath, "application/json; charset=utf-8", []byte(`{"grant_type":"password"`), nil); r.status != 400 {
		t.Fatalf("malformed JSON: %d %s", r.status, r.raw)
	}

	refusing := newFixture(t, Options{RefuseJSON: true})
	wantError(t, refusing.tokenJSON(t, passwordFields()), 400, "invalid_request", "Invalid grant_type parameter or parameter missing")
	if r := refusing.tokenForm(t, passwordFields(), nil); r.status != 200 {
		t.Fatalf("form body with RefuseJSON: %d %s", r.status, r.raw)
	}
}

// TestScope checks the library's scope check: only "user" (every word of
// the request) is supported, and the check runs after the grant's own checks
// and before any token is created or consumed.
func TestScope(t *testing.T) {
	f := newFixture(t, Options{})
	withScope := func(fields map[string]string, scope string) map[string]string {
		fields["scope"] = scope
		return fields
	}
	for _, scope := range []string{"admin", "user admin", "User", "users", "user\tuser"} {
		t.Run(fmt.Sprintf("password grant, scope %q", scope), func(t *testing.T) {
			before := len(f.s.IssuedRefreshTokens())
			wantError(t, f.tokenJSON(t, withScope(passwordFields(), scope)), 400, "invalid_scope", "An unsupported scope was requested.")
			wantError(t, f.tokenForm(t, withScope(passwordFields(), scope), nil), 400, "invalid_scope", "An unsupported scope was requested.")
			if len(f.s.IssuedRefreshTokens()) != before {
				t.Fatal("a grant refused for its scope issued tokens")
			}
		})
	}
	for _, tt := range []struct{ scope, answered string }{
		{"user", "user"},
		{"", "user"}, // an empty field is no field
		{"user user", "user user"},
	} {
		t.Run(fmt.Sprintf("password grant, scope %q", tt.scope), func(t *testing.T) {
			r := f.tokenJSON(t, withScope(passwordFields(), tt.scope))
			if r.status != 200 || r.str("scope") != tt.answered {
				t.Fatalf("got %d %s, want 200 with scope %q", r.status, r.raw, tt.answered)
			}
		})
	}
	t.Run("password grant, no scope", func(t *testing.T) {
		if r := f.tokenJSON(t, passwordFields()); r.status != 200 || r.str("scope") != "user" {
			t.Fatalf("got %d %s", r.status, r.raw)
		}
	})

	t.Run("refresh grant", func(t *testing.T) {
		_, rt := f.login(t)
		wantError(t, f.tokenJSON(t, withScope(refreshFields(rt), "admin")), 400, "invalid_scope", "An unsupported scope was requested.")
		if !f.s.RefreshTokenLive(rt) {
			t.Fatal("a refresh refused for its scope consumed the refresh token")
		}
		r := f.tokenJSON(t, withScope(refreshFields(rt), "user"))
		if r.status != 200 || r.str("scope") != "user" || f.s.RefreshTokenLive(rt) {
			t.Fatalf("refresh with scope user: %d %s", r.status, r.raw)
		}
		f.refresh(t, r.str("refresh_token")) // and without a scope
	})

	t.Run("the grant's own checks come first", func(t *testing.T) {
		fields := withScope(passwordFields(), "admin")
		fields["password"] = "wrong"
		wantError(t, f.tokenJSON(t, fields), 400, "invalid_grant", "Invalid username and password combination")
		wantError(t, f.tokenJSON(t, withScope(refreshFields("nope"), "admin")), 400, "invalid_grant", "Invalid refresh token")
		fields = withScope(passwordFields(), "admin")
		fields["client_secret"] = "wrong"
		wantError(t, f.tokenJSON(t, fields), 400, "invalid_client", "The client credentials are invalid")
	})

	c := f.s.Counters()
	if c.Grants["password"]["invalid_scope"] != 10 || c.Grants["refresh_token"]["invalid_scope"] != 1 {
		t.Fatalf("invalid_scope counts: %v", c.Grants)
	}
}

// TestRepeatedFieldTakesLastValue checks PHP's reading of a repeated field
// in a form body or a query string: the last value wins, and a last value
// that is empty makes the field empty.
func TestRepeatedFieldTakesLastValue(t *testing.T) {
	f := newFixture(t, Options{})
	_, rt := f.login(t)
	client := "client_id=" + url.QueryEscape(DefaultClientID) + "&client_secret=" + url.QueryEscape(DefaultClientSecret)
	user := "&username=" + url.QueryEscape(DefaultUsername)
	post := func(body string) reply {
		return f.mustSend(t, "POST", TokenPath, "application/x-www-form-urlencoded", []byte(body), nil)
	}
	tests := []struct {
		name, body string
		status     int
		code, desc string
	}{
		{"password, right one last", "grant_type=password&" + client + user + "&password=wrong&password=" + DefaultPassword, 200, "", ""},
		{"password, wrong one last", "grant_type=password&" + client + user + "&password=" + DefaultPassword + "&password=wrong", 400,
			"invalid_grant", "Invalid username and password combination"},
		{"password, empty one last", "grant_type=password&" + client + user + "&password=" + DefaultPassword + "&password=", 400,
			"invalid_request", `Missing parameters. "username" and "password" required`},
		{"grant_type", "grant_type=refresh_token&grant_type=password&" + client + user + "&password=" + DefaultPassword, 200, "", ""},
		{"client_secret", "grant_type=password&" + client + "&client_secret=wrong" + user + "&password=" + DefaultPassword, 400,
			"invalid_client", "The client credentials are invalid"},
		{"refresh_token", "grant_type=refresh_token&" + client + "&refresh_token=nope&refresh_token=" + rt, 200, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := post(tt.body)
			if tt.status == 200 {
				if r.status != 200 || !isToken(r.str("refresh_token")) {
					t.Fatalf("got %d %s, want 200", r.status, r.raw)
				}
				return
			}
			wantError(t, r, tt.status, tt.code, tt.desc)
		})
	}
	t.Run("JSON body", func(t *testing.T) {
		body := `{"grant_type":"password","client_id":"` + DefaultClientID + `","client_secret":"` + DefaultClientSecret +
			`","username":"` + DefaultUsername + `","password":"wrong","password":"` + DefaultPassword + `"}`
		if r := f.mustSend(t, "POST", TokenPath, "application/json", []byte(body), nil); r.status != 200 {
			t.Fatalf("got %d %s, want 200", r.status, r.raw)
		}
	})
	t.Run("query string of a GET", func(t *testing.T) {
		r := f.mustSend(t, "GET", TokenPath+"?grant_type=password&"+client+user+"&password=wrong&password="+DefaultPassword, "", nil, nil)
		if r.status != 200 {
			t.Fatalf("got %d %s, want 200", r.status, r.raw)
		}
	})
}

func TestBasicAuth(t *testing.T) {
	f := newFixture(t, Options{})
	basic := func(id, secret string) map[string]string {
		req, _ := http.NewRequest("POST", "/", nil)
		req.SetBasicAuth(id, secret)
		return map[string]string{"Authorization": req.Header.Get("Authorization")}
	}
	noClient := passwordFields()
	delete(noClient, "client_id")
	delete(noClient, "client_secret")

	if r := f.tokenForm(t, noClient, basic(DefaultClientID, DefaultClientSecret)); r.status != 200 {
		t.Fatalf("Basic auth: %d %s", r.status, r.raw)
	}
	// Basic auth is checked before the body.
	wantError(t, f.tokenForm(t, passwordFields(), basic(DefaultClientID, "wrong")), 400, "invalid_client", "The client credentials are invalid")
	// An empty Basic user means no Basic credentials: the body's are used.
	if r := f.tokenForm(t, passwordFields(), basic("", "x")); r.status != 200 {
		t.Fatalf("empty Basic user: %d %s", r.status, r.raw)
	}
	wantError(t, f.tokenForm(t, noClient, nil), 400, "invalid_client", "Client id was not found in the headers or body")
}

func TestGrantTypes(t *testing.T) {
	f := newFixture(t, Options{AllowedGrants: []string{"password"}})
	_, rt := f.login(t)
	wantError(t, f.tokenJSON(t, refreshFields(rt)), 400, "unauthorized_client", "The grant type is unauthorized for this client_id")

	f = newFixture(t, Options{AllowedGrants: []string{"password", "refresh_token", "client_credentials"}})
	fields := passwordFields()
	fields["grant_type"] = "client_credentials"
	r := f.tokenJSON(t, fields)
	if r.status != 400 || r.str("error") != "unsupported_grant_type" || !bytes.Contains(r.raw, []byte(`"error_description":null`)) {
		t.Fatalf("unsupported grant: %d %s", r.status, r.raw)
	}
	if got := f.s.Counters().Grants["other"]["unsupported_grant_type"]; got != 1 {
		t.Fatalf("other/unsupported_grant_type = %d", got)
	}
}

func TestUsers(t *testing.T) {
	f := newFixture(t, Options{})
	f.s.SetUserPassword(DefaultUsername, "new-horse")
	wantError(t, f.tokenJSON(t, passwordFields()), 400, "invalid_grant", "Invalid username and password combination")
	fields := passwordFields()
	fields["password"] = "new-horse"
	if r := f.tokenJSON(t, fields); r.status != 200 {
		t.Fatalf("changed password: %d %s", r.status, r.raw)
	}

	f.s.SetUserPassword("bob@example.com", "pw")
	fields = passwordFields()
	fields["username"], fields["password"] = "bob@example.com", "pw"
	r := f.tokenJSON(t, fields)
	p := f.profile(t, "Bearer "+r.str("access_token"))
	if p.status != 200 || p.body["id"] != 2.0 || p.str("email") != "bob@example.com" {
		t.Fatalf("profile of a second user: %d %s", p.status, p.raw)
	}
}

func TestProfileTokenPlacement(t *testing.T) {
	f := newFixture(t, Options{})
	at, _ := f.login(t)
	tests := []struct {
		name, path, authorization string
		status                    int
		code, description         string
	}{
		{"header", ProfilePath, "Bearer " + at, 200, "", ""},
		{"query", ProfilePath + "?access_token=" + at, "", 200, "", ""},
		{"lowercase bearer", ProfilePath, "bearer " + at, 401, "access_denied", "OAuth2 authentication required"},
		{"empty bearer", ProfilePath, "Bearer ", 401, "access_denied", "OAuth2 authentication required"},
		{"basic", ProfilePath, "Basic Zm9vOmJhcg==", 401, "access_denied", "OAuth2 authentication required"},
		{"two ways", ProfilePath + "?access_token=" + at, "Bearer " + at, 400, "invalid_request",
			"Only one method may be used to authenticate at a time (Auth header, GET or POST)."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			header := map[string]string{}
			if tt.authorization != "" {
				header["Authorization"] = tt.authorization
			}
			r := f.mustSend(t, "GET", tt.path, "", nil, header)
			if tt.status == 200 {
				if r.status != 200 || r.body["id"] != 1.0 || r.str("email") != DefaultUsername {
					t.Fatalf("got %d %s", r.status, r.raw)
				}
				return
			}
			wantError(t, r, tt.status, tt.code, tt.description)
			if tt.status == 400 && !strings.Contains(r.header.Get("WWW-Authenticate"), `error="invalid_request"`) {
				t.Fatalf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
		})
	}
}

// TestProfileWithoutToken checks the entry point's 401 for each way of
// sending no usable Bearer token: the same answer, headers included, as the
// vector "profile without token".
func TestProfileWithoutToken(t *testing.T) {
	f := newFixture(t, Options{})
	at, _ := f.login(t)
	wantHeader := map[string]string{
		"WWW-Authenticate": `Bearer realm="Service", error="access_denied", error_description="OAuth2 authentication required"`,
		"Content-Type":     "application/json",
		"Cache-Control":    "no-store, private",
		"Pragma":           "no-cache",
	}
	for _, tt := range []struct {
		name   string
		header map[string]string
	}{
		{"no Authorization header", nil},
		{"lowercase bearer", map[string]string{"Authorization": "bearer " + at}},
		{"Basic scheme", map[string]string{"Authorization": "Basic Zm9vOmJhcg=="}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := f.mustSend(t, "GET", ProfilePath, "", nil, tt.header)
			if r.status != http.StatusUnauthorized {
				t.Errorf("status %d, want 401 (%s)", r.status, r.raw)
			}
			for k, want := range wantHeader {
				if got := r.header.Values(k); len(got) != 1 || got[0] != want {
					t.Errorf("header %s: %q, want [%q]", k, got, want)
				}
			}
			if got, want := string(bytes.TrimSpace(r.raw)), `{"error":"access_denied","error_description":"OAuth2 authentication required"}`; got != want {
				t.Errorf("body %s, want %s", got, want)
			}
		})
	}
}

func TestCountersEndpoint(t *testing.T) {
	f := newFixture(t, Options{})
	_, rt := f.login(t)
	f.refresh(t, rt)
	f.tokenJSON(t, refreshFields(rt))
	f.tokenJSON(t, map[string]string{"grant_type": "foo"})

	r := f.mustSend(t, "GET", CountersPath, "", nil, nil)
	if r.status != 200 || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("counters: %d %s", r.status, r.raw)
	}
	var got Counters
	if err := json.Unmarshal(r.raw, &got); err != nil {
		t.Fatal(err)
	}
	want := Counters{
		Grants: map[string]map[string]int{
			"password":      {"success": 1},
			"refresh_token": {"success": 1, "invalid_grant": 1},
			"other":         {"invalid_request": 1},
		},
		RefreshTokensUsedTwice: 1,
		DistinctTokensReplayed: 1,
		LiveRefreshTokens:      1,
		Requests:               4,
	}
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(f.s.Counters(), want) {
		t.Fatalf("counters %+v, Counters() %+v, want %+v", got, f.s.Counters(), want)
	}
	// Counters returns a copy.
	f.s.Counters().Grants["password"]["success"] = 99
	if f.s.Counters().Grants["password"]["success"] != 1 {
		t.Fatal("Counters is not a deep copy")
	}
}

func TestConcurrentRefreshes(t *testing.T) {
	f := newFixture(t, Options{})
	_, rt := f.login(t)
	const n = 16
	statuses := make(chan int, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			body, _ := json.Marshal(refreshFields(rt))
			r, err := f.send(context.Background(), "POST", TokenPath, "application/json", body, nil)
			if err != nil {
				t.Error(err)
				return
			}
			statuses <- r.status
		}()
	}
	close(start)
	wg.Wait()
	close(statuses)
	ok := 0
	for s := range statuses {
		if s == 200 {
			ok++
		}
	}
	if ok != 1 {
		t.Fatalf("%d concurrent refreshes with one token succeeded, want 1", ok)
	}
	c := f.s.Counters()
	if c.RefreshTokensUsedTwice != n-1 || c.LiveRefreshTokens != 1 || c.Grants["refresh_token"]["invalid_grant"] != n-1 {
		t.Fatalf("counters %+v", c)
	}
}

// concurrentRefreshes sends n refresh grants presenting tok at once and
// returns their replies.
func (f *fixture) concurrentRefreshes(t *testing.T, tok string, n int) []reply {
	t.Helper()
	body, _ := json.Marshal(refreshFields(tok))
	replies := make([]reply, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, err := f.send(context.Background(), "POST", TokenPath, "application/json", body, nil)
			if err != nil {
				t.Error(err)
			}
			replies[i] = r
		}()
	}
	close(start)
	wg.Wait()
	return replies
}

// TestNonAtomicRefresh checks Options.NonAtomicRefresh: two concurrent
// refreshes presenting one token both succeed, as with the library, where by
// default only one does; both are counted as concurrent presentations.
func TestNonAtomicRefresh(t *testing.T) {
	t.Run("NonAtomicRefresh", func(t *testing.T) {
		f := newFixture(t, Options{NonAtomicRefresh: true})
		_, rt := f.login(t)
		// Each refresh waits in its window until the other is there too
		// (or 5 s): both have passed the check before either commits.
		var mu sync.Mutex
		arrived, both := 0, make(chan struct{})
		f.s.mu.Lock()
		f.s.inWindow = func() {
			mu.Lock()
			if arrived++; arrived == 2 {
				close(both)
			}
			mu.Unlock()
			select {
			case <-both:
			case <-time.After(5 * time.Second):
			}
		}
		f.s.mu.Unlock()

		replies := f.concurrentRefreshes(t, rt, 2)
		for i, r := range replies {
			if r.status != 200 || !f.s.RefreshTokenLive(r.str("refresh_token")) || !f.s.AccessTokenValid(r.str("access_token")) {
				t.Fatalf("refresh %d: %d %s, want 200 with a live pair", i, r.status, r.raw)
			}
		}
		if replies[0].str("refresh_token") == replies[1].str("refresh_token") {
			t.Fatal("both refreshes got the same refresh token")
		}
		if f.s.RefreshTokenLive(rt) {
			t.Fatal("the presented refresh token is still live")
		}
		c := f.s.Counters()
		if c.Grants["refresh_token"]["success"] != 2 || c.ConcurrentRefreshesOfOneToken != 1 ||
			c.RefreshTokensUsedTwice != 0 || c.LiveRefreshTokens != 2 {
			t.Fatalf("counters %+v", c)
		}
		// Once consumed, the token is refused like any used one.
		wantError(t, f.tokenJSON(t, refreshFields(rt)), 400, "invalid_grant", "Invalid refresh token")
		if c := f.s.Counters(); c.RefreshTokensUsedTwice != 1 || f.s.RefreshTokenPresentations()[rt] != 3 {
			t.Fatalf("after a replay: counters %+v, presentations %d", c, f.s.RefreshTokenPresentations()[rt])
		}
		// A refresh without a rival waits its window and succeeds.
		f.s.mu.Lock()
		f.s.inWindow = nil
		f.s.mu.Unlock()
		start := time.Now()
		f.refresh(t, replies[0].str("refresh_token"))
		if elapsed := time.Since(start); elapsed < NonAtomicRefreshWindow {
			t.Fatalf("answered after %v, want at least the window %v", elapsed, NonAtomicRefreshWindow)
		}
	})

	t.Run("default", func(t *testing.T) {
		f := newFixture(t, Options{})
		_, rt := f.login(t)
		ok := 0
		for _, r := range f.concurrentRefreshes(t, rt, 2) {
			switch {
			case r.status == 200:
				ok++
			default:
				wantError(t, r, 400, "invalid_grant", "Invalid refresh token")
			}
		}
		if ok != 1 {
			t.Fatalf("%d of 2 concurrent refreshes succeeded, want 1", ok)
		}
		if c := f.s.Counters(); c.LiveRefreshTokens != 1 {
			t.Fatalf("counters %+v", c)
		}
	})
}

// TestConcurrentPresentationsCounted checks that a refresh presenting a token
// while another request presenting it is in flight is counted, and that
// sequential presentations are not.
func TestConcurrentPresentationsCounted(t *testing.T) {
	f := newFixture(t, Options{})
	_, rt1 := f.login(t)
	_, rt2 := f.refresh(t, rt1)
	f.tokenJSON(t, refreshFields(rt1)) // a replay, not concurrent
	if c := f.s.Counters(); c.ConcurrentRefreshesOfOneToken != 0 {
		t.Fatalf("sequential presentations counted as concurrent: %+v", c)
	}

	// The first refresh is held in flight, after its commit.
	f.s.InjectFault(Fault{Kind: FaultHold, Grant: "refresh_token", Times: 1})
	body, _ := json.Marshal(refreshFields(rt2))
	done := make(chan reply, 1)
	go func() {
		r, err := f.send(context.Background(), "POST", TokenPath, "application/json", body, nil)
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	waitFor(t, "the refresh to be held", func() bool { return f.s.Held() == 1 })
	wantError(t, f.tokenJSON(t, refreshFields(rt2)), 400, "invalid_grant", "Invalid refresh token")
	f.s.ReleaseHeld()
	if r := <-done; r.status != 200 {
		t.Fatalf("held refresh: %d %s", r.status, r.raw)
	}
	c := f.s.Counters()
	if c.ConcurrentRefreshesOfOneToken != 1 {
		t.Fatalf("ConcurrentRefreshesOfOneToken = %d, want 1", c.ConcurrentRefreshesOfOneToken)
	}
	p := f.s.RefreshTokenPresentations()
	if p[rt1] != 2 || p[rt2] != 2 || len(p) != 2 {
		t.Fatalf("presentations %v", p)
	}
}

// ---- faults ----

// TestFaultsNotProcessed checks the kinds of fault that answer without
// processing the grant: the refresh token stays live and works afterwards.
func TestFaultsNotProcessed(t *testing.T) {
	tests := []struct {
		fault   Fault
		outcome string
		check   func(t *testing.T, r reply, err error)
	}{
		{Fault{Kind: FaultStatus, Status: 503}, "fault_status", func(t *testing.T, r reply, err error) {
			if err != nil || r.status != 503 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") || !bytes.Contains(r.raw, []byte("<html>")) {
				t.Fatalf("got %v %d %q %s", err, r.status, r.header.Get("Content-Type"), r.raw)
			}
		}},
		{Fault{Kind: FaultStatus}, "fault_status", func(t *testing.T, r reply, err error) {
			if err != nil || r.status != 502 {
				t.Fatalf("got %v %d, want the default 502", err, r.status)
			}
		}},
		{Fault{Kind: FaultTooManyRequests, RetryAfter: "7"}, "fault_too_many_requests", func(t *testing.T, r reply, err error) {
			if err != nil || r.status != 429 || r.header.Get("Retry-After") != "7" {
				t.Fatalf("got %v %d %v", err, r.status, r.header)
			}
		}},
		{Fault{Kind: FaultTooManyRequests}, "fault_too_many_requests", func(t *testing.T, r reply, err error) {
			if err != nil || r.status != 429 || r.header.Values("Retry-After") != nil {
				t.Fatalf("got %v %d %v", err, r.status, r.header)
			}
		}},
		{Fault{Kind: FaultNonJSON}, "fault_non_json", func(t *testing.T, r reply, err error) {
			if err != nil || r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") ||
				!bytes.HasPrefix(r.raw, []byte("<html>")) || json.Valid(r.raw) {
				t.Fatalf("got %v %d %q %s", err, r.status, r.header.Get("Content-Type"), r.raw)
			}
		}},
		{Fault{Kind: FaultReset}, "fault_reset", func(t *testing.T, r reply, err error) {
			if err == nil {
				t.Fatalf("got an answer %d %s, want a transport error", r.status, r.raw)
			}
			t.Logf("client saw: %v", err)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.fault.Kind.String(), func(t *testing.T) {
			f := newFixture(t, Options{})
			_, rt := f.login(t)
			tt.fault.Grant, tt.fault.Times = "refresh_token", 1
			f.s.InjectFault(tt.fault)

			body, _ := json.Marshal(refreshFields(rt))
			r, err := f.send(context.Background(), "POST", TokenPath, "application/json", body, nil)
			tt.check(t, r, err)

			if !f.s.RefreshTokenLive(rt) || len(f.s.IssuedRefreshTokens()) != 1 {
				t.Fatal("a faulted request was processed")
			}
			c := f.s.Counters()
			if c.Grants["refresh_token"][tt.outcome] != 1 || c.Requests != 2 {
				t.Fatalf("counters %+v, want refresh_token/%s = 1", c, tt.outcome)
			}
			f.refresh(t, rt) // the fault is used up and the token still works
		})
	}
}

func TestFaultLostAfterCommit(t *testing.T) {
	f := newFixture(t, Options{})
	_, rt := f.login(t)
	f.s.InjectFault(Fault{Kind: FaultLostAfterCommit, Grant: "refresh_token", Times: 1})

	body, _ := json.Marshal(refreshFields(rt))
	r, err := f.send(context.Background(), "POST", TokenPath, "application/json", body, nil)
	if err == nil {
		t.Fatalf("got an answer %d %s, want a transport error", r.status, r.raw)
	}
	t.Logf("client saw: %v", err)

	issued := f.s.IssuedRefreshTokens()
	if len(issued) != 2 || f.s.RefreshTokenLive(rt) || !f.s.RefreshTokenLive(issued[1]) {
		t.Fatal("the grant was not committed")
	}
	c := f.s.Counters()
	if c.LiveRefreshTokens != 1 || c.Grants["refresh_token"]["success"] != 1 || c.AnswersDropped != 1 {
		t.Fatalf("counters %+v", c)
	}
	// A client retrying with the old token learns that the chain is lost.
	wantError(t, f.tokenJSON(t, refreshFields(rt)), 400, "invalid_grant", "Invalid refresh token")
	if c := f.s.Counters(); c.RefreshTokensUsedTwice != 0 || c.ReplaysAfterLostAnswer != 1 {
		t.Fatalf("a retry after a lost answer: RefreshTokensUsedTwice = %d (want 0), ReplaysAfterLostAnswer = %d (want 1)",
			c.RefreshTokensUsedTwice, c.ReplaysAfterLostAnswer)
	}
	// Once the answer of a refresh was delivered, the old token's reuse is a
	// token used twice.
	f.refresh(t, issued[1])
	wantError(t, f.tokenJSON(t, refreshFields(issued[1])), 400, "invalid_grant", "Invalid refresh token")
	if c := f.s.Counters(); c.RefreshTokensUsedTwice != 1 {
		t.Fatalf("RefreshTokensUsedTwice = %d, want 1", c.RefreshTokensUsedTwice)
	}
}

func TestFaultDelay(t *testing.T) {
	f := newFixture(t, Options{})
	f.s.InjectFault(Fault{Kind: FaultDelay, Delay: 20 * time.Millisecond, Times: 1})
	start := time.Now()
	f.login(t)
	if elapsed := time.Since(start); elapsed < 20*time.Millisecond {
		t.Fatalf("answered after %v, want at least 20ms", elapsed)
	}

	// A client that gives up during the delay: the grant is not processed.
	_, rt := f.login(t)
	f.s.InjectFault(Fault{Kind: FaultDelay, Delay: time.Minute, Times: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	body, _ := json.Marshal(refreshFields(rt))
	if _, err := f.send(ctx, "POST", TokenPath, "application/json", body, nil); err == nil {
		t.Fatal("want a timeout")
	}
	waitFor(t, "the delayed request to end", func() bool {
		return f.s.Counters().Grants["refresh_token"]["fault_delay"] == 1
	})
	if !f.s.RefreshTokenLive(rt) {
		t.Fatal("an abandoned delayed request was processed")
	}
}

func TestFaultHold(t *testing.T) {
	f := newFixture(t, Options{})
	_, rt := f.login(t)
	f.s.InjectFault(Fault{Kind: FaultHold, Grant: "refresh_token", Times: 2})

	type result struct {
		r   reply
		err error
	}
	body, _ := json.Marshal(refreshFields(rt))
	done := make(chan result, 1)
	go func() {
		r, err := f.send(context.Background(), "POST", TokenPath, "application/json", body, nil)
		done <- result{r, err}
	}()
	waitFor(t, "the request to be held", func() bool { return f.s.Held() == 1 })
	if f.s.RefreshTokenLive(rt) || f.s.Counters().LiveRefreshTokens != 1 {
		t.Fatal("the grant is not committed while held")
	}
	select {
	case <-done:
		t.Fatal("answered while held")
	default:
	}
	f.s.ReleaseHeld()
	res := <-done
	if res.err != nil || res.r.status != 200 || !f.s.RefreshTokenLive(res.r.str("refresh_token")) {
		t.Fatalf("after release: %v %d %s", res.err, res.r.status, res.r.raw)
	}
	if f.s.Held() != 0 {
		t.Fatalf("Held() = %d after release", f.s.Held())
	}

	// A held request whose client gives up is dropped, still committed.
	rt2 := res.r.str("refresh_token")
	ctx, cancel := context.WithCancel(context.Background())
	body, _ = json.Marshal(refreshFields(rt2))
	go func() {
		r, err := f.send(ctx, "POST", TokenPath, "application/json", body, nil)
		done <- result{r, err}
	}()
	waitFor(t, "the request to be held", func() bool { return f.s.Held() == 1 })
	cancel()
	if res := <-done; res.err == nil {
		t.Fatalf("got an answer %d after cancelling", res.r.status)
	}
	waitFor(t, "the held request to end", func() bool { return f.s.Held() == 0 })
	if f.s.RefreshTokenLive(rt2) || f.s.Counters().LiveRefreshTokens != 1 {
		t.Fatal("the dropped held grant was not committed")
	}
}

func TestFaultTimesOrderAndClear(t *testing.T) {
	f := newFixture(t, Options{})
	f.s.InjectFault(Fault{Kind: FaultStatus, Status: 503, Times: 2})
	f.s.InjectFault(Fault{Kind: FaultNonJSON, Times: 1})
	for i, want := range []struct {
		status int
		json   bool
	}{{503, false}, {503, false}, {200, false}, {200, true}} {
		r := f.tokenJSON(t, passwordFields())
		if r.status != want.status || json.Valid(r.raw) != want.json {
			t.Fatalf("request %d: %d %s", i, r.status, r.raw)
		}
	}

	// Grant-specific and unlimited faults, until ClearFaults.
	f.s.InjectFault(Fault{Kind: FaultStatus, Status: 500, Grant: "refresh_token"})
	_, rt := f.login(t)
	for range 3 {
		if r := f.tokenJSON(t, refreshFields(rt)); r.status != 500 {
			t.Fatalf("got %d, want 500", r.status)
		}
	}
	f.s.ClearFaults()
	f.refresh(t, rt)

	// Faults apply only to POST /oauth/v2/token.
	f.s.InjectFault(Fault{Kind: FaultStatus, Status: 500})
	at := f.s.IssuedAccessTokens()[0]
	if r := f.profile(t, "Bearer "+at); r.status != 200 {
		t.Fatalf("profile with a fault injected: %d", r.status)
	}
	if r := f.mustSend(t, "GET", TokenPath+"?"+form(passwordFields()), "", nil, nil); r.status != 200 {
		t.Fatalf("GET token request with a fault injected: %d %s", r.status, r.raw)
	}
}

// TestTokenRequests: each token request is recorded with its client's
// address, the token it presented, what it issued, its outcome, its fault
// and whether an answer was delivered.
func TestTokenRequests(t *testing.T) {
	f := newFixture(t, Options{})
	_, rt1 := f.login(t)
	_, rt2 := f.refresh(t, rt1)
	wantError(t, f.tokenJSON(t, refreshFields(rt1)), 400, "invalid_grant", "Invalid refresh token")
	f.s.InjectFault(Fault{Kind: FaultLostAfterCommit, Grant: "refresh_token", Times: 1})
	body, _ := json.Marshal(refreshFields(rt2))
	if _, err := f.send(context.Background(), "POST", TokenPath, "application/json", body, nil); err == nil {
		t.Fatal("want the connection dropped")
	}
	f.s.InjectFault(Fault{Kind: FaultStatus, Status: 503, Times: 1})
	f.tokenJSON(t, passwordFields())

	// A dropped connection's handler may still be returning.
	var reqs []TokenRequest
	waitFor(t, "every request's handling to end", func() bool {
		reqs = f.s.TokenRequests()
		for _, r := range reqs {
			if r.Ended.IsZero() {
				return false
			}
		}
		return true
	})
	if len(reqs) != 5 {
		t.Fatalf("%d requests recorded, want 5: %+v", len(reqs), reqs)
	}
	type want struct {
		grant, presented, outcome, fault string
		issued, replay, delivered        bool
	}
	wants := []want{
		{"password", "", "success", "", true, false, true},
		{"refresh_token", rt1, "success", "", true, false, true},
		{"refresh_token", rt1, "invalid_grant", "", false, true, true},
		{"refresh_token", rt2, "success", "lost_after_commit", true, false, false},
		{"password", "", "fault_status", "status", false, false, true},
	}
	for i, w := range wants {
		r := reqs[i]
		got := want{r.GrantType, r.Presented, r.Outcome, r.Fault, r.Issued != "", r.Replay, r.Delivered}
		if got != w {
			t.Errorf("request %d: %+v, want %+v", i, got, w)
		}
		if r.RemoteAddr == "" || r.Received.IsZero() || r.Ended.Before(r.Received) {
			t.Errorf("request %d: address %q, received %v, ended %v", i, r.RemoteAddr, r.Received, r.Ended)
		}
	}
	if reqs[1].Issued != rt2 {
		t.Errorf("the refresh issued %q, the client got %q", reqs[1].Issued, rt2)
	}
}
