package ermeosecrets

import (
	"context"
	"fmt"
	"hash/maphash"
	"math"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/helper/backoff"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/queue"
)

// The account store: what one mount knows of its accounts, in storage and in
// memory. It alone touches the cache of entries, the overlay of refreshed
// pairs that storage refused, the failures storage could not record, and
// the keep-alive schedule with its load from storage (backend.go starts and
// stops loads through beginLoad, runLoad and stopLoad). No mutex is held
// across a storage call (locks.go).
//
//	get        the newest known state, without the account's lock (overlay, cache or storage)
//	getLocked  the state under the account's lock: overlay or storage, never the cache
//	put        one write: storage, then cache, overlay and schedule together
//	remove     the account gone everywhere
//
// An entry handed out is a copy: callers change their copy and put it.
//
// The storage keys, every one seal-wrapped:
//
//	config            configEntry (config.go)
//	accounts/<name>   accountEntry (account.go), with the rotation intent
//	                  record inside, so that clearing it and storing the new
//	                  pair is one atomic write
//	passwords/<name>  passwordEntry: kept only with store_password=true
const (
	configKey      = "config"
	accountPrefix  = "accounts/"
	passwordPrefix = "passwords/"
)

// sealWrappedPaths are declared in PathsSpecial.SealWrapStorage: everything
// that holds a secret.
var sealWrappedPaths = []string{configKey, accountPrefix, passwordPrefix}

// writeMode says what put does when storage refuses the write.
type writeMode int

const (
	// failWrite returns storage's error: nothing changed.
	failWrite writeMode = iota
	// keepUnsaved is for a refreshed pair that Ermeo already issued: the
	// write is tried again for up to the store's persistFor, then the pair
	// is kept in memory (served, and written again at the next chance) and
	// put returns nil, so that a failed write never drops a refresh token.
	keepUnsaved
)

// persistAttempts is the least number of times put tries to store a
// refreshed pair before it keeps it in memory instead.
const persistAttempts = 3

// defaultPersistFor is how long put keeps trying to store a refreshed pair
// that storage refuses, within the request that got it, before keeping it in
// memory. On integrated storage (Raft) a refused write is, almost always, a
// Raft log write that failed (a full disk): the node steps down at once, and
// Vault's step-down tears down every mount, this plugin process included,
// and with it anything held in memory. But the step-down first waits for the
// requests in flight (up to Vault's DefaultMaxRequestDuration, 90 s), and
// Raft elects the node again as soon as it can write; a write tried again
// within the request is stored if the space comes back meanwhile, where a
// pair only in memory dies with the process. Measured by the e2e test
// TestFullDisk.
const defaultPersistFor = 30 * time.Second

// persistPause is the longest pause between two attempts to store a pair.
const persistPause = time.Second

// retryDelay is when an account whose state could not be read is looked at again.
const retryDelay = time.Minute

// accountStore holds what is known of every account of one mount. Its
// memory is guarded by mu, which is never held across a storage or Ermeo
// call (see locks.go).
type accountStore struct {
	// locks serialize every read-modify-write of one account and every
	// rotation of its refresh chain. Never hold two at once.
	locks *accountLocks

	mu mutex
	// cache is what storage holds, so that a read of a token with enough
	// life left makes no storage call: name -> entry, never mutated once
	// stored. Written through by put; dropped by invalidate.
	cache map[string]*accountEntry
	// unsaved holds, per account, a refreshed pair whose storage write
	// failed: served from memory and written again at the next chance.
	unsaved map[string]*accountEntry
	// failures holds, per account, the last refresh that storage refused
	// before anything was sent: storage could not record it, so the
	// account's status shows it from here until the next write.
	failures map[string]string
	// changes counts the changes to cache and overlay by writes, deletes and
	// invalidations: a read from storage fills the cache only if none came
	// while it read, since what it read may be older than what they did.
	changes uint64
	// queue is the keep-alive schedule: each account by when it is due.
	queue *queue.PriorityQueue
	// load is the schedule's load from storage (see loadSchedule).
	load scheduleLoadState

	now    func() time.Time
	config func() *configEntry // the cached config, for config's defaults; nil if none
	logger func() hclog.Logger
	// persistFor is how long (real time) put tries to store a refreshed
	// pair before keeping it in memory (defaultPersistFor; 0: persistAttempts
	// attempts without a pause).
	persistFor time.Duration
}

