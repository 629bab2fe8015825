package ermeosecrets

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The operator's edge: every write an operator can get wrong. Each test
// here failed before its fix (issue 11's defects 1 to 8).

// snapshot returns every storage key and its bytes.
func snapshot(t testing.TB, s logical.Storage) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(prefix string)
	walk = func(prefix string) {
		keys, err := s.List(context.Background(), prefix)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if strings.HasSuffix(k, "/") {
				walk(prefix + k)
				continue
			}
			e, err := s.Get(context.Background(), prefix+k)
			if err != nil || e == nil {
				t.Fatalf("get %s: %v", prefix+k, err)
			}
			out[prefix+k] = string(e.Value)
		}
	}
	walk("")
	return out
}

// assertSameStorage fails unless storage holds exactly what before held.
func assertSameStorage(t testing.TB, what string, before, after map[string]string) {
	t.Helper()
	var diffs []string
	for k, v := range before {
		if after[k] != v {
			diffs = append(diffs, k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			diffs = append(diffs, k+" (new)")
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("%s changed storage: %v", what, diffs)
	}
}

// errText is the message a client sees of a request's failure, or "".
func errText(resp *logical.Response, err error) string {
	switch {
	case err != nil:
		return err.Error()
	case resp != nil && resp.IsError():
		return resp.Error().Error()
	}
	return ""
}

func codeOf(err error) int {
	var coded logical.HTTPCodedError
	if errors.As(err, &coded) {
		return coded.Code()
	}
	return 0
}

// Defect 1: a refused refresh_token write destroyed a working account.
func TestRefusedRefreshTokenWriteKeepsTheWorkingChain(t *testing.T) {
	cases := []struct {
		name   string
		token  string
		fault  *fakeermeo.Fault
		status int
		want   string
	}{
		{"invalid_grant", "garbage", nil, 400, "refresh_token: Ermeo refused it"},
		{"5xx", "", &fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: 503}, 502, "may now be spent"},
		{"answer lost after commit", "", &fakeermeo.Fault{Kind: fakeermeo.FaultLostAfterCommit}, 502, "may now be spent"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newTestEnv(t, fakeermeo.Options{})
			e.configure()
			e.createAccount("app", map[string]any{"store_password": true})
			first := e.creds("app").Data["access_token"]
			due, _ := e.b.store.queue.PopByKey("app")
			e.b.store.schedule("app", e.stored("app"))
			before := snapshot(t, e.storage)
			token := c.token
			if token == "" {
				// A live token of another chain, which the fault then loses.
				e.createAccount("other", nil)
				token = e.stored("other").RefreshToken
				e.must(logical.DeleteOperation, "accounts/other", nil)
				before = snapshot(t, e.storage)
			}
			if c.fault != nil {
				f := *c.fault
				f.Grant, f.Times = "refresh_token", 1
				e.fake.InjectFault(f)
			}
			grantsBefore := e.fake.Counters().Grants["password"]["success"]
			resp, err := e.request(logical.UpdateOperation, "accounts/app", map[string]any{"refresh_token": token})
			msg := errText(resp, err)
			if !strings.Contains(msg, c.want) {
				t.Fatalf("want an error containing %q, got %q", c.want, msg)
			}
			if got := codeOf(err); c.status == 502 && got != 502 {
				t.Errorf("status %d, want 502", got)
			}
			if c.status == 400 && (resp == nil || !resp.IsError()) {
				t.Errorf("want a 400, got %v %v", resp, err)
			}
			assertSameStorage(t, "a failed adoption", before, snapshot(t, e.storage))
			if got := e.creds("app").Data["access_token"]; got != first {
				t.Errorf("the account no longer serves its token: %v", got)
			}
			if now, _ := e.b.store.queue.PopByKey("app"); now == nil || due == nil || now.Priority != due.Priority {
				t.Errorf("the keep-alive schedule moved: %v -> %v", due, now)
			}
			if e.fake.Counters().Grants["password"]["success"] != grantsBefore {
				t.Errorf("a failed adoption ran a password grant")
			}
			e.assertNoTokenUsedTwice()
		})
	}
}

