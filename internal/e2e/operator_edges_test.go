package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/auditlog"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The operator's edges: what a mistyped write, a refused secret, a missing
// account or a pasted newline does. Each test drives the plugin with raw
// HTTP requests against a real Vault that has a file audit device, and
// searches the audit log, the server log (which holds the plugin's log
// lines) and every raw response body for the secrets it sent.

// edgeServer is a Vault the edge tests run against: the shared dev server,
// or a single-node Raft server of their own (production storage).
type edgeServer struct {
	kind  string // "dev" or "raft"
	addr  string
	token string
	sys   *api.Client
	log   func() string
	audit string // the file audit device's file
}

// devEdgeServer is the package's shared dev server, with a file audit device
// of the test's own (log_raw=false), disabled when the test ends.
func devEdgeServer(t *testing.T) *edgeServer {
	t.Helper()
	if vault == nil {
		t.Skip("e2e: " + skipReason)
	}
	auditFile := filepath.Join(t.TempDir(), "audit.log")
	path := "edge-" + randomHex(4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := EnableFileAudit(ctx, vault.Client, path, auditFile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vault.Client.Sys().DisableAudit(path) })
	return &edgeServer{kind: "dev", addr: vault.Addr, token: vault.Token, sys: vault.Client, log: vault.Log, audit: auditFile}
}

// raftEdgeServer starts a single-node Vault with integrated storage (Raft)
// in a temporary directory, initialised and unsealed with a Shamir key, the
// plugin registered by sha256, and a file audit device (log_raw=false).
func raftEdgeServer(t *testing.T) *edgeServer {
	t.Helper()
	c := startSingleRaft(t)
	node := c.Nodes[0]
	auditFile := filepath.Join(c.WorkDir, "audit.log")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := EnableFileAudit(ctx, c.Client(0), "file", auditFile); err != nil {
		t.Fatal(err)
	}
	return &edgeServer{kind: "raft", addr: node.Addr, token: c.RootToken, sys: c.Client(0), log: node.Log, audit: auditFile}
}

// edgeEnv is one test's mount and fake Ermeo on an edgeServer, and a raw
// HTTP client that keeps every response body.
type edgeEnv struct {
	t     *testing.T
	srv   *edgeServer
	mount string
	fake  *fakeermeo.Server
	url   string
	hc    *http.Client

	mu     sync.Mutex
	bodies []leakResponse
}

func newEdgeEnv(t *testing.T, srv *edgeServer, opts fakeermeo.Options) *edgeEnv {
	t.Helper()
	e := &edgeEnv{t: t, srv: srv, hc: &http.Client{Timeout: 30 * time.Second}}
	if srv.kind == "dev" {
		d := newEnv(t, opts)
		e.mount, e.fake, e.url = d.mount, d.fake, d.url
		return e
	}
	e.fake = fakeermeo.New(opts)
	hs := httptest.NewServer(e.fake)
	t.Cleanup(hs.Close)
	e.url = hs.URL
	e.mount = "edge-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	err := srv.sys.Sys().Mount(e.mount, &api.MountInput{Type: PluginName, Config: api.MountConfigInput{PluginVersion: PluginVersion}})
	if err != nil {
		t.Fatalf("enabling the plugin at %s: %v", e.mount, err)
	}
	t.Cleanup(func() { _ = srv.sys.Sys().Unmount(e.mount) })
	return e
}

// edgeAnswer is one raw answer of Vault.
type edgeAnswer struct {
	Status   int            `json:"-"`
	Body     string         `json:"-"`
	Errors   []string       `json:"errors"`
	Warnings []string       `json:"warnings"`
	Data     map[string]any `json:"data"`
}

// errText is the answer's errors: Vault's "errors", or the "error" of a
// response a plugin sent with its own status code (logical.RespondWithStatusCode).
func (a edgeAnswer) errText() string {
	errs := a.Errors
	if e, ok := a.Data["error"].(string); ok {
		errs = append(errs[:len(errs):len(errs)], e)
	}
	return strings.Join(errs, "; ")
}