func newAccountStore(now func() time.Time, config func() *configEntry, logger func() hclog.Logger) *accountStore {
	return &accountStore{
		locks:      newAccountLocks(),
		cache:      map[string]*accountEntry{},
		unsaved:    map[string]*accountEntry{},
		failures:   map[string]string{},
		queue:      queue.New(),
		now:        now,
		config:     config,
		logger:     logger,
		persistFor: defaultPersistFor,
	}
}

// lock returns the lock that serializes everything done to one account.
func (s *accountStore) lock(name string) *outerLock {
	return &s.locks.locks[maphash.String(s.locks.seed, name)%accountLockCount]
}

// get returns the newest known state of an account without taking its lock:
// a refreshed pair waiting to be stored, or the cached entry, or storage. For
// reads that hand out a token with enough life left; anything that may spend
// a refresh token re-reads with getLocked.
func (s *accountStore) get(ctx context.Context, st logical.Storage, name string) (*accountEntry, error) {
	s.mu.Lock()
	a := s.unsaved[name]
	if a == nil {
		a = s.cache[name]
	}
	changes := s.changes
	s.mu.Unlock()
	if a != nil {
		return a.clone(), nil
	}
	a, err := loadAccount(ctx, st, name)
	if err != nil || a == nil {
		return a, err
	}
	// A write, delete or invalidation meanwhile is newer than this read:
	// it is not cached over them.
	s.mu.Lock()
	if s.changes == changes && s.cache[name] == nil {
		s.cache[name] = a.clone()
	}
	s.mu.Unlock()
	return a, nil
}

// getLocked re-reads an account from storage (or a refreshed pair waiting to
// be stored), never from the cache: a token whose successor is already
// stored is never sent again. Called with the account's lock held.
func (s *accountStore) getLocked(ctx context.Context, st logical.Storage, name string) (*accountEntry, error) {
	if a := s.unsavedCopy(name); a != nil {
		return a, nil
	}
	a, err := loadAccount(ctx, st, name)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.changes++
	if a == nil {
		delete(s.cache, name)
	} else {
		s.cache[name] = a.clone()
	}
	s.mu.Unlock()
	return a, nil
}

// put writes an account: storage first, then the cache, the overlay and the
// schedule, so that all four agree. Called with the account's lock held.
func (s *accountStore) put(ctx context.Context, st logical.Storage, name string, a *accountEntry, mode writeMode) error {
	err := saveAccount(ctx, st, name, a)
	if err != nil && mode == failWrite {
		return err
	}
	if err != nil {
		err = s.persist(ctx, st, name, a, err)
	}
	c := a.clone()
	s.mu.Lock()
	s.changes++
	delete(s.failures, name)
	if err != nil {
		s.unsaved[name] = c
	} else {
		delete(s.unsaved, name)
		s.cache[name] = c
	}
	s.scheduleLocked(name, a)
	s.mu.Unlock()
	if err != nil {
		s.logger().Error("could not store a refreshed token pair; keeping it in memory and serving it until it can be stored",
			"account", name, "generation", a.Generation, "error", err)
	}
	return nil
}

// persist tries again to store a refreshed pair whose first write failed
// with err: at least persistAttempts attempts in all, and for up to
// persistFor, with pauses doubling (jittered) from 50 ms to persistPause.
// It returns the last error, or nil once the pair is stored.
func (s *accountStore) persist(ctx context.Context, st logical.Storage, name string, a *accountEntry, err error) error {
	// The pair is worth more than the request: a reader that gives up
	// does not stop it from being stored.
	ctx = context.WithoutCancel(ctx)
	start := time.Now()
	s.logger().Warn("storage refused a refreshed token pair; trying again", "account", name, "generation", a.Generation,
		"for", s.persistFor, "error", err)
	pauses := backoff.NewBackoff(math.MaxInt, 50*time.Millisecond, persistPause)
	for attempt := 2; attempt <= persistAttempts || time.Since(start) < s.persistFor; attempt++ {
		if s.persistFor > 0 {
			pause, _ := pauses.Next() // never ErrMaxRetry: the limit is persistFor
			time.Sleep(pause)
		}
		if err = saveAccount(ctx, st, name, a); err == nil {
			s.logger().Info("stored the refreshed token pair", "account", name, "generation", a.Generation,
				"attempts", attempt, "after", time.Since(start).Round(time.Millisecond))
			return nil
		}
	}
	return err
}

// remove forgets an account everywhere. Called with its lock held.
func (s *accountStore) remove(ctx context.Context, st logical.Storage, name string) error {
	if err := deleteAccount(ctx, st, name); err != nil {
		return err
	}
	s.mu.Lock()
	s.changes++
	delete(s.cache, name)
	delete(s.unsaved, name)
	delete(s.failures, name)
	_, _ = s.queue.PopByKey(name)
	if s.load.inProgress != nil {
		s.load.scheduled[name] = true // a load that read it before must not schedule it
	}
	s.mu.Unlock()
	return nil
}