// Defect 2: a secret sent with the wrong JSON type was echoed by Vault's
// field conversion error.
func TestWronglyTypedSecretIsNamedNeverQuoted(t *testing.T) {
	const secret = "S3CRET-VALUE-never-shown"
	shapes := map[string]any{
		"list":   []any{secret},
		"object": map[string]any{"a": secret},
		"number": json.Number("12345678987654321"),
	}
	fields := []struct{ path, field string }{
		{"config", "client_secret"},
		{"accounts/app", "password"},
		{"accounts/app", "refresh_token"},
		{"accounts/new", "password"},
		{"accounts/new", "refresh_token"},
	}
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	before := snapshot(t, e.storage)
	requests := e.fake.Counters().Requests
	for _, f := range fields {
		for shape, v := range shapes {
			data := map[string]any{f.field: v}
			if f.path == "accounts/new" {
				data["username"] = testUser
			}
			// Vault runs the existence check first; its error would be
			// logged by Vault's core with the value.
			req := &logical.Request{Operation: logical.UpdateOperation, Path: f.path, Data: data, Storage: e.storage, MountPoint: testMount}
			if _, _, err := e.b.HandleExistenceCheck(context.Background(), req); err != nil {
				t.Errorf("%s %s as a %s: existence check failed: %v", f.path, f.field, shape, err)
			}
			resp, err := e.request(logical.UpdateOperation, f.path, data)
			msg := errText(resp, err)
			if err != nil || resp == nil || !resp.IsError() || !strings.Contains(msg, f.field+": must be a string") {
				t.Errorf("%s %s as a %s: want a 400 naming the field, got %q", f.path, f.field, shape, msg)
			}
			if strings.Contains(msg, secret) || strings.Contains(msg, "12345678987654321") {
				t.Errorf("%s %s as a %s: the value is in the error: %q", f.path, f.field, shape, msg)
			}
		}
	}
	assertSameStorage(t, "wrongly typed secrets", before, snapshot(t, e.storage))
	if got := e.fake.Counters().Requests; got != requests {
		t.Errorf("wrongly typed secrets reached Ermeo: %d requests", got-requests)
	}
}

// Defect 3: trailing newlines were stored; control characters accepted.
func TestCredentialsLoseATrailingLineEndingAndRefuseControlCharacters(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	resp := e.must(logical.UpdateOperation, "config", map[string]any{"api_url": e.url + "\n", "client_id": testClientID + "\r\n", "client_secret": testClientSecret + "\n"})
	if resp == nil || !strings.Contains(strings.Join(resp.Warnings, " "), "client_id, client_secret") {
		t.Errorf("want a warning naming the trimmed fields, got %v", resp)
	}
	if c, _ := loadConfig(t.Context(), e.storage); c.ClientSecret != testClientSecret || c.ClientID != testClientID || c.APIURL != e.url {
		t.Fatalf("stored %q %q %q", c.APIURL, c.ClientID, c.ClientSecret)
	}
	resp = e.must(logical.UpdateOperation, "accounts/app", map[string]any{"username": testUser + "\n", "password": testPassword + "\r\n"})
	if !strings.Contains(strings.Join(resp.Warnings, " "), "username, password") {
		t.Errorf("want a warning naming username and password, got %v", resp.Warnings)
	}
	if a := e.stored("app"); a.Username != testUser {
		t.Errorf("username stored as %q", a.Username)
	}
	before := snapshot(t, e.storage)
	for _, c := range []struct {
		path  string
		field string
		value string
	}{
		{"config", "client_secret", "sec\nret"},
		{"config", "client_id", "5_abc\x00def"},
		{"config", "client_secret", "secret\n\n\x00"},
		{"config", "client_secret", "secret\n\n"}, // one line ending is trimmed, not two
		{"accounts/app", "password", "pass\x00word"},
		{"accounts/app", "password", "two\nlines"},
		{"accounts/app", "refresh_token", "tok\ten"},
		{"accounts/app", "username", "jane\x00@example.com"},
	} {
		resp, err := e.request(logical.UpdateOperation, c.path, map[string]any{c.field: c.value})
		msg := errText(resp, err)
		if resp == nil || !resp.IsError() || !strings.HasPrefix(msg, c.field+": contains a control character") {
			t.Errorf("%s %q: want a 400 naming the field, got %q", c.field, c.value, msg)
		}
		if strings.Contains(msg, c.value) {
			t.Errorf("%s: the value is in the error %q", c.field, msg)
		}
	}
	assertSameStorage(t, "refused control characters", before, snapshot(t, e.storage))
}

