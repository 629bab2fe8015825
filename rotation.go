package ermeosecrets

import (
	"context"
	"encoding/json"
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

// needsReauthError is the error of an account whose chain is gone. It is a
// 400 (what to run is the operator's to do), except in the request that
// found Ermeo refusing the chain and recorded it, a 502: that request's
// failure came from Ermeo, and it changed what is stored.
type needsReauthError struct {
	mount, name, reason string
	foundNow            bool
}

func (e *needsReauthError) Error() string {
	return fmt.Sprintf("account %q needs re-authentication: %s. Run: vault write %saccounts/%s password=- (and type the account's Ermeo password on standard input, so that it stays out of your shell history)",
		e.name, e.reason, e.mount, e.name)
}

// statusError is a failure that the caller sees with its own HTTP status and
// message: a 502 when Ermeo did not answer, a 404 for an account that is not
// there. See errorResponse.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

func badGateway(format string, args ...any) error {
	return &statusError{code: http.StatusBadGateway, msg: fmt.Sprintf(format, args...)}
}

// errorResponse turns a handler's error into what the caller sees: a 400 for
// what an operator can fix, a status of its own (with Vault's {"errors": [...]}
// body, without the "1 error occurred" wrapping Vault gives coded errors), or
// the error itself (a 500, or logical.ErrReadOnly, which Vault forwards).
func errorResponse(err error) (*logical.Response, error) {
	var reauth *needsReauthError
	var se *statusError
	switch {
	case errors.As(err, &reauth) && reauth.foundNow:
		return errorResponse(badGateway("%s", err.Error()))
	case errors.As(err, &reauth):
		return logical.ErrorResponse(err.Error()), nil
	case errors.As(err, &se) && se.code == http.StatusBadRequest:
		return logical.ErrorResponse(se.msg), nil
	case errors.As(err, &se):
		body, jerr := json.Marshal(map[string][]string{"errors": {se.msg}})
		if jerr != nil {
			return nil, err
		}
		return &logical.Response{Data: map[string]any{
			logical.HTTPStatusCode:  se.code,
			logical.HTTPContentType: "application/json",
			logical.HTTPRawBody:     string(body),
		}}, nil
	default:
		return nil, err
	}
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

// accountOp is one run of the refresh protocol for one account.
type accountOp struct {
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

// errBackoff is the error of a refresh that waits after a failed one.
type errBackoff struct {
	until time.Time
	last  string
}

func (e *errBackoff) Error() string {
	return fmt.Sprintf("the last refresh failed (%s); the next attempt waits until %s", e.last, formatTime(e.until))
}

// Backoff after a refresh that got no answer or was rejected: 5s, 10s, 20s,
// ... up to 10 minutes, or the server's Retry-After if that is longer (up to
// an hour).
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
func (b *backend) rotateLocked(ctx context.Context, r accountOp, a *accountEntry) (*accountEntry, error) {
	if !b.WriteSafeReplicationState() {
		// A performance standby or secondary: let Vault forward the request
		// to the node that may write, before anything is sent to Ermeo.
		return nil, logical.ErrReadOnly
	}
	// Uncancellable from here: every storage write and the upstream call.
	ctx = context.WithoutCancel(ctx)
	if err := b.store.flushLocked(ctx, r.storage, r.name); err != nil {
		return a, b.storageRefused(r, fmt.Errorf("a refreshed token pair is still waiting to be stored; not refreshing again until it is: %w", err))
	}
	client, err := b.client(r.cfg)
	if err != nil {
		return a, err
	}
	if a.State == stateNeedsReauth && !a.PasswordKept {
		return a, &needsReauthError{mount: r.mount, name: r.name, reason: a.LastError}
	}
	if !r.force && b.now().Before(a.NextAttemptAt) && !a.backoffLifted(r.cfg) {
		return a, badGateway("%s", (&errBackoff{until: a.NextAttemptAt, last: a.LastError}).Error())
	}
	if a.State == stateNeedsReauth || a.RefreshToken == "" {
		return b.rebootstrapLocked(ctx, r, client, a, "the account has no usable refresh chain")
	}

	// 2. The intent record, before anything is sent.
	next := a.clone()
	intent := rotationIntent{Generation: a.Generation, StartedAt: b.now()}
	if a.RotationIntent != nil {
		intent = *a.RotationIntent
	}
	intent.Attempts++
	next.RotationIntent = &intent
	next.NextAttemptAt = time.Time{}
	if err := b.store.put(ctx, r.storage, r.name, next, failWrite); err != nil {
		return a, b.storageRefused(r, fmt.Errorf("could not record the rotation before sending it, so nothing was sent: %w", err))
	}
	if b.crashed(crashAfterIntent) {
		return nil, errSimulatedCrash
	}

	// 3. The refresh, detached from the caller.
	tok, sentAt, took, err := b.refreshGrant(ctx, r, client, a.RefreshToken)
	if b.crashed(crashAfterUpstream) {
		return nil, errSimulatedCrash
	}

	// 4. The outcome, recorded in one place.
	o := classifyRefresh(err, intent.Attempts)
	o.took, o.tok, o.sentAt = took, tok, sentAt
	next, err = b.recordLocked(ctx, r, next, o)
	if o.kind == outcomeChainGone && !errors.Is(err, errSimulatedCrash) {
		return b.rebootstrapLocked(ctx, r, client, next, next.LastError)
	}
	return next, err
}

// outcomeKind is what one refresh, adoption or password grant came to.
type outcomeKind int

const (
	outcomeRotated     outcomeKind = iota + 1 // a refresh gave a new pair
	outcomeChainGone                          // invalid_grant: the stored refresh token is dead
	outcomeRejected                           // refused before the token was looked at: unspent
	outcomeUnknown                            // no usable answer: the token may be spent
	outcomeRecovered                          // a new chain from the kept password
	outcomeRetryGrant                         // the kept password's grant got no answer
	outcomeNeedsReauth                        // no chain, and no password to start one
)

// outcome is one classified result of the protocol.
type outcome struct {
	kind outcomeKind
	err  error // Ermeo's error, if any
	// For refreshes: how long the call took, the new pair and when its
	// request was sent, and whether an earlier answer was lost (the intent
	// record had been tried before).
	took         time.Duration
	tok          *ermeo.Token
	sentAt       time.Time
	lostInFlight bool
	reason       string // for re-bootstraps: why the chain needed one
	attempts     int
}

// classifyRefresh sorts a refresh grant's result into an outcome.
func classifyRefresh(err error, attempts int) outcome {
	var rejected *ermeo.RejectedError
	o := outcome{err: err, attempts: attempts}
	switch {
	case err == nil:
		o.kind = outcomeRotated
	case errors.As(err, &rejected) && rejected.ChainGone():
		o.kind, o.lostInFlight = outcomeChainGone, attempts > 1
	case errors.As(err, &rejected):
		o.kind = outcomeRejected
	default:
		o.kind = outcomeUnknown
	}
	return o
}

// recordLocked turns an outcome into the account's stored state, the metric,
// the event and the log line, and returns the state and the caller's error.
// next is the account as the attempt left it. Called with the account's lock
// held.
func (b *backend) recordLocked(ctx context.Context, r accountOp, next *accountEntry, o outcome) (*accountEntry, error) {
	name, log := r.name, b.Logger()
	switch o.kind {
	case outcomeRotated, outcomeRecovered:
		b.applyGrant(next, o.tok, o.sentAt)
		if err := b.store.put(ctx, r.storage, name, next, keepUnsaved); err != nil {
			return next, err
		}
		if b.crashed(crashAfterWrite) {
			return nil, errSimulatedCrash
		}
		if o.kind == outcomeRecovered {
			b.metrics.chainRecovered()
			b.emit(ctx, eventRotated, r.mount, name, "generation", fmt.Sprint(next.Generation), "recovered", "true")
			log.Info("started a new refresh chain with the kept password", "account", name, "generation", next.Generation)
			return next, nil
		}
		b.metrics.refresh(o.kind.metricLabel(), o.took)
		b.emit(ctx, eventRotated, r.mount, name, "generation", fmt.Sprint(next.Generation))
		log.Info("rotated refresh chain", "account", name, "generation", next.Generation)
		return next, nil

	case outcomeChainGone:
		rejected := ermeo.Message(o.err)
		how := "refused"
		next.LastError = spentElsewhere(next, rejected, b.now(), r.mount)
		if o.lostInFlight {
			how = "lost_in_flight"
			next.LastError = fmt.Sprintf("an earlier refresh's answer was lost, and Ermeo now refuses the refresh token (%s)", rejected)
		}
		next.ChainLostAt, next.ChainLostHow = b.now(), how
		log.Warn("refresh chain is gone", "account", name, "generation", next.Generation, "how", how, "cause", next.LastError)
		b.metrics.refresh(o.kind.metricLabel(), o.took)
		b.metrics.chainLost(how)
		b.emit(ctx, eventChainLost, r.mount, name, "generation", fmt.Sprint(next.Generation), "how", how)
		// Record that the token is dead before anything else, so that no
		// later process sends it again; the caller then re-bootstraps.
		next.RefreshToken, next.RotationIntent = "", nil
		if err := b.store.put(ctx, r.storage, name, next, failWrite); err != nil {
			log.Error("could not record that the chain is gone", "account", name, "error", err)
		}
		return next, nil

	case outcomeRejected:
		// invalid_client, unauthorized_client, invalid_request: the server
		// checks these before it looks at the refresh token, which is unspent.
		var rejected *ermeo.RejectedError
		errors.As(o.err, &rejected)
		// It is not tried again before the backoff, unless config changes
		// (the operator fixed the client) or an operator forces a rotation.
		next.RotationIntent = nil
		next.Failures++
		next.NextAttemptAt = b.now().Add(backoffFor(next.Failures, 0))
		next.RejectedByConfig = r.cfg.Revision
		next.LastError = "Ermeo rejected the refresh request: " + rejected.Message()
		b.metrics.refresh(o.kind.metricLabel(), o.took)
		b.emit(ctx, eventRotationFailed, r.mount, name, "error", rejected.Code)
		if err := b.store.put(ctx, r.storage, name, next, failWrite); err != nil {
			log.Error("could not store the rejected refresh's outcome", "account", name, "error", err)
		}
		log.Warn("Ermeo rejected the refresh; the refresh token was not spent", "account", name, "generation", next.Generation,
			"next_attempt_at", next.NextAttemptAt, "error", rejected.Code)
		return next, badGateway("%s; the refresh token was not spent; check %sconfig (writing it lifts the wait until %s)", next.LastError, r.mount, formatTime(next.NextAttemptAt))

	case outcomeUnknown:
		// The refresh token may have been spent. Keep the intent record and
		// wait before the next attempt, which finds out.
		var unknown *ermeo.UnknownOutcomeError
		retryAfter := time.Duration(0)
		if errors.As(o.err, &unknown) {
			retryAfter = unknown.RetryAfter
		}
		next.Failures++
		next.NextAttemptAt = b.now().Add(backoffFor(max(o.attempts, next.Failures), retryAfter))
		next.LastError = "Ermeo did not answer the refresh: " + ermeo.Message(o.err)
		b.metrics.refresh(o.kind.metricLabel(), o.took)
		b.emit(ctx, eventRotationFailed, r.mount, name, "error", "outcome_unknown")
		if err := b.store.put(ctx, r.storage, name, next, failWrite); err != nil {
			log.Error("could not store the unknown refresh's outcome", "account", name, "error", err)
		}
		log.Warn("refresh outcome unknown; the refresh token may be spent", "account", name, "generation", next.Generation,
			"attempts", o.attempts, "next_attempt_at", next.NextAttemptAt, "error", o.err)
		return next, badGateway("%s; the stored refresh token may be spent; the next attempt, from %s, finds out", next.LastError, formatTime(next.NextAttemptAt))

	case outcomeRetryGrant:
		next.NextAttemptAt = b.now().Add(passwordGrantBackoff)
		next.LastError = o.reason + "; the password grant with the kept password got no answer: " + ermeo.Message(o.err)
		log.Warn("the kept password's grant got no answer", "account", name, "next_attempt_at", next.NextAttemptAt, "error", o.err)
		if err := b.store.put(ctx, r.storage, name, next, failWrite); err != nil {
			return next, err
		}
		return next, badGateway("%s", next.LastError)

	default: // outcomeNeedsReauth
		next.State, next.RefreshToken, next.RotationIntent = stateNeedsReauth, "", nil
		next.LastError = o.reason
		log.Warn("the account needs re-authentication", "account", name, "reason", o.reason)
		if err := b.store.put(ctx, r.storage, name, next, failWrite); err != nil {
			return next, err
		}
		return next, &needsReauthError{mount: r.mount, name: name, reason: o.reason, foundNow: true}
	}
}

// spentElsewhere says why a refresh token that no refresh of ours had sent
// (no intent record) was refused: it expired, or it was spent or revoked
// outside this mount. The likeliest cause after an operator's work is a
// restore of Vault's storage from a snapshot older than the chain's last
// rotation, which rewinds every account rotated since: they must all be
// rotated now, so that each finds out at once instead of at its next refresh.
func spentElsewhere(a *accountEntry, rejected string, now time.Time, mount string) string {
	if !a.RefreshTokenIssuedAt.IsZero() && now.After(a.RefreshTokenIssuedAt.Add(refreshTokenLifetime)) {
		return fmt.Sprintf("Ermeo refused the refresh token (%s): it expired, issued %s and unused for 2 weeks", rejected, formatTime(a.RefreshTokenIssuedAt))
	}
	return fmt.Sprintf("Ermeo refused the stored refresh token (%s), which no refresh of this mount had sent: it was spent or revoked elsewhere. "+
		"If Vault's storage was restored from a snapshot, every account rotated since the snapshot is in the same state: "+
		"rotate each now to find out (vault list %saccounts, then vault write -f %saccounts/<name>/rotate for each). "+
		"Otherwise another system holds this chain (another Vault, or a script given the same refresh token)", rejected, mount, mount)
}

// rebootstrapLocked starts a new chain with the kept password, if the
// operator allowed one to be kept; otherwise it marks the account
// needs_reauth. Called with the account's lock held.
func (b *backend) rebootstrapLocked(ctx context.Context, r accountOp, client *ermeo.Client, a *accountEntry, reason string) (*accountEntry, error) {
	password := ""
	if a.PasswordKept {
		var err error
		if password, err = loadPassword(ctx, r.storage, r.name); err != nil {
			return a, err
		}
	}
	o := outcome{kind: outcomeNeedsReauth, reason: reason}
	if password != "" {
		o.tok, o.sentAt, o.err = b.passwordGrant(ctx, r, client, a.Username, password)
		switch ermeo.OutcomeOf(o.err) {
		case ermeo.OutcomeSuccess:
			o.kind = outcomeRecovered
		case ermeo.OutcomeUnknown:
			o.kind = outcomeRetryGrant
		default:
			o.reason += "; the kept password was refused too (" + ermeo.Message(o.err) + ")"
		}
	}
	return b.recordLocked(ctx, r, a.clone(), o)
}

// passwordGrant runs Ermeo's password grant, detached from the caller and
// bounded by request_timeout, and counts its outcome. It returns when the
// request was sent, from which the new tokens' lives are counted.
func (b *backend) passwordGrant(ctx context.Context, r accountOp, client *ermeo.Client, username, password string) (*ermeo.Token, time.Time, error) {
	pctx, cancel := upstreamContext(ctx, r.cfg)
	defer cancel()
	sentAt := b.now()
	tok, err := client.PasswordGrant(pctx, username, password)
	b.metrics.passwordGrant(ermeo.OutcomeOf(err).String())
	return tok, sentAt, err
}

// refreshGrant spends a refresh token, detached from the caller and bounded
// by request_timeout. It returns when the request was sent, from which the
// new tokens' lives are counted, and how long the call took.
func (b *backend) refreshGrant(ctx context.Context, r accountOp, client *ermeo.Client, refreshToken string) (*ermeo.Token, time.Time, time.Duration, error) {
	rctx, cancel := upstreamContext(ctx, r.cfg)
	defer cancel()
	sentAt, sent := b.now(), time.Now()
	tok, err := client.RefreshGrant(rctx, refreshToken)
	took := time.Since(sent)
	return tok, sentAt, took, err
}

// grantError turns a failed password grant or adoption into what the
// operator sees: a 400 naming what they can fix, or a 502 when Ermeo did not
// answer. field is the request's field that Ermeo refused (password or
// refresh_token).
func grantError(field string, err error) error {
	var rejected *ermeo.RejectedError
	if errors.As(err, &rejected) {
		switch {
		case rejected.Code == "invalid_client" || rejected.Code == "unauthorized_client":
			return &statusError{code: http.StatusBadRequest, msg: "client_id, client_secret (in config): Ermeo refused the client: " + rejected.Message()}
		case rejected.Code == "invalid_grant" && field == "password":
			return &statusError{code: http.StatusBadRequest, msg: "password: Ermeo refused the username and password: " + rejected.Message()}
		case rejected.Code == "invalid_grant":
			return &statusError{code: http.StatusBadRequest, msg: field + ": Ermeo refused it: " + rejected.Message()}
		default:
			return &statusError{code: http.StatusBadRequest, msg: "Ermeo refused the grant: " + rejected.Message()}
		}
	}
	return badGateway("Ermeo did not answer the grant: %s", ermeo.Message(err))
}

// adoptLocked spends a refresh token that an operator gave (a chain they
// already hold) for a new pair, and stores it as the account's chain: a
// onto which the pair is recorded is the account as the write wants it.
// Nothing stored changes until the new pair is in hand: a refused token
// (invalid_grant), a refused client or a refresh that got no answer leave the
// account's current chain, access token, kept password and schedule exactly
// as they were. The given token is not the stored one, so no intent record is
// needed: if the answer is lost, only the token given is lost, and the error
// says so. Called with the account's lock held.
func (b *backend) adoptLocked(ctx context.Context, r accountOp, a *accountEntry, refreshToken string) (*accountEntry, error) {
	ctx = context.WithoutCancel(ctx)
	client, err := b.writerClient(r)
	if err != nil {
		return nil, err
	}
	tok, sentAt, took, err := b.refreshGrant(ctx, r, client, refreshToken)
	if o := classifyRefresh(err, 1); o.kind != outcomeRotated {
		b.metrics.refresh(o.kind.metricLabel(), took)
		if o.kind == outcomeUnknown {
			return nil, badGateway("Ermeo did not answer the refresh of the refresh_token given (%s): that token may now be spent; the account's current chain is unchanged and still serving", ermeo.Message(err))
		}
		return nil, grantError("refresh_token", err)
	}
	b.metrics.refresh("success", took)
	next := a.clone()
	if tok.RefreshToken == "" {
		// RFC 6749 section 6: the token given stays current.
		tok.RefreshToken = refreshToken
	}
	b.applyGrant(next, tok, sentAt)
	if err := b.store.put(ctx, r.storage, r.name, next, keepUnsaved); err != nil {
		return nil, err
	}
	b.emit(ctx, eventRotated, r.mount, r.name, "generation", fmt.Sprint(next.Generation), "adopted", "true")
	b.Logger().Info("adopted a refresh chain", "account", r.name, "generation", next.Generation)
	return next, nil
}

// storageRefused counts a refresh that storage stopped before anything was
// sent, and notes it where the account's status shows it: storage, which
// refused the write, cannot record it.
func (b *backend) storageRefused(r accountOp, err error) error {
	b.metrics.refreshes.WithLabelValues(outcomeStorageRefused).Inc()
	b.store.noteFailure(r.name, err.Error())
	b.Logger().Error("storage refused a refresh's write", "account", r.name, "error", err)
	return err
}

// writerClient returns the Ermeo client for a grant that writes the
// account: only on a node that may write, so that a performance standby or
// secondary lets Vault forward the request before anything reaches Ermeo.
func (b *backend) writerClient(r accountOp) (*ermeo.Client, error) {
	if !b.WriteSafeReplicationState() {
		return nil, logical.ErrReadOnly
	}
	return b.client(r.cfg)
}

// metricLabel is the outcome's label in ermeo_refreshes_total.
func (k outcomeKind) metricLabel() string {
	switch k {
	case outcomeRotated:
		return "success"
	case outcomeChainGone:
		return "chain_gone"
	case outcomeRejected:
		return "rejected"
	default:
		return "unknown"
	}
}

// startChainLocked starts a new chain for the account a (as the
// write wants it) with a password grant, and stores it; with keep, the
// password is kept (seal-wrapped) for re-bootstraps. Nothing stored changes
// when the grant fails, or when the lifetime Ermeo gives the tokens makes the
// account's min_ttl impossible, or when storage refuses the new chain (a
// password grant revokes nothing, so the unused pair is no loss). Called with
// the account's lock held.
func (b *backend) startChainLocked(ctx context.Context, r accountOp, a *accountEntry, password string, keep bool) (*accountEntry, error) {
	ctx = context.WithoutCancel(ctx)
	client, err := b.writerClient(r)
	if err != nil {
		return nil, err
	}
	tok, sentAt, err := b.passwordGrant(ctx, r, client, a.Username, password)
	if err != nil {
		return nil, grantError("password", err)
	}
	next := a.clone()
	b.applyGrant(next, tok, sentAt)
	next.PasswordKept = keep
	if msg := minTTLError(next, r.cfg, tok.ExpiresIn); msg != "" {
		return nil, &statusError{code: http.StatusBadRequest, msg: msg}
	}
	// A storage failure fails the write: the chain it would replace is
	// still stored and working, and this pair cost nothing but a grant.
	if err := b.store.put(ctx, r.storage, r.name, next, failWrite); err != nil {
		return nil, err
	}
	if keep {
		if err := savePassword(ctx, r.storage, r.name, password); err != nil {
			return nil, fmt.Errorf("the new chain is stored, but the password could not be kept (write the password again with store_password=true): %w", err)
		}
	}
	b.emit(ctx, eventRotated, r.mount, r.name, "generation", fmt.Sprint(next.Generation), "password_grant", "true")
	b.Logger().Info("started a new refresh chain with a password grant", "account", r.name, "generation", next.Generation)
	return next, nil
}

// credentialsCheckToken is the refresh token of the credentials check: one
// that cannot exist at Ermeo (its tokens are letters and digits only).
const credentialsCheckToken = "vault-plugin-secrets-ermeo-credentials-check"

// checkCredentials asks Ermeo whether it accepts c's client credentials: a
// refresh grant with a refresh token that cannot exist. The server checks the
// client before the grant, so invalid_client means bad credentials and
// invalid_grant means good ones; nothing is spent either way.
// With body_format auto, it also finds the body format Ermeo reads, and
// returns it.
func (b *backend) checkCredentials(ctx context.Context, c *configEntry) (ermeo.BodyFormat, error) {
	client, err := b.client(c)
	if err != nil {
		return "", &statusError{code: http.StatusBadRequest, msg: err.Error()}
	}
	cctx, cancel := upstreamContext(ctx, c)
	defer cancel()
	_, err = client.RefreshGrant(cctx, credentialsCheckToken)
	var rejected *ermeo.RejectedError
	const skip = " (set verify_connection=false to write config without this check)"
	switch {
	case err == nil:
		return "", badGateway("Ermeo answered the credentials check with a token for a refresh token that cannot exist: check api_url" + skip)
	case errors.As(err, &rejected) && rejected.ChainGone():
		return client.Detected(), nil
	case errors.As(err, &rejected) && (rejected.Code == "invalid_client" || rejected.Code == "unauthorized_client"):
		return "", &statusError{code: http.StatusBadRequest, msg: "client_id, client_secret: Ermeo refused the client credentials: " + rejected.Message() + skip}
	case errors.As(err, &rejected):
		return "", &statusError{code: http.StatusBadRequest, msg: "Ermeo refused the credentials check: " + rejected.Message() + skip}
	default:
		return "", badGateway("Ermeo did not answer the credentials check at %s: %s%s", c.APIURL, ermeo.Message(err), skip)
	}
}