// invalidate drops a cached entry that another node changed.
func (s *accountStore) invalidate(name string) {
	s.mu.Lock()
	s.changes++
	delete(s.cache, name)
	delete(s.failures, name)
	s.mu.Unlock()
}

// each calls fn with every cached entry (never to be changed).
func (s *accountStore) each(fn func(name string, a *accountEntry)) {
	s.mu.Lock()
	cached := make(map[string]*accountEntry, len(s.cache))
	for name, a := range s.cache {
		cached[name] = a
	}
	s.mu.Unlock()
	for name, a := range cached {
		fn(name, a)
	}
}

func (s *accountStore) unsavedCopy(name string) *accountEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.unsaved[name]; a != nil {
		return a.clone()
	}
	return nil
}

// noteFailure records why storage refused the account's refresh (see failures).
func (s *accountStore) noteFailure(name, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures[name] = msg
}

// failure is the refresh that storage last refused for the account, or "".
func (s *accountStore) failure(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failures[name]
}

// hasUnsaved reports whether a refreshed pair of the account waits in memory.
func (s *accountStore) hasUnsaved(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unsaved[name] != nil
}

// unsavedCount is how many refreshed pairs wait in memory.
func (s *accountStore) unsavedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.unsaved)
}

// flushLocked writes a refreshed pair held in memory, if there is one.
// Called with the account's lock held.
//
// The pair is written only if storage still holds what it followed from
// (the generation before it, or the same chain): if storage has moved on,
// written by another node after this one lost its place (a partition, a
// full disk) or by an operator, the pair in memory is stale and is dropped,
// so that it never overwrites a newer chain.
func (s *accountStore) flushLocked(ctx context.Context, st logical.Storage, name string) error {
	pending := s.unsavedCopy(name)
	if pending == nil {
		return nil
	}
	stored, err := loadAccount(ctx, st, name)
	if err != nil {
		return err
	}
	if !followsFrom(pending, stored) {
		s.mu.Lock()
		s.changes++
		delete(s.unsaved, name)
		delete(s.cache, name)
		s.mu.Unlock()
		storedGen := uint64(0)
		if stored != nil {
			storedGen = stored.Generation
		}
		s.logger().Warn("dropped a refreshed token pair held in memory: storage has moved on since", "account", name,
			"generation", pending.Generation, "stored_generation", storedGen, "account_exists", stored != nil)
		return nil
	}
	return s.put(ctx, st, name, pending, failWrite)
}

// followsFrom reports whether pending, a pair held in memory, continues
// stored: the chain it was refreshed from, or the same chain.
func followsFrom(pending, stored *accountEntry) bool {
	switch {
	case stored == nil:
		return false
	case stored.Generation+1 == pending.Generation:
		return true
	default:
		return stored.Generation == pending.Generation && stored.RefreshToken == pending.RefreshToken
	}
}

// flush tries to write the refreshed pairs held in memory (of names, or all):
// called by readers of such an account and by every periodic tick, so that a
// pair waits in memory, where a crash would lose it, no longer than it must.
func (s *accountStore) flush(ctx context.Context, st logical.Storage, names ...string) {
	if len(names) == 0 {
		s.mu.Lock()
		for name := range s.unsaved {
			names = append(names, name)
		}
		s.mu.Unlock()
	}
	for _, name := range names {
		lock := s.lock(name)
		lock.Lock()
		if err := s.flushLocked(context.WithoutCancel(ctx), st, name); err != nil {
			s.logger().Error("a refreshed token pair is still only in memory; storage refuses it", "account", name, "error", err)
		}
		lock.Unlock()
	}
}

// schedule puts an account in the keep-alive schedule at its due time, or
// takes it out if it is not due at all.
func (s *accountStore) schedule(name string, a *accountEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scheduleLocked(name, a)
}

// scheduleLocked is schedule, with s.mu held.
func (s *accountStore) scheduleLocked(name string, a *accountEntry) {
	if s.load.inProgress != nil {
		s.load.scheduled[name] = true
	}
	_, _ = s.queue.PopByKey(name)
	due, ok := dueAt(a, s.config(), s.now())
	if !ok {
		return
	}
	if err := s.queue.Push(&queue.Item{Key: name, Priority: due.Unix()}); err != nil {
		s.logger().Error("could not schedule the account's keep-alive", "account", name, "error", err)
	}
}

