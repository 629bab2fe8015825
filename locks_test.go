package ermeosecrets

import (
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The three defects of the lock-order issue, each driven through the
// backend's own entry points.

// waitAll waits for every function of fns, run at once, for up to limit of
// real time; it fails the test with every goroutine's stack if they do not
// all return.
func waitAll(t *testing.T, limit time.Duration, what string, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("%s: still waiting after %s: a deadlock\n%s", what, limit, allStacks())
	}
}

// allStacks is every goroutine's stack, for a test that found a deadlock.
func allStacks() []byte {
	buf := make([]byte, 4<<20)
	return buf[:runtime.Stack(buf, true)]
}

// A slow refresh, a periodic tick and a config write, with body_format=auto
// and no detected format recorded: on the code before the lock order, the
// refresh waited for configMu (to record the format) under the account's
// lock, the config write waited for loadMu under configMu, and the tick's
// schedule load waited for the account's lock under loadMu.
func TestSlowRefreshTickAndConfigWriteDoNotDeadlock(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configureUnchecked()
	e.createAccount("app", nil)
	// The same fake under another URL: a new connection, so config forgets
	// the detected format (verify_connection=false: nothing checks it).
	other := httptest.NewServer(e.fake)
	t.Cleanup(other.Close)
	e.must(logical.UpdateOperation, "config", map[string]any{"api_url": other.URL, "verify_connection": false})
	if got := e.must(logical.ReadOperation, "config", nil).Data["body_format_detected"]; got != "" {
		t.Fatalf("body_format_detected after a new api_url: %q, want empty", got)
	}
	// The token is due for a refresh, which Ermeo holds.
	e.clock.Advance(2 * time.Hour)
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})

	var wg sync.WaitGroup
	done := make(chan struct{})
	var readErr, tickErr, writeErr atomic.Value
	wg.Add(3)
	go func() {
		defer wg.Done()
		if _, err := e.request(logical.ReadOperation, "creds/app", nil); err != nil {
			readErr.Store(err)
		}
	}()
	waitFor(t, func() bool { return e.fake.Held() == 1 })
	go func() {
		defer wg.Done()
		if err := e.b.periodic(context.Background(), &logical.Request{Storage: e.view, MountPoint: testMount}); err != nil {
			tickErr.Store(err)
		}
	}()
	time.Sleep(50 * time.Millisecond) // let the tick reach the account's lock, if it takes it
	go func() {
		defer wg.Done()
		if _, err := e.request(logical.UpdateOperation, "config", map[string]any{"request_timeout": 20}); err != nil {
			writeErr.Store(err)
		}
	}()
	time.Sleep(50 * time.Millisecond) // let the config write reach the schedule, if it waits for it
	e.fake.ReleaseHeld()
	go func() { wg.Wait(); close(done) }()
	waitAll(t, 5*time.Second, "a creds read, a periodic tick and a config write", done)
	for what, v := range map[string]*atomic.Value{"creds read": &readErr, "tick": &tickErr, "config write": &writeErr} {
		if err := v.Load(); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	e.assertNoTokenUsedTwice()
	if tok := e.creds("app").Data["access_token"].(string); !e.fake.AccessTokenValid(tok) {
		t.Errorf("the token served after the refresh is not valid")
	}
}

// slowStorage makes every Get take delay of real time, or until its context
// is cancelled, and counts them.
type slowStorage struct {
	logical.Storage
	delay time.Duration
	gets  atomic.Int64
}

func (s *slowStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.gets.Add(1)
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Storage.Get(ctx, key)
}

