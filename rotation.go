package ermeosecrets

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
)

// The refresh protocol. An Ermeo refresh token works once, so every step here
// is ordered so that a crash, a lost answer or a failed write at any point
// leaves a state the plugin can recognise and resolve:
//
//  1. Under the account's lock, re-read the account from storage: a token whose
//     successor is already stored is never sent again.
//  2. Write the rotation intent record (the generation about to be spent, the
//     time) to storage. If that write fails, nothing is sent.
//  3. Send the refresh on a context detached from the caller's, bounded by
//     request_timeout: a caller who gives up does not cancel it.
//  4. Success: store the new pair and clear the intent in one write, before
//     the access token is handed to anyone. If the write fails, keep the pair
//     in memory, serve it, and write it again at the next chance.
//     Rejected with invalid_grant: the chain is gone; re-bootstrap with a kept
//     password, or mark the account needs_reauth.
//     Outcome unknown (timeout, reset, 5xx, 429, garbage): the token may be
//     spent; keep the intent record, keep serving the current access token,
//     and let the next refresh find out.

// persistAttempts is how many times a refreshed pair's storage write is tried
// before the pair is kept in memory instead.
const persistAttempts = 3

// errNeedsReauth is the error of an account whose chain is gone.
type errNeedsReauth struct {
	mount, name, reason string
}

func (e *errNeedsReauth) Error() string {
	return fmt.Sprintf("account %q needs re-authentication: %s. Run: vault write %saccounts/%s password=<the Ermeo password of this account>",
		e.name, e.reason, e.mount, e.name)
}

// unsavedAccount returns a copy of a refreshed pair that could not be
// written yet, or nil.
func (b *backend) unsavedAccount(name string) *accountEntry {
	b.unsavedMu.Lock()
	defer b.unsavedMu.Unlock()
	if a := b.unsaved[name]; a != nil {
		c := *a
		return &c
	}
	return nil
}

// storeAccountLocked writes an account. Called with the account's lock held.
// With keepOnFailure, a failed write keeps the entry in memory (served, and
// written again later) instead of returning the error: that is how a refresh
// token Ermeo already issued is never dropped.
func (b *backend) storeAccountLocked(ctx context.Context, s logical.Storage, name string, a *accountEntry, keepOnFailure bool) error {
	var err error
	attempts := 1
	if keepOnFailure {
		attempts = persistAttempts
	}
	for i := 0; i < attempts; i++ {
		if err = b.saveAccountLocked(ctx, s, name, a); err == nil {
			b.unsavedMu.Lock()
			delete(b.unsaved, name)
			b.unsavedMu.Unlock()
			return nil
		}
	}
	if !keepOnFailure {
		return err
	}
	b.Logger().Error("could not store a refreshed token pair; keeping it in memory and serving it until it can be stored",
		"account", name, "generation", a.Generation, "error", err)
	c := *a
	b.unsavedMu.Lock()
	b.unsaved[name] = &c
	b.unsavedMu.Unlock()
	return nil
}

// flushUnsavedLocked writes a refreshed pair held in memory, if there is one.
// Called with the account's lock held.
func (b *backend) flushUnsavedLocked(ctx context.Context, s logical.Storage, name string) error {
	b.unsavedMu.Lock()
	pending := b.unsaved[name]
	b.unsavedMu.Unlock()
	if pending == nil {
		return nil
	}
	return b.storeAccountLocked(ctx, s, name, pending, false)
}

// flushUnsaved tries to write the refreshed pairs held in memory: called by
// readers of such an account and by every periodic tick, so that a pair
// waits in memory, where a crash would lose it, no longer than it must.
func (b *backend) flushUnsaved(ctx context.Context, s logical.Storage, names ...string) {
	if len(names) == 0 {
		b.unsavedMu.Lock()
		for name := range b.unsaved {
			names = append(names, name)
		}
		b.unsavedMu.Unlock()
	}
	for _, name := range names {
		lock := b.accountLock(name)
		lock.Lock()
		if err := b.flushUnsavedLocked(context.WithoutCancel(ctx), s, name); err != nil {
			b.Logger().Error("a refreshed token pair is still only in memory; storage refuses it", "account", name, "error", err)
		}
		lock.Unlock()
	}
}

