package ermeosecrets

import (
	"cmp"
	"context"
	"hash/maphash"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/lockorder"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/helper/backoff"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/queue"
)

// The account store: one mount's accounts, in storage and in memory. It alone
// touches the cache of entries, the overlay of refreshed pairs storage
// refused, the failures storage could not record, the renewable creds leases
// each Vault token was given lately, and the keep-alive schedule and its load
// (which backend.go begins, runs and stops). No mutex is held
// across a storage call (locks.go). An entry handed out is a copy: callers
// change their copy and put it.
//
// The storage keys, all seal-wrapped (sealWrappedPaths, in PathsSpecial):
//
//	config            configEntry (config.go)
//	accounts/<name>   accountEntry (account.go), its rotation intent record inside:
//	                  clearing it and storing the new pair is one atomic write
//	passwords/<name>  passwordEntry: kept only with store_password=true
const (
	configKey      = "config"
	accountPrefix  = "accounts/"
	passwordPrefix = "passwords/"
)

var sealWrappedPaths = []string{configKey, accountPrefix, passwordPrefix}

// writeMode says what put does when storage refuses the write.
type writeMode int

const (
	failWrite writeMode = iota // return storage's error: nothing changed
	// keepUnsaved, for a refreshed pair Ermeo already issued: put retries
	// (persist), then keeps the pair in memory, served and written again at
	// the next chance, and returns nil: a failed write never drops a refresh token.
	keepUnsaved
)

const (
	persistAttempts = 3           // persist's least number of tries
	persistPause    = time.Second // persist's longest pause
	// defaultPersistFor is how long put retries, within the request, a
	// refreshed pair that storage refuses. On integrated storage (Raft) that
	// is almost always a failed log write (a full disk): the node steps down
	// at once, and Vault's step-down tears down every mount, this process and
	// its memory included, after waiting for the requests in flight (up to
	// DefaultMaxRequestDuration, 90 s); Raft elects the node again once it
	// can write. A retried write is stored if the space comes back meanwhile;
	// a pair only in memory dies with the process. Measured by the e2e test TestFullDisk.
	defaultPersistFor = 30 * time.Second
	retryDelay        = time.Minute // see nextDue
)

// accountStore is the store above; mu guards its memory.
type accountStore struct {
	locks *accountLocks // one per account (locks.go)

	mu lockorder.Mutex
	// cache: name -> the entry storage holds, never mutated once stored, so
	// that a read of a token with enough life left makes no storage call.
	cache   map[string]*accountEntry
	unsaved map[string]*accountEntry // refreshed pairs storage refused (keepUnsaved)
	// failures: the last refresh storage refused before anything was sent,
	// which it could not record: the account's status shows it until the next write.
	failures map[string]string
	// leases: per account and Vault token, the renewable creds lease given
	// last, while later reads of its token generation by that Vault token
	// get a lease that is not renewable (path_creds.go's leaseHolder).
	leases map[string]map[string]renewableLease
	// leasesPruned: when leases last dropped what is past renewableLeaseWait
	// (once per wait, not at every claim: a new Vault token per read, as
	// ESO's, claims at every read).
	leasesPruned time.Time
	// changes counts the changes to cache and overlay: a read from storage
	// fills the cache only if none came while it read (it may be older).
	changes uint64
	queue   *queue.PriorityQueue // the keep-alive schedule: accounts by due time
	load    scheduleLoadState

	now    func() time.Time
	config func() *configEntry // the cached config, for its defaults; nil if none
	logger func() hclog.Logger
	// persistFor: see defaultPersistFor; 0 means persistAttempts tries without a pause.
	persistFor time.Duration
}