// nextDue returns the next account due at or before now, if there is one,
// and moves it retryDelay on: whatever the keep-alive then writes puts it
// where its entry says, and an account it could not touch (storage refused
// the read, the write, or Ermeo did not answer before anything was written)
// is looked at again then.
func (s *accountStore) nextDue(now time.Time) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	item, err := s.queue.Pop()
	if err == queue.ErrEmpty {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if item.Priority > now.Unix() {
		_ = s.queue.Push(item)
		return "", false, nil
	}
	_ = s.queue.Push(&queue.Item{Key: item.Key, Priority: now.Add(retryDelay).Unix()})
	return item.Key, true, nil
}

// scheduleLoadState is the keep-alive schedule's load from storage (guarded
// by s.mu). The schedule is loaded once at start-up, and again at the tick
// after config changes the defaults that due times depend on.
type scheduleLoadState struct {
	loaded     bool          // the queue holds every account, with config's current defaults
	everLoaded bool          // a load has completed in this process
	epoch      uint64        // bumped by reschedule: a load begun before it leaves loaded false
	inProgress *scheduleLoad // the load running now, or nil
	// scheduled: the accounts that writes scheduled while the load in
	// progress ran; their entries are newer than what the load read.
	scheduled map[string]bool
}

// scheduleLoad is one load of the schedule, cancelled by stopLoad.
type scheduleLoad struct {
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	epoch  uint64
}

// beginLoad registers a load of the schedule and returns it, or nil when the
// schedule is loaded or a load is already running (which the caller need not
// wait for: a tick rotates what is scheduled so far).
func (s *accountStore) beginLoad(ctx context.Context) *scheduleLoad {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.load.loaded || s.load.inProgress != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &scheduleLoad{ctx: ctx, cancel: cancel, done: make(chan struct{}), epoch: s.load.epoch}
	s.load.inProgress, s.load.scheduled = l, map[string]bool{}
	return l
}

// runLoad runs a load begun by beginLoad: first (config's load), then every
// account read once, without its lock, and scheduled unless a write
// scheduled it meanwhile. Accounts with an intent record left behind are due
// at once: their stored refresh token may have been spent, and the next
// refresh finds out. No lock is held across a storage call, so stopLoad
// ends it within one storage call.
func (s *accountStore) runLoad(l *scheduleLoad, st logical.Storage, first func(context.Context) error) (err error) {
	names, interrupted := []string(nil), 0
	defer func() {
		s.mu.Lock()
		s.load.inProgress, s.load.scheduled = nil, nil
		complete := err == nil && l.epoch == s.load.epoch
		starting := complete && !s.load.everLoaded
		s.load.loaded = s.load.loaded || complete
		s.load.everLoaded = s.load.everLoaded || complete
		s.mu.Unlock()
		l.cancel()
		close(l.done)
		if starting {
			s.logger().Info("keep-alive schedule loaded", "accounts", len(names), "interrupted_refreshes", interrupted)
		}
	}()
	if err := first(l.ctx); err != nil {
		return err
	}
	if names, err = listAccounts(l.ctx, st); err != nil {
		return err
	}
	// Only the first load of a process reports interrupted refreshes: later
	// ones (after a config change) would find this process's own in flight.
	s.mu.Lock()
	starting := !s.load.everLoaded
	s.mu.Unlock()
	for _, name := range names {
		if err := l.ctx.Err(); err != nil {
			return err
		}
		a, err := s.get(l.ctx, st, name)
		if err != nil {
			return err
		}
		if a == nil {
			continue
		}
		s.mu.Lock()
		if !s.load.scheduled[name] {
			s.scheduleLocked(name, a)
		}
		s.mu.Unlock()
		if a.RotationIntent != nil && starting {
			interrupted++
			s.logger().Warn("found an interrupted refresh: the stored refresh token may be spent; the next refresh finds out",
				"account", name, "generation", a.RotationIntent.Generation, "started_at", a.RotationIntent.StartedAt, "attempts", a.RotationIntent.Attempts)
		}
	}
	return nil
}

// stopLoad cancels the load in progress, if any, and waits for it to end
// (within one storage call).
func (s *accountStore) stopLoad() {
	s.mu.Lock()
	l := s.load.inProgress
	s.mu.Unlock()
	if l != nil {
		l.cancel()
		<-l.done
	}
}

// reschedule makes the next tick load the schedule again: config changed the
// defaults that due times depend on.
func (s *accountStore) reschedule() {
	s.mu.Lock()
	s.load.epoch++
	s.load.loaded = false
	s.mu.Unlock()
}

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
