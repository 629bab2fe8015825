package ermeosecrets

import (
	"context"

	"github.com/hashicorp/vault/sdk/logical"
)

// Keep-alive: an Ermeo refresh token dies 2 weeks after it was issued, so a
// chain nobody reads must be rotated before then. Vault's periodic function
// (about once a minute, on the node that may write) rotates every account
// whose refresh token is older than its rotation_period. The schedule, an
// in-memory priority queue of accounts by due time (store.go), lets a tick
// read storage only for the accounts that are due. The plugin has no timer of
// its own: a plugin process orphaned by a killed Vault node does nothing.

// maxRotationsPerTick bounds one tick's work; the rest stays due for the next.
const maxRotationsPerTick = 100

// periodic is Vault's periodic function: it rotates the chains that are due.
func (b *backend) periodic(ctx context.Context, req *logical.Request) error {
	if !b.WriteSafeReplicationState() {
		return nil
	}
	b.recordBodyFormat(ctx, req.Storage)
	b.store.flush(ctx, req.Storage)
	if err := b.loadSchedule(ctx, req.Storage); err != nil {
		return err
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil || cfg == nil {
		return err
	}
	now := b.now()
	seen := map[string]bool{}
	for i := 0; i < maxRotationsPerTick; i++ {
		name, ok := b.store.nextDue(now)
		if !ok {
			return nil
		}
		// An account is handled once a tick: one whose outcome could not be
		// written is still due now, and waits for the next tick.
		if seen[name] {
			continue
		}
		seen[name] = true
		b.keepAlive(ctx, req, cfg, name)
	}
	return nil
}

// keepAlive rotates one account's chain if it is still due; what it writes
// reschedules it, and an account left as it was comes back at a later tick.
func (b *backend) keepAlive(ctx context.Context, req *logical.Request, cfg *configEntry, name string) {
	lock := b.store.lock(name)
	lock.Lock()
	defer lock.Unlock()
	a, err := b.store.getLocked(ctx, req.Storage, name)
	if err != nil {
		b.Logger().Error("keep-alive could not read the account", "account", name, "error", err)
		return
	}
	if a == nil {
		return
	}
	if due, ok := dueAt(a, cfg, b.now()); !ok || due.After(b.now()) {
		b.store.schedule(name, a)
		return
	}
	if _, err := b.rotateLocked(ctx, accountOp{storage: req.Storage, cfg: cfg, mount: req.MountPoint, name: name}, a); err != nil {
		b.Logger().Warn("keep-alive rotation failed", "account", name, "error", err)
		return
	}
	b.Logger().Info("keep-alive rotated an idle chain", "account", name)
}