func (b *backend) hasUnsaved(name string) bool {
	b.unsavedMu.Lock()
	defer b.unsavedMu.Unlock()
	return b.unsaved[name] != nil
}

func (b *backend) forgetUnsaved(name string) {
	b.unsavedMu.Lock()
	delete(b.unsaved, name)
	b.unsavedMu.Unlock()
}

// upstreamContext detaches ctx from its caller's cancellation and bounds it by
// the configured request timeout: a refresh in flight is never cancelled by a
// caller who gave up.
func upstreamContext(ctx context.Context, cfg *configEntry) (context.Context, context.CancelFunc) {
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = defaultRequestTimeout
	}
	return context.WithTimeout(context.WithoutCancel(ctx), timeout)
}

func (b *backend) client(cfg *configEntry) (*ermeo.Client, error) {
	hc, err := b.httpClientFor(cfg)
	if err != nil {
		return nil, err
	}
	return ermeo.New(clientConfig(cfg, hc))
}

// startChain records a new chain from a grant's answer onto a.
func (b *backend) startChain(a *accountEntry, tok *ermeo.Token) {
	now := b.now()
	a.AccessToken = tok.AccessToken
	a.AccessTokenExpiresAt = now.Add(tok.ExpiresIn)
	if tok.RefreshToken != "" {
		a.RefreshToken = tok.RefreshToken
		a.RefreshTokenIssuedAt = now
	}
	a.Generation++
	a.LastRotation = now
	a.LastError = ""
	a.State = stateActive
	a.RotationIntent = nil
	a.NextAttemptAt = time.Time{}
}

// rotation is one run of the refresh protocol for one account.
type rotation struct {
	storage logical.Storage
	cfg     *configEntry
	mount   string // for the commands named in errors, e.g. "ermeo/"
	name    string
	// force is an operator's rotate: it does not wait out the backoff that
	// follows an unanswered refresh.
	force bool
}

// crashPoint names a step of the protocol after which a test can make the
// plugin "crash": return at once, with nothing more written or sent.
type crashPoint int

const (
	crashAfterIntent   crashPoint = iota + 1 // the intent record is stored; nothing sent
	crashAfterUpstream                       // Ermeo was called; its answer is dropped unread
	crashAfterWrite                          // the new pair is stored; not yet handed out
)

var errSimulatedCrash = errors.New("simulated crash")

func (b *backend) crashed(p crashPoint) bool {
	return b.crashHook != nil && b.crashHook(p)
}

// errBackoff is the error of a refresh that waits after an unanswered one.
type errBackoff struct {
	until time.Time
	last  string
}

func (e *errBackoff) Error() string {
	return fmt.Sprintf("Ermeo did not answer the last refresh (%s); the stored refresh token may be spent, and the next attempt waits until %s",
		e.last, formatTime(e.until))
}

// Backoff after a refresh that got no answer: 5s, 10s, 20s, ... up to 10
// minutes, or the server's Retry-After if that is longer (up to an hour).
const (
	backoffBase          = 5 * time.Second
	backoffMax           = 10 * time.Minute
	retryAfterMax        = time.Hour
	passwordGrantBackoff = time.Minute
)

func backoffFor(attempts int, retryAfter time.Duration) time.Duration {
	d := backoffBase
	for i := 1; i < attempts && d < backoffMax; i++ {
		d *= 2
	}
	if d > backoffMax {
		d = backoffMax
	}
	if retryAfter > d {
		d = min(retryAfter, retryAfterMax)
	}
	return d
}