// Defect 4: a min_ttl at or above the token's lifetime made every read refresh.
func TestMinTTLAtOrAboveTheTokenLifetimeIsRefusedAndReadsDoNotLoop(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	before := snapshot(t, e.storage)
	for _, c := range []struct{ path, field, value string }{
		{"accounts/app", "min_ttl", "3h"},
		{"accounts/app", "min_ttl", "2h"},
		{"config", "default_min_ttl", "2h"},
	} {
		resp, err := e.request(logical.UpdateOperation, c.path, map[string]any{c.field: c.value})
		if msg := errText(resp, err); resp == nil || !resp.IsError() || !strings.HasPrefix(msg, c.field) || !strings.Contains(msg, "2 hours") {
			t.Errorf("%s=%s: want a 400 naming %s and the 2 hours lifetime, got %q", c.field, c.value, c.field, msg)
		}
	}
	// A new account learns the lifetime from its first grant: nothing is stored.
	resp, err := e.request(logical.UpdateOperation, "accounts/new", map[string]any{"username": testUser, "password": testPassword, "min_ttl": "3h"})
	if msg := errText(resp, err); resp == nil || !resp.IsError() || !strings.HasPrefix(msg, "min_ttl") {
		t.Errorf("new account with min_ttl=3h: want a 400, got %q", msg)
	}
	assertSameStorage(t, "refused min_ttl", before, snapshot(t, e.storage))
	e.must(logical.UpdateOperation, "accounts/app", map[string]any{"min_ttl": "1h59m"})

	// Whatever the settings (an entry written by an older version, say), a
	// read never spends a refresh on a token younger than half its life.
	a := e.stored("app")
	a.MinTTL = 3 * time.Hour
	if err := saveAccount(t.Context(), e.storage, "app", a); err != nil {
		t.Fatal(err)
	}
	e.b.Invalidate(t.Context(), accountKey("app"))
	refreshes := e.fake.Counters().Grants["refresh_token"]["success"]
	for i := 0; i < 3; i++ {
		resp := e.creds("app")
		if !strings.Contains(strings.Join(resp.Warnings, " "), "min_ttl") {
			t.Errorf("read %d: want a warning naming min_ttl, got %v", i, resp.Warnings)
		}
		e.clock.Advance(10 * time.Minute)
	}
	if got := e.fake.Counters().Grants["refresh_token"]["success"] - refreshes; got != 0 {
		t.Errorf("3 reads of a young token made %d refreshes, want 0", got)
	}
	e.clock.Advance(time.Hour) // past half its life
	e.creds("app")
	e.creds("app")
	if got := e.fake.Counters().Grants["refresh_token"]["success"] - refreshes; got != 1 {
		t.Errorf("past half its life: %d refreshes, want 1", got)
	}
}

// Defect 5: rotating an account that does not exist said Success.
func TestRotateOfAMissingAccountIs404(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	_, err := e.request(logical.UpdateOperation, "accounts/nope/rotate", nil)
	if codeOf(err) != 404 || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("want a 404 naming the account, got %v", err)
	}
}