func (a edgeAnswer) ok() bool { return a.Status >= 200 && a.Status < 300 }

// do sends one request to <mount>/<path> with data as its JSON body, as is.
func (e *edgeEnv) do(method, path string, data any) edgeAnswer {
	e.t.Helper()
	var body io.Reader
	if data != nil {
		b, err := json.Marshal(data)
		if err != nil {
			e.t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.srv.addr+"/v1/"+e.mount+"/"+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", e.srv.token)
	if data != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		e.t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	a := edgeAnswer{Status: resp.StatusCode, Body: string(raw)}
	if len(bytes.TrimSpace(raw)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		_ = dec.Decode(&a)
	}
	e.mu.Lock()
	e.bodies = append(e.bodies, leakResponse{fmt.Sprintf("%s %s -> %d", method, path, resp.StatusCode), string(raw)})
	e.mu.Unlock()
	return a
}

func (e *edgeEnv) put(path string, data any) edgeAnswer {
	e.t.Helper()
	return e.do(http.MethodPut, path, data)
}
func (e *edgeEnv) get(path string) edgeAnswer { e.t.Helper(); return e.do(http.MethodGet, path, nil) }

func (e *edgeEnv) mustPut(path string, data any) edgeAnswer {
	e.t.Helper()
	a := e.put(path, data)
	if !a.ok() {
		e.t.Fatalf("write %s: HTTP %d: %s", path, a.Status, a.errText())
	}
	return a
}

func (e *edgeEnv) mustGet(path string) edgeAnswer {
	e.t.Helper()
	a := e.get(path)
	if a.Status != http.StatusOK {
		e.t.Fatalf("read %s: HTTP %d: %s", path, a.Status, a.errText())
	}
	return a
}

func (e *edgeEnv) configure() {
	e.t.Helper()
	e.mustPut("config", map[string]any{"api_url": e.url, "client_id": testClientID, "client_secret": testClientSecret})
}

// accountState is what the edge tests compare of an account before and after.
type accountState struct {
	generation      string
	state           string
	refreshTokenSet bool
}

func (e *edgeEnv) accountState(name string) accountState {
	e.t.Helper()
	d := e.mustGet("accounts/" + name).Data
	set, _ := d["refresh_token_set"].(bool)
	state, _ := d["state"].(string)
	return accountState{generation: fmt.Sprint(d["generation"]), state: state, refreshTokenSet: set}
}

func (s accountState) String() string {
	return fmt.Sprintf("generation %s, state %s, refresh_token_set %v", s.generation, s.state, s.refreshTokenSet)
}

// wrongShapes are the wrong JSON types a secret is sent as.
var wrongShapes = []string{"list", "object", "number"}

// wronglyTyped returns a value of the given shape that carries a unique
// secret, and the secret as it would appear in text. A number is 18 digits
// starting with 8: above any Unix time in nanoseconds for centuries, and an
// int64.
func wronglyTyped(shape string) (any, string) {
	switch shape {
	case "list":
		s := "edgelist" + randomHex(12)
		return []any{s}, s
	case "object":
		s := "edgeobject" + randomHex(12)
		return map[string]any{"a": s}, s
	case "number":
		s := "8" + randomDigits(17)
		return json.Number(s), s
	}
	panic("unknown shape " + shape)
}

func randomDigits(n int) string {
	b := []byte(randomHex(n))
	for i := range b {
		b[i] = '0' + b[i]%10
	}
	return string(b)
}

// mask replaces each secret in s with <SECRET>.
func mask(s string, secrets map[string]string) string {
	for _, v := range secrets {
		s = strings.ReplaceAll(s, v, "<SECRET>")
	}
	return s
}

// edgeSearch is where an edge test looks for its secrets: the audit log,
// the plugin's lines of the server log, Vault's own lines, and every
// response body of the test.
type edgeSearch struct {
	audit, pluginLines, vaultLines string
	nPluginLines                   int
	responses                      []leakResponse
}

func (e *edgeEnv) haystacks() edgeSearch {
	e.t.Helper()
	audit, err := os.ReadFile(e.srv.audit)
	if err != nil {
		e.t.Fatalf("reading the audit log: %v", err)
	}
	var s edgeSearch
	s.audit = string(audit)
	var plugin, own strings.Builder
	for _, line := range strings.SplitAfter(e.srv.log(), "\n") {
		// The plugin's stderr reaches Vault's log under its name.
		if strings.Contains(line, "secrets."+PluginName+".") {
			plugin.WriteString(line)
			s.nPluginLines++
		} else {
			own.WriteString(line)
		}
	}
	s.pluginLines, s.vaultLines = plugin.String(), own.String()
	e.mu.Lock()
	s.responses = append(s.responses, e.bodies...)
	e.mu.Unlock()
	return s
}

// search counts the secrets in every haystack, reports each one found as
// an error with the line it is on (masked), and returns a figure line.
func (s edgeSearch) search(t *testing.T, secrets map[string]string) (int, string) {
	t.Helper()
	hay := []leakHaystack{
		{name: "the audit log", text: s.audit},
		{name: "the plugin's log lines", text: s.pluginLines},
		{name: "Vault's server log", text: s.vaultLines},
	}
	respBytes := 0
	for i, r := range s.responses {
		hay = append(hay, leakHaystack{name: fmt.Sprintf("response #%d (%s)", i+1, r.what), text: r.body})
		respBytes += len(r.body)
	}
	found := 0
	for _, h := range hay {
		for what, secret := range secrets {
			if n := strings.Count(h.text, secret); n > 0 {
				found += n
				t.Errorf("LEAK: %s appears %d times in %s; first at: %s", what, n, h.name, mask(maskedLine(h.text, secret), secrets))
			}
		}
	}
	return found, fmt.Sprintf("searched %d bytes of audit log, %d of server log (%d bytes in %d plugin lines) and %d responses (%d bytes) for %d secrets: %d found",
		len(s.audit), len(s.pluginLines)+len(s.vaultLines), len(s.pluginLines), s.nPluginLines, len(s.responses), respBytes, len(secrets), found)
}

// auditErrors returns the non-empty "error" fields of the audit log's
// entries for requests to path, as "<type>: <error>".
func auditErrors(file, path string) []string {
	entries, _ := auditlog.ReadFile(file)
	var out []string
	for _, e := range entries {
		if e.Path == path && e.Error != "" {
			out = append(out, e.Type+": "+e.Error)
		}
	}
	return out
}

// firstLineWith returns the first line of text that holds sub, or "".
func firstLineWith(text, sub string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}

// TestWrongTypedSecretsAreNeverEchoed: see checkWrongTypedSecrets. On the
// shared dev server.
func TestWrongTypedSecretsAreNeverEchoed(t *testing.T) {
	checkWrongTypedSecrets(t, devEdgeServer(t))
}

// checkWrongTypedSecrets sends each secret field (config's client_secret,
// an account's password and refresh_token) as a list, an object and a
// number, on a create and on an update, in raw JSON bodies. Each must get a
// 400 that names the field and says it must be a string, reach nothing
// upstream, change nothing, and the secret must appear nowhere: not in the
// answer, not in the audit log, not in the server log, not in the plugin's
// log lines.
func checkWrongTypedSecrets(t *testing.T, srv *edgeServer) {
	start := time.Now()
	e := newEdgeEnv(t, srv, fakeermeo.Options{})
	secrets := map[string]string{}
	var cases, refused, reachedErmeo, changed int
	var sampleCreate, sampleUpdate string

	// try sends one wrongly typed secret and checks the answer; after says
	// what the write changed, or "".
	try := func(what, path, field, shape string, base map[string]any, after func() string) {
		t.Helper()
		value, secret := wronglyTyped(shape)
		label := fmt.Sprintf("%s, %s as a %s", what, field, shape)
		secrets[label] = secret
		data := map[string]any{}
		for k, v := range base {
			data[k] = v
		}
		data[field] = value
		cases++
		before := e.fake.Counters().Requests
		a := e.put(path, data)
		msg := mask(a.errText(), secrets)
		if a.Status == http.StatusBadRequest && strings.Contains(a.errText(), field) && strings.Contains(a.errText(), "must be a string") {
			refused++
		} else {
			t.Errorf("%s: want a 400 naming %s and saying \"must be a string\", got HTTP %d: %q", label, field, a.Status, msg)
		}
		if n := e.fake.Counters().Requests - before; n > 0 {
			reachedErmeo++
			t.Errorf("%s: the write reached Ermeo (%d requests)", label, n)
		}
		if c := after(); c != "" {
			changed++
			t.Errorf("%s: the refused write changed something: %s", label, c)
		}
		if shape == "list" && sampleCreate == "" && strings.Contains(what, "create") {
			sampleCreate = fmt.Sprintf("%s -> HTTP %d %q", label, a.Status, msg)
		}
		if shape == "list" && sampleUpdate == "" && strings.Contains(what, "update") {
			sampleUpdate = fmt.Sprintf("%s -> HTTP %d %q", label, a.Status, msg)
		}
	}
	// gone says what is wrong if <mount>/<path> exists; a wrongly stored
	// one is deleted, so that the next case is a create again.
	gone := func(path string) func() string {
		return func() string {
			a := e.get(path)
			if a.Status == http.StatusNotFound {
				return ""
			}
			e.do(http.MethodDelete, path, nil)
			return fmt.Sprintf("%s exists afterwards (read: HTTP %d)", path, a.Status)
		}
	}

	// config, as a create: there is no config yet.
	for _, shape := range wrongShapes {
		try("config create", "config", "client_secret", shape,
			map[string]any{"api_url": e.url, "client_id": testClientID}, gone("config"))
	}
	e.configure()

	// Accounts that do not exist yet: Vault runs the existence check, then
	// the create.
	for _, field := range []string{"password", "refresh_token"} {
		for _, shape := range wrongShapes {
			name := "new-" + strings.ReplaceAll(field, "_", "-") + "-" + shape
			try("account create", "accounts/"+name, field, shape, map[string]any{"username": testUser}, gone("accounts/"+name))
		}
	}

	// An existing account, with a working chain: the update.
	e.mustPut("accounts/app", map[string]any{"username": testUser, "password": testPassword})
	e.mustGet("creds/app")
	want := e.accountState("app")
	unchanged := func() string {
		if got := e.accountState("app"); got != want {
			return fmt.Sprintf("accounts/app went from %s to %s", want, got)
		}
		return ""
	}
	for _, field := range []string{"password", "refresh_token"} {
		for _, shape := range wrongShapes {
			try("account update", "accounts/app", field, shape, nil, unchanged)
		}
	}

	// config, as an update: the stored client secret must still work, which
	// a new account's password grant shows.
	for _, shape := range wrongShapes {
		probe := "probe-" + shape
		try("config update", "config", "client_secret", shape, nil, func() string {
			a := e.put("accounts/"+probe, map[string]any{"username": testUser, "password": testPassword})
			if !a.ok() {
				return fmt.Sprintf("the stored client secret no longer works: a new account's write got HTTP %d: %s", a.Status, mask(a.errText(), secrets))
			}
			return ""
		})
	}

	// What Vault did with them, for the record.
	hay := e.haystacks()
	if l := firstLineWith(hay.vaultLines, "failed to run existence check"); l != "" {
		t.Logf("%s: Vault's log has: %s", srv.kind, truncateLine(mask(l, secrets), 400))
	}
	for _, p := range []string{"accounts/new-password-list", "accounts/app"} {
		for i, ae := range auditErrors(srv.audit, e.mount+"/"+p) {
			if i == 2 {
				break
			}
			t.Logf("%s: audit log entry for %s: %s", srv.kind, p, truncateLine(mask(ae, secrets), 400))
		}
	}
	if sampleCreate != "" {
		t.Logf("%s: sample answer: %s", srv.kind, truncateLine(sampleCreate, 400))
	}
	if sampleUpdate != "" {
		t.Logf("%s: sample answer: %s", srv.kind, truncateLine(sampleUpdate, 400))
	}

	_, figure := hay.search(t, secrets)
	t.Logf("%s: %d wrongly typed secret writes (3 fields x list, object, number; creates and updates): %d answered 400 naming the field with \"must be a string\", %d reached Ermeo, %d changed something; %s; in %s",
		srv.kind, cases, refused, reachedErmeo, changed, figure, time.Since(start).Round(time.Millisecond))
}

func truncateLine(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// TestRefusedRefreshTokenKeepsTheChain: see checkRefusedRefreshToken. On the
// shared dev server.
func TestRefusedRefreshTokenKeepsTheChain(t *testing.T) {
	checkRefusedRefreshToken(t, devEdgeServer(t))
}

// checkRefusedRefreshToken writes a refresh_token that Ermeo refuses to an
// account with a working chain. The write must fail with a 400 naming
// refresh_token and change nothing: same generation, a refresh token still
// set, state active, and creds hands out the same access token as before,
// without any new grant at Ermeo.
func checkRefusedRefreshToken(t *testing.T, srv *edgeServer) {
	start := time.Now()
	e := newEdgeEnv(t, srv, fakeermeo.Options{AccessTokenTTL: time.Hour})
	e.configure()
	e.mustPut("accounts/app", map[string]any{"username": testUser, "password": testPassword})
	tok, _ := e.mustGet("creds/app").Data["access_token"].(string)
	if !e.fake.AccessTokenValid(tok) {
		t.Fatalf("creds/app before: a token the fake does not accept")
	}
	before := e.accountState("app")
	grantsBefore := e.fake.Counters().Grants

	garbage := "garbage" + randomHex(16)
	secrets := map[string]string{"the refused refresh token": garbage, "the password": testPassword, "the client secret": testClientSecret}
	a := e.put("accounts/app", map[string]any{"refresh_token": garbage})
	if a.Status != http.StatusBadRequest || !strings.Contains(a.errText(), "refresh_token") {
		t.Errorf("refused refresh_token: want a 400 naming refresh_token, got HTTP %d: %q", a.Status, mask(a.errText(), secrets))
	}
	t.Logf("%s: write refresh_token=<garbage> -> HTTP %d %q", srv.kind, a.Status, mask(a.errText(), secrets))

	after := e.accountState("app")
	if after != before {
		t.Errorf("the refused write changed the account: before %s; after %s", before, after)
	}
	c := e.get("creds/app")
	tokAfter, _ := c.Data["access_token"].(string)
	if c.Status != http.StatusOK || tokAfter != tok {
		t.Errorf("creds/app after the refused write: want the same access token, got HTTP %d, same token %v, errors %q",
			c.Status, tokAfter == tok, mask(c.errText(), secrets))
	}
	grantsAfter := e.fake.Counters().Grants
	newGrants := grantsAfter["password"]["success"] + grantsAfter["refresh_token"]["success"] -
		grantsBefore["password"]["success"] - grantsBefore["refresh_token"]["success"]
	if newGrants != 0 {
		t.Errorf("the refused write and the creds read caused %d new grants at Ermeo (grants before %v, after %v)", newGrants, grantsBefore, grantsAfter)
	}
	for i, rt := range e.fake.IssuedRefreshTokens() {
		secrets[fmt.Sprintf("refresh token #%d", i+1)] = rt
	}
	for _, ae := range auditErrors(srv.audit, e.mount+"/accounts/app") {
		t.Logf("%s: audit log entry for the refused write: %s", srv.kind, truncateLine(mask(ae, secrets), 400))
	}
	_, figure := e.haystacks().search(t, secrets)
	t.Logf("%s: refused refresh_token: before %s; after %s; same access token %v; new grants %d; %s; in %s",
		srv.kind, before, after, tokAfter == tok, newGrants, figure, time.Since(start).Round(time.Millisecond))
}

// TestOperatorEdgesOnRaft runs the wrongly typed secrets and the refused
// refresh token against a single-node Vault with integrated storage, as in
// production, not only against `vault server -dev`.
func TestOperatorEdgesOnRaft(t *testing.T) {
	srv := raftEdgeServer(t)
	t.Run("WrongTypedSecretsAreNeverEchoed", func(t *testing.T) { checkWrongTypedSecrets(t, srv) })
	t.Run("RefusedRefreshTokenKeepsTheChain", func(t *testing.T) { checkRefusedRefreshToken(t, srv) })
}

// TestRotateOfAMissingAccountIs404: writing accounts/nope/rotate, when there
// is no account nope, is a 404 whose error names nope, and creates nothing.
func TestRotateOfAMissingAccountIs404(t *testing.T) {
	e := newEdgeEnv(t, devEdgeServer(t), fakeermeo.Options{})
	e.configure()
	checks := e.fake.Counters().Requests // config's credentials check
	a := e.put("accounts/nope/rotate", nil)
	if a.Status != http.StatusNotFound || !strings.Contains(a.errText(), "nope") {
		t.Errorf("rotate of a missing account: want a 404 naming nope, got HTTP %d, body %q", a.Status, a.Body)
	}
	if r := e.get("accounts/nope"); r.Status != http.StatusNotFound {
		t.Errorf("accounts/nope after the rotate: HTTP %d", r.Status)
	}
	if n := e.fake.Counters().Requests - checks; n != 0 {
		t.Errorf("rotate of a missing account reached Ermeo: %d requests", n)
	}
	t.Logf("write accounts/nope/rotate -> HTTP %d, body %q; Ermeo requests %d", a.Status, strings.TrimSpace(a.Body), e.fake.Counters().Requests-checks)
}

// doublePrefix matches an error that says "Ermeo ..." and then carries the
// client package's own "ermeo: " prefix too.
var doublePrefix = regexp.MustCompile(`Ermeo\b[^\n]*\bermeo: `)

// TestPluginErrorsCarryNoMultierrorOrDoublePrefix provokes the plugin's
// upstream errors (502s on a forced rotate and on an account write, refused
// grants on account writes, a rejected refresh) and checks each raw body:
// the expected status, no "1 error occurred" (Vault's multierror text), and
// no message that says "Ermeo ..." and then "ermeo: ..." again.
func TestPluginErrorsCarryNoMultierrorOrDoublePrefix(t *testing.T) {
	start := time.Now()
	// A fake that reads only form bodies, like the stock OAuth library: with
	// body_format=json its answer is invalid_request, a refusal that is
	// neither invalid_grant nor invalid_client.
	e := newEdgeEnv(t, devEdgeServer(t), fakeermeo.Options{RefuseJSON: true})
	e.mustPut("config", map[string]any{"api_url": e.url, "client_id": testClientID, "client_secret": testClientSecret, "body_format": "form"})
	e.mustPut("accounts/app", map[string]any{"username": testUser, "password": testPassword})

	type provoked struct {
		what   string
		status int
		a      edgeAnswer
	}
	var got []provoked
	note := func(what string, status int, a edgeAnswer) { got = append(got, provoked{what, status, a}) }

	note("account write, wrong password (invalid_grant)", http.StatusBadRequest,
		e.put("accounts/wrong", map[string]any{"username": testUser, "password": "wrong-horse"}))

	// Without the config write's credentials check, which would refuse json here.
	e.mustPut("config", map[string]any{"body_format": "json", "verify_connection": false})
	note("account write, refused grant (invalid_request)", http.StatusBadRequest,
		e.put("accounts/json", map[string]any{"username": testUser, "password": testPassword}))
	e.mustPut("config", map[string]any{"body_format": "form"})

	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: http.StatusBadGateway, Grant: "password", Times: 1})
	note("account write, Ermeo answers 502", http.StatusBadGateway,
		e.put("accounts/down", map[string]any{"username": testUser, "password": testPassword}))

	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: http.StatusServiceUnavailable, Grant: "refresh_token", Times: 1})
	note("forced rotate, Ermeo answers 503", http.StatusBadGateway, e.put("accounts/app/rotate", nil))

	e.mustPut("config", map[string]any{"client_secret": "not-the-secret"})
	note("forced rotate, refresh rejected (invalid_client)", http.StatusBadGateway, e.put("accounts/app/rotate", nil))
	e.mustPut("config", map[string]any{"client_secret": testClientSecret})

	multi, double := 0, 0
	statuses := map[int]int{}
	for _, p := range got {
		statuses[p.a.Status]++
		t.Logf("%s -> HTTP %d, body %q", p.what, p.a.Status, strings.TrimSpace(p.a.Body))
		if p.a.Status != p.status {
			t.Errorf("%s: want HTTP %d, got %d", p.what, p.status, p.a.Status)
		}
		if strings.Contains(p.a.Body, "error occurred") || strings.Contains(p.a.Body, "errors occurred") {
			multi++
			t.Errorf("%s: the body carries Vault's multierror text: %q", p.what, strings.TrimSpace(p.a.Body))
		}
		if msg := p.a.errText(); doublePrefix.MatchString(msg) {
			double++
			t.Errorf("%s: a double-prefixed error: %q", p.what, msg)
		}
		if p.a.errText() == "" {
			t.Errorf("%s: no error in the body %q", p.what, p.a.Body)
		}
	}
	t.Logf("checked %d error answers (statuses %v): %d carry a multierror text, %d double-prefixed; in %s",
		len(got), statuses, multi, double, time.Since(start).Round(time.Millisecond))
}

