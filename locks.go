package ermeosecrets

import (
	"hash/maphash"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/lockorder"
)

// The backend's locks and synchronisation, all of them, and the one order in
// which they may be taken. Tests, the campaigns and the e2e tests' plugin
// build check it (-tags lockorder, internal/lockorder): any two locks ever
// taken in both orders, or a goroutine taking a second outer lock, are
// reported. Release builds use plain sync.
//
// The order: one "outer" lock (an account lock or the config lock; never
// both, never two account locks), then the store lock; nothing else is ever
// held under another lock.
//
//	account lock  accountStore.locks: one per account (hashed into 256),
//	              serializing every read-modify-write of the account and
//	              every rotation of its refresh chain; held across that
//	              account's storage and Ermeo calls.
//	config lock   backend.configMu: serializes config writes, each a
//	              read-modify-write of the one config entry with its
//	              credentials check, held across both. The refresh path never
//	              writes config (the detected body format is recorded by the
//	              config write's check, or by the periodic tick before it
//	              takes any account lock).
//	store lock    accountStore.mu: all of the store's memory. Taken last, or
//	              alone; held only for memory work, never across a storage or
//	              Ermeo call; only the SDK queue's own lock is taken under it.
//
// Without a lock: backend.config is an atomic pointer to the cached config
// and its Ermeo client, replaced whole, never changed in place; a schedule
// load in progress is cancelled by its context and waited for on its done
// channel (accountStore.stopLoad), never under a lock; the metrics collector
// finds the backend through an atomic pointer (metrics.go).

// outerLock is an account lock or the config lock.
type outerLock = lockorder.Outer

// accountLockCount is how many locks the accounts are hashed into.
const accountLockCount = 256

type accountLocks struct {
	seed  maphash.Seed
	locks [accountLockCount]outerLock
}

func newAccountLocks() *accountLocks { return &accountLocks{seed: maphash.MakeSeed()} }