// Defect 6: range errors were Vault's; Ermeo's were double-prefixed. A value
// of the wrong type is the framework's 400, which names the field; what the
// type does not say (ranges, allowed values) is the engine's, in its words.
func TestErrorsNameTheFieldInWordsAPersonReads(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	wrongTypes := []struct {
		path, field string
		value       any
	}{
		{"accounts/app", "store_password", "maybe"},
		{"accounts/app", "lease", []any{"x"}},
		{"config", "verify_accounts", "maybe"},
		{"config", "request_timeout", json.Number("1e30")},
		{"config", "request_timeout", "-300"},
		{"config", "request_timeout", json.Number("-300")},
		{"config", "request_timeout", "soon"},
		{"accounts/app", "username", []any{"a"}},
	}
	for _, c := range wrongTypes {
		resp, err := e.request(logical.UpdateOperation, c.path, map[string]any{c.field: c.value})
		if msg := errText(resp, err); err != nil || resp == nil || !resp.IsError() || !strings.Contains(msg, `"`+c.field+`"`) {
			t.Errorf("%s=%v: want the framework's 400 naming the field, got %q", c.field, c.value, msg)
		}
	}
	cases := []struct {
		path  string
		data  map[string]any
		wants []string
	}{
		{"config", map[string]any{"default_rotation_period": "400h"}, []string{"default_rotation_period: 16 days 16 hours is out of range: allowed from 1 minute to 13 days"}},
		{"accounts/app", map[string]any{"min_ttl": "0"}, []string{"min_ttl: 0 seconds is out of range: allowed from 1 second to 14 days"}},
		{"config", map[string]any{"request_timeout": "6m"}, []string{"request_timeout: 6 minutes is out of range: allowed from 1 second to 5 minutes"}},
		{"config", map[string]any{"body_format": "xml"}, []string{`body_format: must be auto, json or form (got "xml")`}},
	}
	for _, c := range cases {
		resp, err := e.request(logical.UpdateOperation, c.path, c.data)
		msg := errText(resp, err)
		for _, want := range c.wants {
			if !strings.Contains(msg, want) {
				t.Errorf("%v: want %q in %q", c.data, want, msg)
			}
		}
		for _, bad := range []string{"strconv", "cannot parse", "h0m0s", "overflow", "unconvertible", "Field validation failed", "cannot provide negative"} {
			if strings.Contains(msg, bad) {
				t.Errorf("%v: Vault's words %q in %q", c.data, bad, msg)
			}
		}
	}
	// Ermeo's refusals: one prefix, no Go wrapping.
	resp, err := e.request(logical.UpdateOperation, "accounts/app", map[string]any{"password": "wrong"})
	msg := errText(resp, err)
	if !strings.HasPrefix(msg, "password: Ermeo refused the username and password: invalid_grant") || strings.Contains(msg, "ermeo:") {
		t.Errorf("wrong password: %q", msg)
	}
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: 503, Grant: "refresh_token", Times: 1})
	_, err = e.request(logical.UpdateOperation, "accounts/app/rotate", nil)
	if msg := errText(nil, err); codeOf(err) != 502 || !strings.HasPrefix(msg, "Ermeo did not answer the refresh: HTTP 503") || strings.Contains(msg, "ermeo:") || strings.Contains(msg, "error occurred") {
		t.Errorf("5xx on rotate: %d %q", codeOf(err), msg)
	}
	// The 502 reaches Vault as a response with its own status and body.
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: 503, Grant: "refresh_token", Times: 1})
	raw, _ := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "accounts/app/rotate", Storage: e.storage, MountPoint: testMount})
	if code, _, ok := rawError(raw); !ok || code != 502 {
		t.Errorf("want a raw 502, got %v", raw)
	}
}

// Defect 7: junk was accepted.
func TestJunkIsRefusedNamingTheField(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	before := snapshot(t, e.storage)
	for _, c := range []struct {
		path  string
		data  map[string]any
		field string
	}{
		{"config", map[string]any{"client_id": "5_abc\x00"}, "client_id"},
		{"config", map[string]any{"api_url": "https://api.ermeo.com/a b"}, "api_url"},
		{"config", map[string]any{"api_url": "https://api.ermeo.com/\x7f"}, "api_url"},
		{"accounts/rotate", map[string]any{"username": testUser, "password": testPassword}, "name"},
		{"accounts/ROTATE", map[string]any{"username": testUser, "password": testPassword}, "name"},
	} {
		resp, err := e.request(logical.UpdateOperation, c.path, c.data)
		if msg := errText(resp, err); resp == nil || !resp.IsError() || !strings.HasPrefix(msg, c.field+":") {
			t.Errorf("%s %v: want a 400 naming %s, got %q", c.path, c.data, c.field, msg)
		}
	}
	assertSameStorage(t, "junk", before, snapshot(t, e.storage))
}