// rotateLocked spends the account's current refresh token for a new pair,
// following the protocol above. Called with the account's lock held, with a
// freshly read a; returns the account's new state. On error, the returned
// entry (if not nil) is the account's state after the attempt, whose access
// token may still be served while it lasts.
func (b *backend) rotateLocked(ctx context.Context, r rotation, a *accountEntry) (result *accountEntry, err error) {
	if !b.WriteSafeReplicationState() {
		// A performance standby or secondary: let Vault forward the request
		// to the node that may write, before anything is sent to Ermeo.
		return nil, logical.ErrReadOnly
	}
	defer func() {
		if result != nil && !errors.Is(err, errSimulatedCrash) {
			b.reschedule(r.name, result, r.cfg)
		}
	}()
	// Uncancellable from here: every storage write and the upstream call.
	ctx = context.WithoutCancel(ctx)
	s, name := r.storage, r.name
	if err := b.flushUnsavedLocked(ctx, s, name); err != nil {
		return a, fmt.Errorf("a refreshed token pair is still waiting to be stored; not refreshing again until it is: %w", err)
	}
	client, err := b.client(r.cfg)
	if err != nil {
		return a, err
	}
	if a.State == stateNeedsReauth && !a.PasswordKept {
		return a, &errNeedsReauth{mount: r.mount, name: name, reason: a.LastError}
	}
	if !r.force && b.now().Before(a.NextAttemptAt) {
		return a, logical.CodedError(http.StatusBadGateway, (&errBackoff{until: a.NextAttemptAt, last: a.LastError}).Error())
	}
	if a.State == stateNeedsReauth || a.RefreshToken == "" {
		return b.rebootstrapLocked(ctx, r, client, a, "the account has no usable refresh chain")
	}

	// 2. The intent record, before anything is sent.
	next := *a
	intent := rotationIntent{Generation: a.Generation, StartedAt: b.now()}
	if a.RotationIntent != nil {
		intent = *a.RotationIntent
	}
	intent.Attempts++
	next.RotationIntent = &intent
	next.NextAttemptAt = time.Time{}
	if err := b.saveAccountLocked(ctx, s, name, &next); err != nil {
		return a, fmt.Errorf("could not record the rotation before sending it, so nothing was sent: %w", err)
	}
	if b.crashed(crashAfterIntent) {
		return nil, errSimulatedCrash
	}

	// 3. The refresh, detached from the caller.
	rctx, cancel := upstreamContext(ctx, r.cfg)
	sent := time.Now()
	tok, err := client.RefreshGrant(rctx, a.RefreshToken)
	took := time.Since(sent)
	cancel()
	if b.crashed(crashAfterUpstream) {
		return nil, errSimulatedCrash
	}

	// 4. The outcome.
	var rejected *ermeo.RejectedError
	switch {
	case err == nil:
		b.startChain(&next, tok)
		if err := b.storeAccountLocked(ctx, s, name, &next, true); err != nil {
			return &next, err
		}
		if b.crashed(crashAfterWrite) {
			return nil, errSimulatedCrash
		}
		b.metrics.refresh("success", took)
		b.emit(ctx, eventRotated, r.mount, name, "generation", fmt.Sprint(next.Generation))
		b.Logger().Info("rotated refresh chain", "account", name, "generation", next.Generation)
		return &next, nil

	case errors.As(err, &rejected) && rejected.ChainGone():
		lostToNetwork := intent.Attempts > 1
		reason := fmt.Sprintf("Ermeo refused the refresh token (%s)", rejected.Error())
		if lostToNetwork {
			reason = fmt.Sprintf("an earlier refresh's answer was lost, and Ermeo now refuses the refresh token (%s)", rejected.Error())
		}
		b.Logger().Warn("refresh chain is gone", "account", name, "generation", a.Generation, "lost_to_network", lostToNetwork)
		b.metrics.refresh("chain_gone", took)
		how := "refused"
		if lostToNetwork {
			how = "lost_in_flight"
		}
		b.metrics.chainLost(how)
		b.emit(ctx, eventChainLost, r.mount, name, "generation", fmt.Sprint(a.Generation), "how", how)
		next.RefreshToken = ""
		next.RotationIntent = nil
		next.LastError = reason
		// Record that the token is dead before anything else, so that no
		// later process sends it again.
		if serr := b.saveAccountLocked(ctx, s, name, &next); serr != nil {
			b.Logger().Error("could not record that the chain is gone", "account", name, "error", serr)
		}
		return b.rebootstrapLocked(ctx, r, client, &next, reason)

	case errors.As(err, &rejected):
		// invalid_client, unauthorized_client, invalid_request: the server
		// checks these before it looks at the refresh token, which is unspent.
		next.RotationIntent = nil
		next.LastError = "refresh rejected: " + rejected.Error()
		b.metrics.refresh("rejected", took)
		b.emit(ctx, eventRotationFailed, r.mount, name, "error", rejected.Code)
		if serr := b.saveAccountLocked(ctx, s, name, &next); serr != nil {
			b.Logger().Error("could not store the rejected refresh's outcome", "account", name, "error", serr)
		}
		return &next, logical.CodedError(http.StatusBadGateway, "Ermeo rejected the refresh request: "+rejected.Error()+"; check "+r.mount+"config")

	default:
		// Outcome unknown: the refresh token may have been spent. Keep the
		// intent record and wait before the next attempt, which finds out.
		var unknown *ermeo.UnknownOutcomeError
		retryAfter := time.Duration(0)
		if errors.As(err, &unknown) {
			retryAfter = unknown.RetryAfter
		}
		next.NextAttemptAt = b.now().Add(backoffFor(intent.Attempts, retryAfter))
		b.metrics.refresh("unknown", took)
		b.emit(ctx, eventRotationFailed, r.mount, name, "error", "outcome_unknown")
		next.LastError = "refresh outcome unknown: " + err.Error()
		if serr := b.saveAccountLocked(ctx, s, name, &next); serr != nil {
			b.Logger().Error("could not store the unknown refresh's outcome", "account", name, "error", serr)
		}
		b.Logger().Warn("refresh outcome unknown; the refresh token may be spent", "account", name, "generation", a.Generation,
			"attempts", intent.Attempts, "next_attempt_at", next.NextAttemptAt, "error", err)
		return &next, logical.CodedError(http.StatusBadGateway, "Ermeo did not answer the refresh ("+err.Error()+"); the stored refresh token may be spent; the next attempt, from "+formatTime(next.NextAttemptAt)+", finds out")
	}
}

