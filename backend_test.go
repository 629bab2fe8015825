package ermeosecrets

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/testhelpers/schema"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The fake's default client and user.
const (
	testClientID     = fakeermeo.DefaultClientID
	testClientSecret = fakeermeo.DefaultClientSecret
	testUser         = fakeermeo.DefaultUsername
	testPassword     = fakeermeo.DefaultPassword
	testMount        = "ermeo/"
)

// newTestClock returns the tests' clock (the fake's, shared by the fake and
// the backend), at the tests' start time.
func newTestClock() *fakeermeo.Clock {
	return fakeermeo.NewClock(time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC))
}

// testEnv is a backend with in-memory storage, an injected clock, and a fake
// Ermeo on a loopback test server that shares the clock.
type testEnv struct {
	t       testing.TB
	b       *backend
	storage *logical.InmemStorage
	// view is what requests see: storage itself, or a wrapper of it.
	view   logical.Storage
	system *logical.StaticSystemView
	clock  *fakeermeo.Clock
	fake   *fakeermeo.Server
	url    string
	http   *http.Client
}

// t is a test's or a benchmark's: the fake's server is closed by t.Cleanup.
func newTestEnv(t testing.TB, opts fakeermeo.Options) *testEnv {
	t.Helper()
	clock := newTestClock()
	opts.Now = clock.Now
	fake := fakeermeo.New(opts)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)

	system := &logical.StaticSystemView{
		DefaultLeaseTTLVal: 24 * time.Hour,
		MaxLeaseTTLVal:     32 * 24 * time.Hour,
	}
	conf := logical.TestBackendConfig()
	conf.System = system
	storage := &logical.InmemStorage{}
	conf.StorageView = storage
	b := newBackend(clock.Now, srv.Client())
	b.store.persistFor = 0 // a refused pair is kept in memory at once (TestPairWriteIsTriedAgain sets its own)
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	return &testEnv{t: t, b: b, storage: storage, view: storage, system: system, clock: clock, fake: fake, url: srv.URL, http: srv.Client()}
}

// useStorage makes requests go through a wrapper of the env's storage.
func (e *testEnv) useStorage(s logical.Storage) { e.view = s }

// restart replaces the backend with a new one on the same storage, as when
// Vault starts a new plugin process after a crash: everything the old one
// held in memory is gone.
func (e *testEnv) restart() *backend {
	e.t.Helper()
	conf := logical.TestBackendConfig()
	conf.System = e.system
	conf.StorageView = e.view
	b := newBackend(e.clock.Now, e.http)
	b.store.persistFor = e.b.store.persistFor
	if err := b.Setup(context.Background(), conf); err != nil {
		e.t.Fatal(err)
	}
	e.b = b
	return b
}

func (e *testEnv) request(op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	return e.requestCtx(context.Background(), op, path, data)
}

func (e *testEnv) requestCtx(ctx context.Context, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	req := &logical.Request{
		Operation:  op,
		Path:       path,
		Data:       data,
		Storage:    e.view,
		MountPoint: testMount,
	}
	if op == logical.UpdateOperation || op == logical.CreateOperation {
		// Vault turns a write to a path that has an existence check into a
		// create or an update; do the same.
		req.Operation = logical.UpdateOperation
		if found, exists, err := e.b.HandleExistenceCheck(ctx, req); err == nil && found && !exists {
			req.Operation = logical.CreateOperation
		}
	}
	resp, err := e.b.HandleRequest(ctx, req)
	if code, msg, ok := rawError(resp); ok {
		// What a Vault client sees of it: an error with that status.
		return nil, logical.CodedError(code, msg)
	}
	// Every answer is checked against the path's declared response schema
	// (the one OpenAPI publishes), strictly: no undeclared field. (The SDK's
	// checker takes a *testing.T: a benchmark's answers are not checked; the
	// tests check the same paths.)
	t, isTest := e.t.(*testing.T)
	if isTest && err == nil && resp != nil && !resp.IsError() && op != logical.RevokeOperation {
		if route := e.b.Route(path); route != nil {
			schema.ValidateResponse(t, schema.GetResponseSchema(t, route, req.Operation), resp, true)
		}
	}
	return resp, err
}

// rawError reports whether resp is an error with a status of its own (see
// errorResponse), and returns its status and message.
func rawError(resp *logical.Response) (int, string, bool) {
	if resp == nil || resp.Data == nil {
		return 0, "", false
	}
	code, ok := resp.Data[logical.HTTPStatusCode].(int)
	if !ok || code < 400 {
		return 0, "", false
	}
	var body struct{ Errors []string }
	raw, _ := resp.Data[logical.HTTPRawBody].(string)
	_ = json.Unmarshal([]byte(raw), &body)
	return code, strings.Join(body.Errors, "; "), true
}