// Defect 8: a token's life was counted from when its answer arrived.
func TestTokenLifeCountsFromWhenTheRequestWasSent(t *testing.T) {
	for _, grant := range []string{"password", "refresh_token"} {
		t.Run(grant, func(t *testing.T) {
			e := newTestEnv(t, fakeermeo.Options{})
			e.configure()
			if grant == "refresh_token" {
				e.createAccount("app", map[string]any{"min_ttl": "10m"})
			}
			e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: grant, Times: 1})
			done := make(chan error, 1)
			go func() {
				path, data := "accounts/app/rotate", map[string]any(nil)
				if grant == "password" {
					path, data = "accounts/app", map[string]any{"username": testUser, "password": testPassword, "min_ttl": "10m"}
				}
				resp, err := e.request(logical.UpdateOperation, path, data)
				if err == nil && resp.IsError() {
					err = resp.Error()
				}
				done <- err
			}()
			waitFor(t, func() bool { return e.fake.Held() == 1 })
			// Issued now at Ermeo; the answer arrives 4 s later.
			issued := e.clock.Now()
			e.clock.Advance(4 * time.Second)
			e.fake.ReleaseHeld()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			a := e.stored("app")
			if want := issued.Add(2 * time.Hour); !a.AccessTokenExpiresAt.Equal(want) {
				t.Errorf("access token expires at %s, want %s (counted from the request)", a.AccessTokenExpiresAt, want)
			}
			if !a.RefreshTokenIssuedAt.Equal(issued) {
				t.Errorf("refresh token issued at %s, want %s", a.RefreshTokenIssuedAt, issued)
			}
			// Just before the plugin's idea of the end, Ermeo still takes the
			// token: no token is handed out with less real life than it says.
			e.clock.Advance(2*time.Hour - 10*time.Minute - 4*time.Second - time.Second)
			resp := e.creds("app")
			tok := resp.Data["access_token"].(string)
			left := time.Duration(resp.Data["expires_in"].(int64)) * time.Second
			e.clock.Advance(left - time.Second)
			if !e.fake.AccessTokenValid(tok) && len(resp.Warnings) == 0 {
				t.Errorf("handed out a token that Ermeo refuses before its expires_in (%s), without a warning", left)
			}
		})
	}
}

// Also: config credentials are checked on write.
func TestConfigWriteChecksTheClientCredentials(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	resp, err := e.request(logical.UpdateOperation, "config", map[string]any{"api_url": e.url, "client_id": testClientID, "client_secret": "wrong"})
	if msg := errText(resp, err); resp == nil || !resp.IsError() || !strings.HasPrefix(msg, "client_id, client_secret: Ermeo refused the client credentials") {
		t.Fatalf("wrong secret: want a 400 naming the credentials, got %q", msg)
	}
	if c, _ := loadConfig(t.Context(), e.storage); c != nil {
		t.Fatalf("refused credentials were stored")
	}
	e.configure()
	read := e.must(logical.ReadOperation, "config", nil)
	if read.Data["credentials_checked_at"] == "" || read.Data["verify_connection"] != true {
		t.Errorf("config read after a check: %v", read.Data)
	}
	c := e.fake.Counters()
	if c.Grants["refresh_token"]["invalid_client"] != 1 || c.Grants["refresh_token"]["invalid_grant"] != 1 || c.Grants["refresh_token"]["success"] != 0 {
		t.Errorf("the check should be two refused refresh grants and nothing spent: %v", c.Grants)
	}
	// Settings that do not change the connection are not checked again.
	e.must(logical.UpdateOperation, "config", map[string]any{"default_min_ttl": "15m"})
	if got := e.fake.Counters().Requests; got != c.Requests {
		t.Errorf("a settings write called Ermeo")
	}
	// A rotated secret that Ermeo does not know yet leaves config as it was.
	before := snapshot(t, e.storage)
	resp, err = e.request(logical.UpdateOperation, "config", map[string]any{"client_secret": "rotated"})
	if resp == nil || !resp.IsError() {
		t.Errorf("want a 400, got %v %v", resp, err)
	}
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: 503, Times: 1})
	_, err = e.request(logical.UpdateOperation, "config", map[string]any{"body_format": "form"})
	if codeOf(err) != 502 || !strings.Contains(err.Error(), "verify_connection=false") {
		t.Errorf("no answer: want a 502 naming verify_connection, got %v", err)
	}
	assertSameStorage(t, "refused config writes", before, snapshot(t, e.storage))
	// Air-gapped: no check, no call.
	n := e.fake.Counters().Requests
	e.must(logical.UpdateOperation, "config", map[string]any{"client_secret": "rotated", "verify_connection": false})
	if e.fake.Counters().Requests != n || e.must(logical.ReadOperation, "config", nil).Data["credentials_checked_at"] != "" {
		t.Errorf("verify_connection=false still checked")
	}
}