// rebootstrapLocked starts a new chain with the kept password, if the
// operator allowed one to be kept; otherwise it marks the account
// needs_reauth. Called with the account's lock held.
func (b *backend) rebootstrapLocked(ctx context.Context, r rotation, client *ermeo.Client, a *accountEntry, reason string) (*accountEntry, error) {
	s, name := r.storage, r.name
	next := *a
	password := ""
	if a.PasswordKept {
		var err error
		if password, err = loadPassword(ctx, s, name); err != nil {
			return a, err
		}
	}
	if password != "" {
		pctx, cancel := upstreamContext(ctx, r.cfg)
		tok, err := client.PasswordGrant(pctx, a.Username, password)
		cancel()
		if err == nil {
			b.startChain(&next, tok)
			if err := b.storeAccountLocked(ctx, s, name, &next, true); err != nil {
				return &next, err
			}
			b.metrics.chainRecovered()
			b.emit(ctx, eventRotated, r.mount, name, "generation", fmt.Sprint(next.Generation), "recovered", "true")
			b.Logger().Info("started a new refresh chain with the kept password", "account", name, "generation", next.Generation)
			return &next, nil
		}
		if ermeo.OutcomeOf(err) == ermeo.OutcomeUnknown {
			next.NextAttemptAt = b.now().Add(passwordGrantBackoff)
			next.LastError = reason + "; the password grant with the kept password got no answer: " + err.Error()
			if serr := b.saveAccountLocked(ctx, s, name, &next); serr != nil {
				return &next, serr
			}
			return &next, logical.CodedError(http.StatusBadGateway, next.LastError)
		}
		reason += "; the kept password was refused too (" + err.Error() + ")"
	}
	next.State = stateNeedsReauth
	next.RefreshToken = ""
	next.RotationIntent = nil
	next.LastError = reason
	if err := b.saveAccountLocked(ctx, s, name, &next); err != nil {
		return &next, err
	}
	return &next, &errNeedsReauth{mount: r.mount, name: name, reason: reason}
}