// clean stops a schedule load in progress at once: 200 accounts at 10 ms a
// storage read take 2 s to load; clean returns within 100 ms, and the load
// reads nothing more after it.
func TestCleanStopsAScheduleLoadInProgress(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configureUnchecked()
	ctx := context.Background()
	now := e.clock.Now()
	for i := 0; i < 200; i++ {
		a := &accountEntry{Username: testUser, RefreshToken: fmt.Sprintf("rt-%d", i), RefreshTokenIssuedAt: now,
			AccessToken: "at", AccessTokenExpiresAt: now.Add(2 * time.Hour), Generation: 1, State: stateActive}
		if err := saveAccount(ctx, e.storage, fmt.Sprintf("acct-%03d", i), a); err != nil {
			t.Fatal(err)
		}
	}
	slow := &slowStorage{Storage: e.storage, delay: 10 * time.Millisecond}
	b := e.restart()
	if err := b.initialize(ctx, &logical.InitializationRequest{Storage: slow}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return slow.gets.Load() >= 5 })

	start := time.Now()
	b.clean(ctx)
	took := time.Since(start)
	after := slow.gets.Load()
	time.Sleep(200 * time.Millisecond)
	if took > 100*time.Millisecond {
		t.Errorf("clean took %s with a load in progress, want at most 100ms", took)
	}
	if more := slow.gets.Load() - after; more > 0 {
		t.Errorf("the load read %d more accounts after clean returned (%d in all, of 200)", more, slow.gets.Load())
	}
}

// The keep-alive schedule's state belongs to the account store: no other
// file reaches into the store's fields (the periodic function once drove the
// store's load lock, load flag and cancel function from keepalive.go, while
// the store's comment said it was the only code touching the schedule).
func TestOnlyTheStoreTouchesItsFields(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	parsed := map[string]*ast.File{}
	fields := map[string]bool{}
	owner := ""
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		parsed[name] = f
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok || ts.Name.Name != "accountStore" {
				return true
			}
			owner = name
			for _, fl := range ts.Type.(*ast.StructType).Fields.List {
				for _, id := range fl.Names {
					fields[id.Name] = true
				}
			}
			return false
		})
	}
	if owner == "" || len(fields) == 0 {
		t.Fatal("type accountStore not found")
	}
	for name, f := range parsed {
		if name == owner {
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok || !fields[sel.Sel.Name] {
				return true
			}
			if inner, ok := sel.X.(*ast.SelectorExpr); ok && inner.Sel.Name == "store" {
				t.Errorf("%s: %s reaches into the account store's field %s (owned by %s)", name, fset.Position(sel.Pos()), sel.Sel.Name, owner)
			}
			return true
		})
	}
}

// heldStorage holds every Get of one key, after it has read the entry, until
// released: a read that began before a change and ends after it.
type heldStorage struct {
	logical.Storage
	key     string
	reading chan struct{} // a Get of key has read and is held
	release chan struct{}
}

func (s *heldStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	e, err := s.Storage.Get(ctx, key)
	if key == s.key {
		s.reading <- struct{}{}
		<-s.release
	}
	return e, err
}

// A creds read that read an account from storage just before the account
// was deleted must not cache what it read: later reads would serve the
// deleted account's token from memory.
func TestAReadOverlappingADeleteDoesNotCacheTheDeletedAccount(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	e.b.invalidate(context.Background(), accountPrefix+"app") // not cached: the next read goes to storage
	held := &heldStorage{Storage: e.storage, key: accountPrefix + "app", reading: make(chan struct{}), release: make(chan struct{})}
	e.useStorage(held)
	done := make(chan error, 1)
	go func() {
		_, err := e.request(logical.ReadOperation, "creds/app", nil)
		done <- err
	}()
	<-held.reading
	e.useStorage(e.storage)
	e.must(logical.DeleteOperation, "accounts/app", nil)
	close(held.release)
	if err := <-done; err != nil {
		t.Fatalf("the read that overlapped the delete: %v", err)
	}
	if resp, err := e.request(logical.ReadOperation, "creds/app", nil); err == nil && resp != nil && !resp.IsError() {
		t.Fatalf("creds/app of a deleted account served a token: %v", resp.Data)
	}
}