func newAccountStore(now func() time.Time, config func() *configEntry, logger func() hclog.Logger) *accountStore {
	return &accountStore{
		locks:      newAccountLocks(),
		cache:      map[string]*accountEntry{},
		unsaved:    map[string]*accountEntry{},
		failures:   map[string]string{},
		leases:     map[string]map[string]renewableLease{},
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

// get is the newest known state (overlay, cache or storage), without the
// account's lock, for reads that hand out a token with enough life left;
// anything that may spend a refresh token re-reads with getLocked.
func (s *accountStore) get(ctx context.Context, st logical.Storage, name string) (*accountEntry, error) {
	s.mu.Lock()
	a, changes := cmp.Or(s.unsaved[name], s.cache[name]), s.changes
	s.mu.Unlock()
	if a != nil {
		return a.clone(), nil
	}
	a, err := loadAccount(ctx, st, name)
	if err != nil || a == nil {
		return a, err
	}
	s.mu.Lock()
	if s.changes == changes && s.cache[name] == nil {
		s.cache[name] = a.clone()
	}
	s.mu.Unlock()
	return a, nil
}

// getLocked is the state under the account's lock: overlay or storage, never
// the cache, so that a token whose successor is already stored is never sent again.
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

// put is the one write of an account, under its lock: storage, then cache,
// overlay and schedule together.
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

// persist retries storing a pair whose first write failed with err: at least
// persistAttempts tries and for up to persistFor, pauses doubling (jittered)
// from 50 ms to persistPause. It returns the last error, or nil once stored.
func (s *accountStore) persist(ctx context.Context, st logical.Storage, name string, a *accountEntry, err error) error {
	// The pair is worth more than the request: a reader giving up can't stop it.
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

// remove forgets an account everywhere, under its lock.
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
	cached := maps.Clone(s.cache)
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

// noteFailure records why storage refused the account's refresh (see
// failures); failure returns it, or "".
func (s *accountStore) noteFailure(name, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures[name] = msg
}

func (s *accountStore) failure(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failures[name]
}

// renewableLease is the renewable creds lease a Vault token was given last on
// one token generation of an account, and how many reads of that generation
// by that Vault token were answered with a lease that is not renewable since.
type renewableLease struct {
	generation uint64
	at         time.Time
	passed     int
}

// claimRenewableLease reports whether a creds read of the account's token
// generation by a Vault token (the salted ID Vault hands the plugin) may have
// a renewable lease, and if so records it. It may not within
// renewableLeaseWait of the last renewable lease of that generation given to
// that Vault token, for at most maxNotRenewable reads (see credsLease).
func (s *accountStore) claimRenewableLease(name, token string, generation uint64) bool {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.leases[name][token]; ok && l.generation == generation && now.Sub(l.at) < renewableLeaseWait && l.passed < maxNotRenewable {
		l.passed++
		s.leases[name][token] = l
		return false
	}
	if now.Sub(s.leasesPruned) >= renewableLeaseWait {
		s.leasesPruned = now
		for n, byToken := range s.leases {
			maps.DeleteFunc(byToken, func(_ string, l renewableLease) bool { return now.Sub(l.at) >= renewableLeaseWait })
			if len(byToken) == 0 {
				delete(s.leases, n)
			}
		}
	}
	if s.leases[name] == nil {
		s.leases[name] = map[string]renewableLease{}
	}
	s.leases[name][token] = renewableLease{generation: generation, at: now}
	return true
}

// hasUnsaved reports whether a refreshed pair of the account waits in memory.
func (s *accountStore) hasUnsaved(name string) bool { return s.unsavedCopy(name) != nil }

// flushLocked writes the account's pair held in memory, if any, with its lock
// held, if storage still holds what it followed from (the generation before,
// or the same pair). If storage has moved on (another node wrote after this
// one lost its place, in a partition or a full disk, or an operator did), the
// pair is stale: dropped, never overwriting a newer chain.
func (s *accountStore) flushLocked(ctx context.Context, st logical.Storage, name string) error {
	pending := s.unsavedCopy(name)
	if pending == nil {
		return nil
	}
	stored, err := loadAccount(ctx, st, name)
	if err != nil {
		return err
	}
	follows := stored != nil && (stored.Generation+1 == pending.Generation ||
		stored.Generation == pending.Generation && stored.RefreshToken == pending.RefreshToken)
	if !follows {
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

// flush writes the pairs held in memory (of names, or all); their readers and
// every tick call it, so a pair waits in memory, where a crash loses it, no longer than it must.
func (s *accountStore) flush(ctx context.Context, st logical.Storage, names ...string) {
	if len(names) == 0 {
		s.mu.Lock()
		names = slices.Collect(maps.Keys(s.unsaved))
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
// takes it out if it is never due; scheduleLocked is schedule with s.mu held.
func (s *accountStore) schedule(name string, a *accountEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scheduleLocked(name, a)
}

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

// nextDue returns the next account due by now, if any, and moves it
// retryDelay on: the keep-alive's write puts it where its entry says, and an
// account it could not touch (storage refused the read or write, or Ermeo did
// not answer before anything was written) is looked at again then.
func (s *accountStore) nextDue(now time.Time) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	item, err := s.queue.Pop() // only ever ErrEmpty
	if err != nil {
		return "", false
	}
	if item.Priority > now.Unix() {
		_ = s.queue.Push(item)
		return "", false
	}
	_ = s.queue.Push(&queue.Item{Key: item.Key, Priority: now.Add(retryDelay).Unix()})
	return item.Key, true
}

// scheduleLoadState is the schedule's load from storage, guarded by s.mu: at
// start-up, and at the tick after config changes the defaults of due times.
type scheduleLoadState struct {
	loaded     bool          // the queue holds every account, with config's current defaults
	everLoaded bool          // a load has completed in this process
	epoch      uint64        // bumped by reschedule: a load begun before it leaves loaded false
	inProgress *scheduleLoad // the load running now, or nil
	// scheduled: the accounts writes scheduled while the load in progress
	// ran; their entries are newer than what the load read.
	scheduled map[string]bool
}

// scheduleLoad is one load of the schedule, cancelled by stopLoad.
type scheduleLoad struct {
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
	epoch    uint64
	starting bool // no load completed before it in this process
}

// beginLoad registers a load and returns it, or nil when the schedule is
// loaded or being loaded (no need to wait: a tick rotates what is scheduled).
func (s *accountStore) beginLoad(ctx context.Context) *scheduleLoad {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.load.loaded || s.load.inProgress != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &scheduleLoad{ctx: ctx, cancel: cancel, done: make(chan struct{}), epoch: s.load.epoch, starting: !s.load.everLoaded}
	s.load.inProgress, s.load.scheduled = l, map[string]bool{}
	return l
}

// runLoad runs first (config's load), then reads every account once, without
// its lock, and schedules it unless a write did meanwhile; one with an intent
// record left behind is due at once (dueAt), and reported by a starting load
// only (a later one, after a config change, would find this process's own
// refreshes in flight). No lock is held across a storage call: stopLoad ends
// it within one.
func (s *accountStore) runLoad(l *scheduleLoad, st logical.Storage, first func(context.Context) error) (err error) {
	names, interrupted := []string(nil), 0
	defer func() {
		s.mu.Lock()
		s.load.inProgress, s.load.scheduled = nil, nil
		complete := err == nil && l.epoch == s.load.epoch
		s.load.loaded = s.load.loaded || complete
		s.load.everLoaded = s.load.everLoaded || complete
		s.mu.Unlock()
		l.cancel()
		close(l.done)
		if complete && l.starting {
			s.logger().Info("keep-alive schedule loaded", "accounts", len(names), "interrupted_refreshes", interrupted)
		}
	}()
	if err := first(l.ctx); err != nil {
		return err
	}
	if names, err = listAccounts(l.ctx, st); err != nil {
		return err
	}
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
		if a.RotationIntent != nil && l.starting {
			interrupted++
			s.logger().Warn("found an interrupted refresh: the stored refresh token may be spent; the next refresh finds out",
				"account", name, "generation", a.RotationIntent.Generation, "started_at", a.RotationIntent.StartedAt, "attempts", a.RotationIntent.Attempts)
		}
	}
	return nil
}

// stopLoad cancels the load in progress, if any, and waits for it to end.
func (s *accountStore) stopLoad() {
	s.mu.Lock()
	l := s.load.inProgress
	s.mu.Unlock()
	if l != nil {
		l.cancel()
		<-l.done
	}
}

// reschedule makes the next tick load the schedule again (config's defaults changed).
func (s *accountStore) reschedule() {
	s.mu.Lock()
	s.load.epoch++
	s.load.loaded = false
	s.mu.Unlock()
}
