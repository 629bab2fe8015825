package ermeosecrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// unsavedCount is how many refreshed pairs wait in memory.
func (s *accountStore) unsavedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.unsaved)
}

// testStorage is the one storage wrapper of this package's tests. Around the
// env's in-memory storage it
//
//   - counts the calls a backend makes (gets, puts, lists, deletes);
//   - fails the puts, or the gets, that a test chooses;
//   - dies, as a crashed plugin process does: once dead, every call fails, so
//     that a crashed backend's other goroutines can change nothing.
//
// A put fault is decided on the entry being written, decoded: a test says
// "the write of account app with a rotation intent record" as
// w.account == "app" && w.entry.RotationIntent != nil, never by searching the
// bytes for a field's name, which would silently stop matching if the field
// were renamed.
type testStorage struct {
	inner logical.Storage

	gets, puts, lists, deletes atomic.Int64

	dead atomic.Bool

	mu      sync.Mutex
	failPut func(storageWrite) bool
	failGet func(key string) bool
}

// storageWrite is a put as a fault sees it.
type storageWrite struct {
	key string
	// For a key under accounts/: the account's name and its entry, decoded.
	// Empty and nil for every other key.
	account string
	entry   *accountEntry
}

var (
	errDead         = errors.New("plugin process is dead")
	errStorageFault = errors.New("injected storage fault")
)

func newTestStorage(inner logical.Storage) *testStorage {
	return &testStorage{inner: inner}
}

// wrapStorage makes the env's requests go through a new testStorage on its
// storage, and returns it.
func (e *testEnv) wrapStorage() *testStorage {
	s := newTestStorage(e.storage)
	e.useStorage(s)
	return s
}

// failPuts makes the puts for which fail returns true fail with
// errStorageFault; nil stops it.
func (s *testStorage) failPuts(fail func(storageWrite) bool) {
	s.mu.Lock()
	s.failPut = fail
	s.mu.Unlock()
}

// failGets makes the gets of the keys for which fail returns true fail with
// errStorageFault; nil stops it.
func (s *testStorage) failGets(fail func(key string) bool) {
	s.mu.Lock()
	s.failGet = fail
	s.mu.Unlock()
}

// die makes every later call fail with errDead, for good.
func (s *testStorage) die() { s.dead.Store(true) }

// resetCounts sets every call count back to 0.
func (s *testStorage) resetCounts() {
	s.gets.Store(0)
	s.puts.Store(0)
	s.lists.Store(0)
	s.deletes.Store(0)
}

// everyPut fails every put, as logical.InmemStorage's FailPut(true) does.
func everyPut(storageWrite) bool { return true }

// intentWrite reports whether w is the write of an account's entry that holds
// a rotation intent record: the write made before a refresh is sent.
func (w storageWrite) intentWrite() bool { return w.entry != nil && w.entry.RotationIntent != nil }

// pairWrite reports whether w is the write of an account's entry with no
// intent record: the new pair's, after a refresh (or an account's creation).
func (w storageWrite) pairWrite() bool { return w.entry != nil && w.entry.RotationIntent == nil }

func (s *testStorage) List(ctx context.Context, prefix string) ([]string, error) {
	s.lists.Add(1)
	if s.dead.Load() {
		return nil, errDead
	}
	return s.inner.List(ctx, prefix)
}

func (s *testStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.gets.Add(1)
	if s.dead.Load() {
		return nil, errDead
	}
	s.mu.Lock()
	fail := s.failGet
	s.mu.Unlock()
	if fail != nil && fail(key) {
		return nil, errStorageFault
	}
	return s.inner.Get(ctx, key)
}

func (s *testStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.puts.Add(1)
	if s.dead.Load() {
		return errDead
	}
	s.mu.Lock()
	fail := s.failPut
	s.mu.Unlock()
	if fail != nil {
		w, err := decodeWrite(e)
		if err != nil {
			return err
		}
		if fail(w) {
			return errStorageFault
		}
	}
	return s.inner.Put(ctx, e)
}

func (s *testStorage) Delete(ctx context.Context, key string) error {
	s.deletes.Add(1)
	if s.dead.Load() {
		return errDead
	}
	return s.inner.Delete(ctx, key)
}

