package ermeosecrets

import "hash/maphash"

// The backend's locks and synchronisation, all of them, and the one order in
// which they may be taken. Tests, the campaigns and the e2e tests' plugin
// build run with -tags lockorder, under which every mutex here is a
// go-deadlock mutex that reports any two locks ever taken in both orders
// (see lockorder_check.go); release builds use plain sync.
//
// The order: an account lock or the config lock (never both, never two
// account locks: the "outer" locks, of which a goroutine holds at most one),
// then the store lock; nothing else is ever held under another lock. Under
// -tags lockorder go-deadlock reports any two locks taken in both orders,
// and outerLock reports a goroutine taking a second outer lock.
//
//	account lock  accountStore.locks: one per account (hashed into 256),
//	              serializing every read-modify-write of the account and
//	              every rotation of its refresh chain. Held across that
//	              account's storage and Ermeo calls. Never two at once.
//	config lock   backend.configMu: serializes config writes, each a
//	              read-modify-write of the one config entry with its
//	              credentials check, held across both. Never taken with an
//	              account lock held, nor an account lock under it: the
//	              refresh path never writes config (the detected body
//	              format is recorded by the config write's check, or by the
//	              periodic tick before it takes any account lock).
//	store lock    accountStore.mu: the account store's memory (cache, unsaved
//	              pairs, keep-alive schedule, schedule load). Taken last,
//	              under either of the above or alone; held only for memory
//	              work, never across a storage or Ermeo call; nothing is taken
//	              under it but the SDK queue's own internal lock.
//
// Without a lock: backend.config is an atomic pointer to the cached config
// and its Ermeo client, replaced whole and never changed in place; a
// schedule load in progress is cancelled by its context and waited for on
// its done channel (accountStore.stopLoad), never under a lock; the metrics
// collector finds the backend through an atomic pointer (metrics.go).

// outerLock is an account lock or the config lock: held across storage
// and Ermeo calls, and never two at once by one goroutine.
type outerLock struct{ mu mutex }

func (l *outerLock) Lock() {
	if lockOrderChecked {
		takingOuter(l)
	}
	l.mu.Lock()
}

func (l *outerLock) Unlock() {
	l.mu.Unlock()
	if lockOrderChecked {
		releasedOuter(l)
	}
}

// accountLockCount is how many locks the accounts are hashed into.
const accountLockCount = 256

// accountLocks is the table of account locks.
type accountLocks struct {
	seed  maphash.Seed
	locks [accountLockCount]outerLock
}

func newAccountLocks() *accountLocks { return &accountLocks{seed: maphash.MakeSeed()} }