// Also: destructive operations say what they do.
func TestConfigDeleteWarnsHowManyAccountsCannotRefresh(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("a", nil)
	e.createAccount("b", nil)
	resp := e.must(logical.DeleteOperation, "config", nil)
	if resp == nil || !strings.Contains(strings.Join(resp.Warnings, " "), "2 account(s)") {
		t.Errorf("want a warning naming 2 accounts, got %v", resp)
	}
}

// Also: writes are forwarded from performance standbys before any grant.
func TestWritesOnAPerformanceStandbyForwardBeforeCallingErmeo(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	e.system.ReplicationStateVal = consts.ReplicationPerformanceStandby
	before := e.fake.Counters().Requests
	for _, w := range []struct {
		op   logical.Operation
		path string
		data map[string]any
	}{
		{logical.UpdateOperation, "accounts/app", map[string]any{"password": testPassword}},
		{logical.UpdateOperation, "accounts/new", map[string]any{"username": testUser, "password": testPassword}},
		{logical.UpdateOperation, "accounts/app/rotate", nil},
		{logical.DeleteOperation, "accounts/app", nil},
		{logical.UpdateOperation, "config", map[string]any{"client_secret": "x"}},
		{logical.DeleteOperation, "config", nil},
	} {
		if _, err := e.request(w.op, w.path, w.data); err != logical.ErrReadOnly {
			t.Errorf("%s %s: want ErrReadOnly, got %v", w.op, w.path, err)
		}
	}
	if e.fake.Counters().Requests != before {
		t.Errorf("a performance standby called Ermeo")
	}
}

// Also: metrics take no unknown parameter, and have every series from the start.
func TestMetricsSeriesStartAtZeroAndPasswordGrantsAreCounted(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	resp, err := e.request(logical.ReadOperation, "metrics", map[string]any{"formt": "prometheus"})
	if msg := errText(resp, err); !strings.Contains(msg, "formt") {
		t.Errorf("unknown parameter: %q", msg)
	}
	text := e.must(logical.ReadOperation, "metrics", map[string]any{"format": "prometheus"}).Data[logical.HTTPRawBody].(string)
	for _, want := range []string{`ermeo_refreshes_total{outcome="success"} 0`, `ermeo_refreshes_total{outcome="unknown"} 0`, `ermeo_password_grants_total{outcome="success"} 0`, `ermeo_chains_lost_total{how="refused"} 0`} {
		if !strings.Contains(text, want) {
			t.Errorf("want %q at start in:\n%s", want, text)
		}
	}
	e.configure()
	e.createAccount("app", nil)
	_, _ = e.request(logical.UpdateOperation, "accounts/app", map[string]any{"password": "wrong"})
	text = e.must(logical.ReadOperation, "metrics", map[string]any{"format": "prometheus"}).Data[logical.HTTPRawBody].(string)
	for _, want := range []string{`ermeo_password_grants_total{outcome="success"} 1`, `ermeo_password_grants_total{outcome="rejected"} 1`} {
		if !strings.Contains(text, want) {
			t.Errorf("want %q in:\n%s", want, text)
		}
	}
}

// Also: needs_reauth says to give the password on standard input.
func TestNeedsReauthSuggestsThePasswordOnStdin(t *testing.T) {
	err := needsReauth("ermeo/", "app", "gone")
	if !strings.Contains(err, "vault write ermeo/accounts/app password=-") || strings.Contains(err, "password=<") {
		t.Errorf("%s", err)
	}
}