// decodeWrite decodes the entry that a put writes. An entry under accounts/
// that is not an accountEntry is an error: a fault that cannot see what is
// written must not guess.
func decodeWrite(e *logical.StorageEntry) (storageWrite, error) {
	w := storageWrite{key: e.Key}
	name, ok := strings.CutPrefix(e.Key, accountPrefix)
	if !ok {
		return w, nil
	}
	var a accountEntry
	if err := json.Unmarshal(e.Value, &a); err != nil {
		return w, fmt.Errorf("test storage: %s does not decode as an account entry: %w", e.Key, err)
	}
	w.account, w.entry = name, &a
	return w, nil
}

// The wrapper's faults are decided on the decoded entry: the write of an
// intent record is told from the new pair's write whatever the JSON looks
// like.
func TestTestStorageDecidesFaultsOnTheDecodedEntry(t *testing.T) {
	ctx := t.Context()
	s := newTestStorage(&logical.InmemStorage{})
	withIntent := &accountEntry{Username: "u", Generation: 1, RotationIntent: &rotationIntent{Generation: 1, StartedAt: time.Now()}}
	withoutIntent := &accountEntry{Username: "u", Generation: 2}

	s.failPuts(func(w storageWrite) bool { return w.account == "app" && w.intentWrite() })
	if err := saveAccount(ctx, s, "app", withIntent); !errors.Is(err, errStorageFault) {
		t.Errorf("the intent write of app: %v, want the injected fault", err)
	}
	if err := saveAccount(ctx, s, "other", withIntent); err != nil {
		t.Errorf("the intent write of another account: %v", err)
	}
	if err := saveAccount(ctx, s, "app", withoutIntent); err != nil {
		t.Errorf("the pair write of app: %v", err)
	}
	if err := savePassword(ctx, s, "app", "pw"); err != nil {
		t.Errorf("a password write: %v", err)
	}

	s.failPuts(func(w storageWrite) bool { return w.pairWrite() })
	if err := saveAccount(ctx, s, "app", withoutIntent); !errors.Is(err, errStorageFault) {
		t.Errorf("the pair write: %v, want the injected fault", err)
	}
	if err := saveAccount(ctx, s, "app", withIntent); err != nil {
		t.Errorf("the intent write: %v", err)
	}
	if err := s.Put(ctx, &logical.StorageEntry{Key: accountKey("app"), Value: []byte("not json")}); err == nil || errors.Is(err, errStorageFault) {
		t.Errorf("an undecodable account entry: %v, want a decoding error", err)
	}
	s.failPuts(nil)

	s.failGets(func(key string) bool { return key == accountKey("app") })
	if _, err := loadAccount(ctx, s, "app"); !errors.Is(err, errStorageFault) {
		t.Errorf("a failed get: %v", err)
	}
	if _, err := loadAccount(ctx, s, "other"); err != nil {
		t.Errorf("another get: %v", err)
	}
	s.failGets(nil)

	if got := [...]int64{s.gets.Load(), s.puts.Load(), s.lists.Load(), s.deletes.Load()}; got != [...]int64{2, 7, 0, 0} {
		t.Errorf("counts (gets, puts, lists, deletes) = %v", got)
	}
	s.resetCounts()
	s.die()
	if _, err := s.List(ctx, accountPrefix); !errors.Is(err, errDead) {
		t.Errorf("list when dead: %v", err)
	}
	if _, err := s.Get(ctx, accountKey("app")); !errors.Is(err, errDead) {
		t.Errorf("get when dead: %v", err)
	}
	if err := saveAccount(ctx, s, "app", withoutIntent); !errors.Is(err, errDead) {
		t.Errorf("put when dead: %v", err)
	}
	if err := s.Delete(ctx, accountKey("app")); !errors.Is(err, errDead) {
		t.Errorf("delete when dead: %v", err)
	}
	if got := [...]int64{s.gets.Load(), s.puts.Load(), s.lists.Load(), s.deletes.Load()}; got != [...]int64{1, 1, 1, 1} {
		t.Errorf("counts when dead (gets, puts, lists, deletes) = %v", got)
	}
}