// TestClientSecretWithTrailingNewline: `echo secret | vault write
// <mount>/config client_secret=-` stores what it read from stdin, newline
// included. The plugin must trim it (and say so in a warning), so that the
// account written next works.
func TestClientSecretWithTrailingNewline(t *testing.T) {
	start := time.Now()
	e := newEdgeEnv(t, devEdgeServer(t), fakeermeo.Options{})
	bin, why := FindVault()
	if bin == "" {
		t.Skip(why)
	}
	home := t.TempDir()
	cmd := exec.Command(bin, "write", "-format=json", e.mount+"/config",
		"api_url="+e.url, "client_id="+testClientID, "client_secret=-")
	cmd.Env = append(cleanEnv(), "HOME="+home, "VAULT_ADDR="+e.srv.addr, "VAULT_TOKEN="+e.srv.token)
	cmd.Stdin = strings.NewReader(testClientSecret + "\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("echo <secret> | vault write %s/config ... client_secret=-: %v\n%s%s", e.mount, err, stdout.String(), stderr.String())
	}
	var out struct {
		Warnings []string `json:"warnings"`
	}
	if s := bytes.TrimSpace(stdout.Bytes()); len(s) > 0 {
		if err := json.Unmarshal(s, &out); err != nil {
			t.Fatalf("vault write -format=json printed %q: %v", s, err)
		}
	}
	warned := false
	for _, w := range out.Warnings {
		lw := strings.ToLower(w)
		if strings.Contains(w, "client_secret") && (strings.Contains(lw, "newline") || strings.Contains(lw, "whitespace") || strings.Contains(lw, "trim")) {
			warned = true
		}
	}
	if !warned {
		t.Errorf("config write with a trailing newline in client_secret: want a warning that names client_secret and says it was trimmed, got warnings %q", out.Warnings)
	}
	a := e.put("accounts/app", map[string]any{"username": testUser, "password": testPassword})
	if !a.ok() {
		t.Errorf("account write after a client_secret with a trailing newline: want success, got HTTP %d: %q", a.Status, a.errText())
	}
	t.Logf("echo <secret> | vault write %s/config client_secret=-: exit 0, warnings %q; then write accounts/app -> HTTP %d %q; in %s",
		e.mount, out.Warnings, a.Status, a.errText(), time.Since(start).Round(time.Millisecond))
}
