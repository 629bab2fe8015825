package ermeosecrets

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/queue"
)

// Keep-alive: an Ermeo refresh token dies 2 weeks after it was issued, so a
// chain nobody reads must be rotated before then. Vault's periodic function
// (about once a minute, on the node that may write) rotates every account
// whose refresh token is older than its rotation_period.
//
// The schedule is kept in memory, in a priority queue keyed by account name
// and ordered by when each account is due, so that a tick reads storage only
// for the accounts that are due. It is loaded from storage at start-up
// (InitializeFunc) and updated by every write of an account. The plugin has no
// timer of its own: a plugin process orphaned by a killed Vault node does
// nothing.

// maxRotationsPerTick bounds one tick's work; the rest stays due for the next.
const maxRotationsPerTick = 100

type schedule struct {
	mu     sync.Mutex
	queue  *queue.PriorityQueue
	loaded bool // the queue holds every account
	// stopLoading cancels a load in progress (Clean).
	stopLoading context.CancelFunc
}

func newSchedule() *schedule {
	return &schedule{queue: queue.New()}
}

// dueAt is when the periodic function should next look at an account, and
// whether it should at all.
func dueAt(a *accountEntry, cfg *configEntry, now time.Time) (time.Time, bool) {
	switch {
	case a.State == stateNeedsReauth:
		// Only an operator (or a kept password, tried when the chain was
		// found gone) can restart it; retrying a refused password on a
		// timer could lock the user out.
		return time.Time{}, false
	case !a.NextAttemptAt.IsZero():
		return a.NextAttemptAt, true
	case a.RotationIntent != nil, a.RefreshToken == "", a.RefreshTokenIssuedAt.IsZero():
		// An interrupted refresh, or a chain to start: resolve it soon.
		return now, true
	default:
		return a.RefreshTokenIssuedAt.Add(effectiveRotationPeriod(a, cfg)), true
	}
}

// reschedule puts an account in the keep-alive schedule at its due time.
func (b *backend) reschedule(name string, a *accountEntry, cfg *configEntry) {
	_, _ = b.schedule.queue.PopByKey(name)
	due, ok := dueAt(a, cfg, b.now())
	if !ok {
		return
	}
	if err := b.schedule.queue.Push(&queue.Item{Key: name, Priority: due.Unix()}); err != nil {
		b.Logger().Error("could not schedule the account's keep-alive", "account", name, "error", err)
	}
}

// retryNextTick schedules an account that keepAlive could not handle for the
// next periodic tick.
func (b *backend) retryNextTick(name string) {
	_ = b.schedule.queue.Push(&queue.Item{Key: name, Priority: b.now().Add(time.Minute).Unix()})
}

func (b *backend) unschedule(name string) {
	_, _ = b.schedule.queue.PopByKey(name)
}

// initialize runs when the mount starts on a node that may write: it loads
// the schedule in the background, and reports interrupted refreshes.
func (b *backend) initialize(_ context.Context, req *logical.InitializationRequest) error {
	ctx, cancel := context.WithCancel(context.Background())
	b.schedule.mu.Lock()
	b.schedule.stopLoading = cancel
	b.schedule.mu.Unlock()
	go func() {
		if err := b.loadSchedule(ctx, req.Storage); err != nil && !errors.Is(err, context.Canceled) {
			b.Logger().Error("could not load the keep-alive schedule; the next periodic tick tries again", "error", err)
		}
	}()
	return nil
}

// clean stops what initialize started.
func (b *backend) clean(context.Context) {
	b.schedule.mu.Lock()
	defer b.schedule.mu.Unlock()
	if b.schedule.stopLoading != nil {
		b.schedule.stopLoading()
	}
}

// loadSchedule reads every account once and schedules it. Accounts with an
// intent record left behind are due at once: their stored refresh token may
// have been spent, and the next refresh finds out.
func (b *backend) loadSchedule(ctx context.Context, s logical.Storage) error {
	b.schedule.mu.Lock()
	defer b.schedule.mu.Unlock()
	if b.schedule.loaded {
		return nil
	}
	cfg, err := b.loadConfigCached(ctx, s)
	if err != nil {
		return err
	}
	names, err := listAccounts(ctx, s)
	if err != nil {
		return err
	}
	interrupted := 0
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		lock := b.accountLock(name)
		lock.RLock()
		a, err := b.loadAccountLocked(ctx, s, name)
		if err == nil && a != nil {
			b.reschedule(name, a, cfg)
			if a.RotationIntent != nil {
				interrupted++
				b.Logger().Warn("found an interrupted refresh: the stored refresh token may be spent; the next refresh finds out",
					"account", name, "generation", a.RotationIntent.Generation, "started_at", a.RotationIntent.StartedAt, "attempts", a.RotationIntent.Attempts)
			}
		}
		lock.RUnlock()
		if err != nil {
			return err
		}
	}
	b.schedule.loaded = true
	b.Logger().Info("keep-alive schedule loaded", "accounts", len(names), "interrupted_refreshes", interrupted)
	return nil
}

// rescheduleAll makes the next tick reload the schedule: after config changes
// the default rotation period.
func (b *backend) rescheduleAll() {
	b.schedule.mu.Lock()
	b.schedule.loaded = false
	b.schedule.mu.Unlock()
}

// periodic is Vault's periodic function: it rotates the chains that are due.
func (b *backend) periodic(ctx context.Context, req *logical.Request) error {
	if !b.WriteSafeReplicationState() {
		return nil
	}
	b.flushUnsaved(ctx, req.Storage)
	if err := b.loadSchedule(ctx, req.Storage); err != nil {
		return err
	}
	cfg, err := b.loadConfigCached(ctx, req.Storage)
	if err != nil || cfg == nil {
		return err
	}
	now := b.now()
	for i := 0; i < maxRotationsPerTick; i++ {
		item, err := b.schedule.queue.Pop()
		if errors.Is(err, queue.ErrEmpty) {
			return nil
		}
		if err != nil {
			return err
		}
		if item.Priority > now.Unix() {
			_ = b.schedule.queue.Push(item)
			return nil
		}
		b.keepAlive(ctx, req, cfg, item.Key)
	}
	return nil
}

// keepAlive rotates one account's chain if it is still due.
func (b *backend) keepAlive(ctx context.Context, req *logical.Request, cfg *configEntry, name string) {
	lock := b.accountLock(name)
	lock.Lock()
	defer lock.Unlock()
	a, err := b.loadAccountLocked(ctx, req.Storage, name)
	if err != nil {
		b.Logger().Error("keep-alive could not read the account", "account", name, "error", err)
		b.retryNextTick(name)
		return
	}
	if a == nil {
		return
	}
	if due, ok := dueAt(a, cfg, b.now()); !ok || due.After(b.now()) {
		b.reschedule(name, a, cfg)
		return
	}
	result, err := b.rotateLocked(ctx, rotation{storage: req.Storage, cfg: cfg, mount: req.MountPoint, name: name}, a)
	if result == nil {
		b.retryNextTick(name) // the rotation did not reschedule it
	}
	if err != nil {
		b.Logger().Warn("keep-alive rotation failed", "account", name, "error", err)
		return
	}
	b.Logger().Info("keep-alive rotated an idle chain", "account", name)
}