// A refreshed pair that storage refuses is tried again within the request,
// for up to persistFor: on Raft a refused write is a node stepping down,
// which tears the plugin process down once the request ends, so a pair
// stored by a later attempt is one that a pair kept in memory would not be.
func TestPairWriteIsTriedAgainUntilStorageTakesIt(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configureUnchecked()
	e.createAccount("app", nil)
	e.b.store.persistFor = 5 * time.Second
	storage := e.wrapStorage()
	var refused atomic.Int64
	storage.failPuts(func(w storageWrite) bool {
		return w.account == "app" && w.pairWrite() && refused.Add(1) <= 4
	})
	e.clock.Advance(2 * time.Hour)
	start := time.Now()
	tok := e.creds("app").Data["access_token"].(string)
	took := time.Since(start)
	if refused.Load() != 5 {
		t.Fatalf("%d pair writes, want 4 refused and the 5th stored", refused.Load())
	}
	if took > 4*time.Second {
		t.Errorf("the pair was stored after %v: the pauses are too long", took)
	}
	if !e.fake.AccessTokenValid(tok) {
		t.Fatal("served token not valid")
	}
	issued := e.fake.IssuedRefreshTokens()
	if a := e.stored("app"); a.RefreshToken != issued[len(issued)-1] || a.RotationIntent != nil {
		t.Errorf("storage does not hold the new pair (intent %v)", a.RotationIntent)
	}
	if e.b.store.hasUnsaved("app") {
		t.Error("a stored pair is still held in memory")
	}
	// A new process (the one Vault starts after a step-down) has the chain.
	e.restart()
	e.clock.Advance(2 * time.Hour)
	e.creds("app")
	e.assertNoTokenUsedTwice()
	if c := e.fake.Counters(); c.Grants["refresh_token"]["success"] != 2 || c.LiveRefreshTokens != 1 {
		t.Errorf("after a restart: %+v", c)
	}
}

// Storage that refuses the pair for longer than persistFor: the pair is kept
// in memory, and the request is answered, after about persistFor.
func TestPairRefusedForLongerThanPersistForIsKeptInMemory(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configureUnchecked()
	e.createAccount("app", nil)
	e.b.store.persistFor = 300 * time.Millisecond
	storage := e.wrapStorage()
	storage.failPuts(func(w storageWrite) bool { return w.account == "app" && w.pairWrite() })
	e.clock.Advance(2 * time.Hour)
	start := time.Now()
	tok := e.creds("app").Data["access_token"].(string)
	if took := time.Since(start); took < 300*time.Millisecond || took > 3*time.Second {
		t.Errorf("answered after %v, want about persistFor (300ms)", took)
	}
	if !e.fake.AccessTokenValid(tok) || !e.b.store.hasUnsaved("app") {
		t.Fatalf("want the new pair served and kept in memory")
	}
	storage.failPuts(nil)
	e.b.store.flush(t.Context(), storage)
	if e.b.store.hasUnsaved("app") || e.stored("app").RotationIntent != nil {
		t.Error("the flush did not store the pair")
	}
}

// A pair held in memory is written only while storage still holds the chain
// it was refreshed from. Once another writer has moved storage on (another
// node that took over while this one could not write, or an operator), the
// pair is stale: it is dropped, and never overwrites the newer chain.
func TestStalePairInMemoryNeverOverwritesANewerChain(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configureUnchecked()
	e.createAccount("app", nil)
	storage := e.wrapStorage()
	storage.failPuts(func(w storageWrite) bool { return w.account == "app" && w.pairWrite() })
	e.clock.Advance(2 * time.Hour)
	mine := e.creds("app").Data["access_token"].(string)
	if !e.b.store.hasUnsaved("app") {
		t.Fatal("want the new pair held in memory")
	}
	storage.failPuts(nil)

	// Another node took over: from the intent record it finds, it starts a
	// new chain (here: the same generation, another refresh token).
	ctx := t.Context()
	theirs, err := loadAccount(ctx, storage, "app")
	if err != nil || theirs.RotationIntent == nil {
		t.Fatalf("want the intent record in storage: %+v, %v", theirs, err)
	}
	theirs.Generation++
	theirs.RotationIntent = nil
	theirs.RefreshToken, theirs.AccessToken = "their-refresh-token", "their-access-token"
	theirs.AccessTokenExpiresAt = e.clock.Now().Add(time.Hour)
	if err := saveAccount(ctx, storage, "app", theirs); err != nil {
		t.Fatal(err)
	}

	e.b.store.flush(ctx, storage)
	if e.b.store.hasUnsaved("app") {
		t.Error("the stale pair is still held in memory")
	}
	if got := e.stored("app"); got.RefreshToken != "their-refresh-token" {
		t.Errorf("storage holds %q: the stale pair overwrote the newer chain", got.RefreshToken)
	}
	if got := e.creds("app").Data["access_token"]; got != "their-access-token" {
		t.Errorf("creds serves %v (mine %v), want the stored chain's token", got, mine)
	}
}