// must fails the test unless the request succeeded without an error response.
func (e *testEnv) must(op logical.Operation, path string, data map[string]any) *logical.Response {
	e.t.Helper()
	resp, err := e.request(op, path, data)
	if err != nil || resp.IsError() {
		e.t.Fatalf("%s %s: err=%v resp=%v", op, path, err, resp)
	}
	return resp
}

func (e *testEnv) configure() {
	e.t.Helper()
	e.must(logical.UpdateOperation, "config", map[string]any{
		"api_url": e.url, "client_id": testClientID, "client_secret": testClientSecret,
	})
}

// configureUnchecked writes config without the credentials check, for tests
// that count every request the fake sees.
func (e *testEnv) configureUnchecked() {
	e.t.Helper()
	e.must(logical.UpdateOperation, "config", map[string]any{
		"api_url": e.url, "client_id": testClientID, "client_secret": testClientSecret, "verify_connection": false,
	})
}

func (e *testEnv) createAccount(name string, extra map[string]any) {
	e.t.Helper()
	data := map[string]any{"username": testUser, "password": testPassword}
	for k, v := range extra {
		data[k] = v
	}
	e.must(logical.UpdateOperation, "accounts/"+name, data)
}

func (e *testEnv) creds(name string) *logical.Response {
	e.t.Helper()
	return e.must(logical.ReadOperation, "creds/"+name, nil)
}

func (e *testEnv) stored(name string) *accountEntry {
	e.t.Helper()
	a, err := loadAccount(context.Background(), e.storage, name)
	if err != nil || a == nil {
		e.t.Fatalf("stored account %s: %v %v", name, a, err)
	}
	return a
}

func (e *testEnv) assertNoTokenUsedTwice() {
	e.t.Helper()
	if c := e.fake.Counters(); c.RefreshTokensUsedTwice != 0 {
		e.t.Fatalf("the fake saw %d refresh tokens used twice", c.RefreshTokensUsedTwice)
	}
}

func TestBackendDeclaresSealWrappedPaths(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	got := strings.Join(e.b.SpecialPaths().SealWrapStorage, ",")
	for _, want := range []string{configKey, accountPrefix, passwordPrefix} {
		if !strings.Contains(got, want) {
			t.Errorf("SealWrapStorage %q lacks %q", got, want)
		}
	}
}

func TestBackendReportsVersion(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	if v := e.b.PluginVersion().Version; v != Version {
		t.Errorf("running version %q, want %q", v, Version)
	}
}

func TestCachedReadMakesNoStorageCall(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	counting := e.wrapStorage()
	e.creds("app")
	counting.resetCounts()
	for i := 0; i < 100; i++ {
		e.creds("app")
	}
	if g := counting.gets.Load(); g != 0 {
		t.Errorf("100 cached reads made %d storage reads, want 0", g)
	}
}

func TestInvalidateDropsWhatAnotherNodeChanged(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	first := e.creds("app").Data["access_token"]
	// Another node rotates the chain and writes storage directly.
	other := e.stored("app")
	other.AccessToken, other.Generation = "written-by-another-node", other.Generation+1
	if err := saveAccount(t.Context(), e.storage, "app", other); err != nil {
		t.Fatal(err)
	}
	if got := e.creds("app").Data["access_token"]; got != first {
		t.Fatalf("without an invalidation the cache answers: got %v", got)
	}
	e.b.Invalidate(t.Context(), accountKey("app"))
	if got := e.creds("app").Data["access_token"]; got != "written-by-another-node" {
		t.Errorf("after Invalidate: %v", got)
	}
	// Config too.
	cfg, _ := loadConfig(t.Context(), e.storage)
	cfg.DefaultMinTTL = 42 * time.Second
	_ = saveConfig(t.Context(), e.storage, cfg)
	e.b.Invalidate(t.Context(), configKey)
	if got := e.must(logical.ReadOperation, "config", nil).Data["default_min_ttl"]; got != int64(42) {
		t.Errorf("config after Invalidate: %v", got)
	}
}

func TestAStaleCacheNeverSendsASpentToken(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	e.creds("app")
	stale := e.stored("app") // generation 1, its refresh token about to be spent
	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	// The cache is made stale on purpose, as a missed invalidation would.
	e.b.store.mu.Lock()
	e.b.store.cache["app"] = stale
	e.b.store.mu.Unlock()
	e.clock.Advance(2 * time.Hour)
	resp := e.creds("app")
	if len(resp.Warnings) != 0 || !e.fake.AccessTokenValid(resp.Data["access_token"].(string)) {
		t.Fatalf("read after a stale cache: %v", resp)
	}
	e.assertNoTokenUsedTwice()
}
