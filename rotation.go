package ermeosecrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/framework"
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
//  4. Apply the outcome (applyOutcomeLocked): a new pair and the cleared
//     intent are stored in one write before the access token is handed out
//     (kept in memory if storage refuses it); invalid_grant means the chain
//     is gone (re-bootstrap with a kept password, or needs_reauth); no answer
//     means the token may be spent: the intent stays, the next refresh finds out.
//
// Every grant (refresh, re-bootstrap with the kept password, adoption, an
// operator's password, the config credentials check) goes through grant,
// which classifies Ermeo's answer once; the outcomes table says what each
// outcome does.

// outcomeKind is what one grant, or the refresh around it, came to.
type outcomeKind int

const (
	outcomeGranted        outcomeKind = iota + 1 // a new pair
	outcomeRefused                               // invalid_grant: the refresh token (or password) is dead (or wrong)
	outcomeRejected                              // another OAuth error (invalid_client, ...): refused before the token was looked at, nothing spent
	outcomeNoAnswer                              // no usable answer: a refresh token sent may be spent
	outcomeStorageRefused                        // storage refused the intent record (or a pair waiting): nothing was sent
)

// outcomeRule is what an outcome does, wherever the grant came from.
type outcomeRule struct {
	refreshes string      // ermeo_refreshes_total's outcome label
	passwords string      // ermeo_password_grants_total's outcome label
	event     string      // the event sent on Vault's bus when it ends a refresh
	log       string      // its log line (the e2e tests read some)
	level     hclog.Level // and level
	// status of a read or rotate whose refresh failed (a token still valid is
	// served instead); write, of an operator's write whose grant failed.
	status, write int
	// backoff: the account's next refresh waits (backoffFor) unless forced.
	backoff bool
}

// outcomes is the one table of outcomes.
var outcomes = map[outcomeKind]outcomeRule{
	outcomeGranted: {refreshes: "success", passwords: "success", event: eventRotated,
		log: "rotated refresh chain", level: hclog.Info},
	outcomeRefused: {refreshes: "chain_gone", passwords: "rejected", event: eventChainLost,
		log: "refresh chain is gone", level: hclog.Warn, status: http.StatusBadGateway, write: http.StatusBadRequest},
	outcomeRejected: {refreshes: "rejected", passwords: "rejected", event: eventRotationFailed,
		log: "Ermeo rejected the refresh; the refresh token was not spent", level: hclog.Warn, status: http.StatusBadGateway, write: http.StatusBadRequest, backoff: true},
	outcomeNoAnswer: {refreshes: "unknown", passwords: "unknown", event: eventRotationFailed,
		log: "refresh outcome unknown; the refresh token may be spent", level: hclog.Warn, status: http.StatusBadGateway, write: http.StatusBadGateway, backoff: true},
	outcomeStorageRefused: {refreshes: "storage_refused",
		log: "storage refused a refresh's write", level: hclog.Error, status: http.StatusInternalServerError},
}

// grantKind is what a grant is for.
type grantKind int

const (
	grantRefresh     grantKind = iota + 1 // spend the stored refresh token
	grantAdopt                            // spend a refresh token an operator gave
	grantPassword                         // an operator's password: a new chain
	grantRebootstrap                      // the kept password: a new chain after the old one was lost
	grantCheck                            // the credentials check: a refresh token that cannot exist
)

// grantResult is one grant's result, classified once by grant.
type grantResult struct {
	kind   outcomeKind
	tok    *ermeo.Token
	err    error
	sentAt time.Time // when the request was sent, from which the new tokens' lives count
}

// grant sends one grant to Ermeo, detached from the caller (who may give up)
// and bounded by request_timeout, classifies the answer and counts it.
func (b *backend) grant(ctx context.Context, cfg *configEntry, client *ermeo.Client, g grantKind, username, secret string) grantResult {
	gctx, cancel := upstreamContext(ctx, cfg)
	defer cancel()
	res := grantResult{sentAt: b.now()}
	start := time.Now()
	if g == grantPassword || g == grantRebootstrap {
		res.tok, res.err = client.PasswordGrant(gctx, username, secret)
	} else {
		res.tok, res.err = client.RefreshGrant(gctx, secret)
	}
	var rejected *ermeo.RejectedError
	switch {
	case res.err == nil:
		res.kind = outcomeGranted
	case errors.As(res.err, &rejected) && rejected.ChainGone():
		res.kind = outcomeRefused
	case errors.As(res.err, &rejected):
		res.kind = outcomeRejected
	default:
		res.kind = outcomeNoAnswer
	}
	switch g {
	case grantRefresh, grantAdopt:
		b.metrics.refreshes.WithLabelValues(outcomes[res.kind].refreshes).Inc()
		b.metrics.refreshDuration.Observe(time.Since(start).Seconds())
	case grantPassword, grantRebootstrap:
		b.metrics.passwordGrants.WithLabelValues(outcomes[res.kind].passwords).Inc()
	}
	return res
}

// upstreamContext detaches ctx from its caller's cancellation and bounds it by
// the configured request timeout.
func upstreamContext(ctx context.Context, cfg *configEntry) (context.Context, context.CancelFunc) {
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = defaultRequestTimeout
	}
	return context.WithTimeout(context.WithoutCancel(ctx), timeout)
}

// accountOp is one operation on one account's chain.
type accountOp struct {
	storage logical.Storage
	cfg     *configEntry
	client  *ermeo.Client // cfg's, set by withClient
	mount   string        // for the commands named in errors, e.g. "ermeo/"
	name    string
	// force is an operator's: it does not wait out a backoff.
	force bool
}

// withClient returns op with cfg's Ermeo client (set once per operation).
func (b *backend) withClient(op accountOp) (accountOp, error) {
	var err error
	op.client, err = b.client(op.cfg)
	return op, err
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

// Backoff after a refresh that got no answer or was rejected: 5s, 10s, 20s,
// ... up to 10 minutes, or the server's Retry-After if that is longer (up to
// an hour). A kept password's grant that got no answer waits a minute.
const (
	backoffBase          = 5 * time.Second
	backoffMax           = 10 * time.Minute
	retryAfterMax        = time.Hour
	passwordGrantBackoff = time.Minute
)

func backoffFor(failures int, retryAfter time.Duration) time.Duration {
	d := backoffBase
	for i := 1; i < failures && d < backoffMax; i++ {
		d *= 2
	}
	d = min(d, backoffMax)
	if retryAfter > d {
		d = min(retryAfter, retryAfterMax)
	}
	return d
}

// rotateLocked spends a's refresh token (a freshly read under the account's
// lock) as the protocol above says, and returns the account's new state; on
// error, its state after the attempt (if not nil), whose token may be served.
func (b *backend) rotateLocked(ctx context.Context, op accountOp, a *accountEntry) (*accountEntry, error) {
	if !b.WriteSafeReplicationState() {
		// A performance standby or secondary: let Vault forward the request
		// to the node that may write, before anything is sent to Ermeo.
		return nil, logical.ErrReadOnly
	}
	// Uncancellable from here: every storage write and the upstream call.
	ctx = context.WithoutCancel(ctx)
	if err := b.store.flushLocked(ctx, op.storage, op.name); err != nil {
		return a, b.storageRefused(op, fmt.Errorf("a refreshed token pair is still waiting to be stored; not refreshing again until it is: %w", err))
	}
	op, err := b.withClient(op)
	if err != nil {
		return a, err
	}
	switch {
	case a.State == stateNeedsReauth && !a.PasswordKept:
		return a, requestError(http.StatusBadRequest, needsReauth(op.mount, op.name, a.LastError))
	case !op.force && b.now().Before(a.NextAttemptAt) && !a.backoffLifted(op.cfg):
		return a, requestError(http.StatusBadGateway, fmt.Sprintf("the last refresh failed (%s); the next attempt waits until %s", a.LastError, formatTime(a.NextAttemptAt)))
	case a.State == stateNeedsReauth || a.RefreshToken == "":
		return b.rebootstrapLocked(ctx, op, a, "the account has no usable refresh chain")
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
	if err := b.store.put(ctx, op.storage, op.name, next, failWrite); err != nil {
		return a, b.storageRefused(op, fmt.Errorf("could not record the rotation before sending it, so nothing was sent: %w", err))
	}
	if b.crashed(crashAfterIntent) {
		return nil, errSimulatedCrash
	}

	// 3. The refresh, detached from the caller.
	res := b.grant(ctx, op.cfg, op.client, grantRefresh, "", a.RefreshToken)
	if b.crashed(crashAfterUpstream) {
		return nil, errSimulatedCrash
	}
	// 4. The outcome.
	return b.applyOutcomeLocked(ctx, op, next, res, intent.Attempts)
}

// applyOutcomeLocked records what a refresh came to, as outcomes says: stored
// state, log line, event, backoff, and the caller's error. next is the
// account with its intent record; attempts counts the sends of its refresh
// token. Called with the account's lock held.
func (b *backend) applyOutcomeLocked(ctx context.Context, op accountOp, next *accountEntry, res grantResult, attempts int) (*accountEntry, error) {
	rule, now := outcomes[res.kind], b.now()
	if res.kind == outcomeGranted {
		if err := b.storeGrantLocked(ctx, op, next, res, keepUnsaved, rule.log); err != nil {
			return nil, err
		}
		return next, nil
	}

	msg, how := ermeo.Message(res.err), ""
	var retryAfter time.Duration
	switch res.kind {
	case outcomeRefused:
		// Recorded before anything else, so that no later process sends
		// the dead token again; then a new chain is tried (rebootstrap).
		how, next.LastError = "refused", spentElsewhere(next, msg, now, op.mount)
		if attempts > 1 {
			how = "lost_in_flight"
			next.LastError = fmt.Sprintf("an earlier refresh's answer was lost, and Ermeo now refuses the refresh token (%s)", msg)
		}
		next.ChainLostAt, next.ChainLostHow = now, how
		next.RefreshToken, next.RotationIntent = "", nil
		b.metrics.chainsLost.WithLabelValues(how).Inc()
	case outcomeRejected:
		// Checked by Ermeo before the refresh token: it is unspent. Tried
		// again after the backoff, or once config changes (the operator
		// fixed the client) or an operator forces a rotation.
		next.RotationIntent = nil
		next.RejectedByConfig = op.cfg.Revision
		next.LastError = "Ermeo rejected the refresh request: " + msg
	default: // outcomeNoAnswer: the token may be spent; the intent stays and the next attempt finds out.
		var unknown *ermeo.UnknownOutcomeError
		if errors.As(res.err, &unknown) {
			retryAfter = unknown.RetryAfter
		}
		next.LastError = "Ermeo did not answer the refresh: " + msg
	}
	if rule.backoff {
		next.Failures++
		next.NextAttemptAt = now.Add(backoffFor(max(attempts, next.Failures), retryAfter))
	}
	detail := []string{"generation", fmt.Sprint(next.Generation), "error", "outcome_unknown"}
	if rejected := (*ermeo.RejectedError)(nil); errors.As(res.err, &rejected) {
		detail[3] = rejected.Code
	}
	if how != "" {
		detail = append(detail, "how", how)
	}
	b.emit(ctx, rule.event, op.mount, op.name, detail...)
	b.Logger().Log(rule.level, rule.log, "account", op.name, "generation", next.Generation, "attempts", attempts,
		"how", how, "next_attempt_at", next.NextAttemptAt, "cause", next.LastError)
	if err := b.store.put(ctx, op.storage, op.name, next, failWrite); err != nil {
		b.store.noteFailure(op.name, "storage refused the refresh's outcome: "+err.Error())
		b.Logger().Error("could not store the refresh's outcome", "account", op.name, "error", err)
	}
	switch res.kind {
	case outcomeRefused:
		return b.rebootstrapLocked(ctx, op, next, next.LastError)
	case outcomeRejected:
		return next, requestError(rule.status, fmt.Sprintf("%s; the refresh token was not spent; check %sconfig (writing it lifts the wait until %s)", next.LastError, op.mount, formatTime(next.NextAttemptAt)))
	default:
		return next, requestError(rule.status, fmt.Sprintf("%s; the stored refresh token may be spent; the next attempt, from %s, finds out", next.LastError, formatTime(next.NextAttemptAt)))
	}
}

// Event types sent on Vault's event bus.
const (
	eventRotated        = "ermeo/chain-rotated"
	eventRotationFailed = "ermeo/rotation-failed"
	eventChainLost      = "ermeo/chain-lost"
)

// emit sends an event on Vault's bus; where there is none, nothing happens.
func (b *backend) emit(ctx context.Context, eventType, mount, name string, pairs ...string) {
	pairs = append(pairs, "account", name,
		logical.EventMetadataDataPath, mount+"creds/"+name,
		logical.EventMetadataModified, "true")
	if err := logical.SendEvent(context.WithoutCancel(ctx), b, eventType, pairs...); err != nil && err != framework.ErrNoEvents {
		b.Logger().Debug("could not send an event", "type", eventType, "error", err)
	}
}

// storeGrantLocked records a granted pair onto next, stores it (mode: see
// writeMode), and announces it: the event, with detail, and the log line.
func (b *backend) storeGrantLocked(ctx context.Context, op accountOp, next *accountEntry, res grantResult, mode writeMode, logLine string, detail ...string) error {
	applyGrant(next, res.tok, res.sentAt, b.now())
	if err := b.store.put(ctx, op.storage, op.name, next, mode); err != nil {
		return err
	}
	if b.crashed(crashAfterWrite) {
		return errSimulatedCrash
	}
	b.emit(ctx, eventRotated, op.mount, op.name, append([]string{"generation", fmt.Sprint(next.Generation)}, detail...)...)
	b.Logger().Info(logLine, "account", op.name, "generation", next.Generation)
	return nil
}

// storageRefused counts a refresh that storage stopped before anything was
// sent, and notes it where the account's status shows it: storage, which
// refused the write, cannot record it.
func (b *backend) storageRefused(op accountOp, err error) error {
	rule := outcomes[outcomeStorageRefused]
	b.metrics.refreshes.WithLabelValues(rule.refreshes).Inc()
	b.store.noteFailure(op.name, err.Error())
	b.Logger().Log(rule.level, rule.log, "account", op.name, "error", err)
	return err
}

// spentElsewhere says why a refresh token no refresh of ours had sent was
// refused: it expired, or was spent or revoked elsewhere, likeliest by a
// restore of Vault's storage from an older snapshot, which rewinds every
// account rotated since: each must be rotated now to find out at once.
func spentElsewhere(a *accountEntry, rejected string, now time.Time, mount string) string {
	if !a.RefreshTokenIssuedAt.IsZero() && now.After(a.RefreshTokenIssuedAt.Add(refreshTokenLifetime)) {
		return fmt.Sprintf("Ermeo refused the refresh token (%s): it expired, issued %s and unused for 2 weeks", rejected, formatTime(a.RefreshTokenIssuedAt))
	}
	return fmt.Sprintf("Ermeo refused the stored refresh token (%s), which no refresh of this mount had sent: it was spent or revoked elsewhere. "+
		"If Vault's storage was restored from a snapshot, every account rotated since the snapshot is in the same state: "+
		"rotate each now to find out (vault list %saccounts, then vault write -f %saccounts/<name>/rotate for each). "+
		"Otherwise another system holds this chain (another Vault, or a script given the same refresh token)", rejected, mount, mount)
}

// rebootstrapLocked starts a new chain with the kept password, if any; else,
// or if Ermeo refuses it, the account needs_reauth (retrying a refused
// password on a timer could lock the user out). Under the account's lock.
func (b *backend) rebootstrapLocked(ctx context.Context, op accountOp, a *accountEntry, reason string) (*accountEntry, error) {
	next, now := a.clone(), b.now()
	if a.PasswordKept {
		password, err := loadPassword(ctx, op.storage, op.name)
		if err != nil {
			return a, err
		}
		if password != "" {
			res := b.grant(ctx, op.cfg, op.client, grantRebootstrap, a.Username, password)
			switch res.kind {
			case outcomeGranted:
				if err := b.storeGrantLocked(ctx, op, next, res, keepUnsaved, "started a new refresh chain with the kept password", "recovered", "true"); err != nil {
					return nil, err
				}
				b.metrics.chainsRecovered.Inc()
				return next, nil
			case outcomeNoAnswer:
				next.NextAttemptAt = now.Add(passwordGrantBackoff)
				next.LastError = reason + "; the password grant with the kept password got no answer: " + ermeo.Message(res.err)
				b.Logger().Warn("the kept password's grant got no answer", "account", op.name, "next_attempt_at", next.NextAttemptAt, "error", res.err)
				if err := b.store.put(ctx, op.storage, op.name, next, failWrite); err != nil {
					return next, err
				}
				return next, requestError(http.StatusBadGateway, next.LastError)
			default:
				reason += "; the kept password was refused too (" + ermeo.Message(res.err) + ")"
			}
		}
	}
	next.State, next.RefreshToken, next.RotationIntent = stateNeedsReauth, "", nil
	next.LastError = reason
	b.Logger().Warn("the account needs re-authentication", "account", op.name, "reason", reason)
	if err := b.store.put(ctx, op.storage, op.name, next, failWrite); err != nil {
		return next, err
	}
	// A 502: this request's failure came from Ermeo, and it changed what is
	// stored; later reads of the account get a 400 (rotateLocked).
	return next, requestError(http.StatusBadGateway, needsReauth(op.mount, op.name, reason))
}

// adoptLocked spends a refresh token an operator gave for a new pair, stored
// onto a (the account as the write wants it). It is not the stored token, so
// no intent record: a lost answer loses only the token given, as the error
// says, and nothing stored changes. Under the account's lock.
func (b *backend) adoptLocked(ctx context.Context, op accountOp, a *accountEntry, refreshToken string) (*accountEntry, error) {
	ctx = context.WithoutCancel(ctx)
	op, err := b.withClient(op)
	if err != nil {
		return nil, err
	}
	res := b.grant(ctx, op.cfg, op.client, grantAdopt, "", refreshToken)
	if res.kind == outcomeNoAnswer {
		return nil, requestError(outcomes[res.kind].write, fmt.Sprintf("Ermeo did not answer the refresh of the refresh_token given (%s): that token may now be spent; the account's current chain is unchanged and still serving", ermeo.Message(res.err)))
	}
	if res.kind != outcomeGranted {
		return nil, grantError("refresh_token", res)
	}
	next := a.clone()
	if res.tok.RefreshToken == "" {
		// RFC 6749 section 6: the token given stays current.
		res.tok.RefreshToken = refreshToken
	}
	if err := b.storeGrantLocked(ctx, op, next, res, keepUnsaved, "adopted a refresh chain", "adopted", "true"); err != nil {
		return nil, err
	}
	return next, nil
}

// startChainLocked starts a new chain for a with a password grant, and keeps
// the password (seal-wrapped) with keep. A failed grant, an impossible
// min_ttl or a refused write change nothing stored (a password grant revokes
// nothing: the unused pair is no loss). Under the account's lock.
func (b *backend) startChainLocked(ctx context.Context, op accountOp, a *accountEntry, password string, keep bool) (*accountEntry, error) {
	ctx = context.WithoutCancel(ctx)
	op, err := b.withClient(op)
	if err != nil {
		return nil, err
	}
	res := b.grant(ctx, op.cfg, op.client, grantPassword, a.Username, password)
	if res.kind != outcomeGranted {
		return nil, grantError("password", res)
	}
	if msg := minTTLError(a, op.cfg, res.tok.ExpiresIn); msg != "" {
		return nil, requestError(http.StatusBadRequest, msg)
	}
	next := a.clone()
	next.PasswordKept = keep
	if err := b.storeGrantLocked(ctx, op, next, res, failWrite, "started a new refresh chain with a password grant", "password_grant", "true"); err != nil {
		return nil, err
	}
	if keep {
		if err := savePassword(ctx, op.storage, op.name, password); err != nil {
			return nil, fmt.Errorf("the new chain is stored, but the password could not be kept (write the password again with store_password=true): %w", err)
		}
	}
	return next, nil
}

// grantError is what an operator sees of a failed password grant or
// adoption, naming field (password or refresh_token) when Ermeo refused it.
func grantError(field string, res grantResult) error {
	rule := outcomes[res.kind]
	var rejected *ermeo.RejectedError
	if !errors.As(res.err, &rejected) {
		return requestError(rule.write, "Ermeo did not answer the grant: "+ermeo.Message(res.err))
	}
	switch {
	case rejected.Code == "invalid_client" || rejected.Code == "unauthorized_client":
		return requestError(rule.write, "client_id, client_secret (in config): Ermeo refused the client: "+rejected.Message())
	case res.kind == outcomeRefused && field == "password":
		return requestError(rule.write, "password: Ermeo refused the username and password: "+rejected.Message())
	case res.kind == outcomeRefused:
		return requestError(rule.write, field+": Ermeo refused it: "+rejected.Message())
	default:
		return requestError(rule.write, "Ermeo refused the grant: "+rejected.Message())
	}
}

// credentialsCheckToken is the refresh token of the credentials check: one
// that cannot exist at Ermeo (its tokens are letters and digits only).
const credentialsCheckToken = "vault-plugin-secrets-ermeo-credentials-check"

// checkCredentials asks Ermeo whether it accepts c's client: a refresh grant
// of a token that cannot exist, which the server answers invalid_client for
// bad credentials and invalid_grant for good ones, spending nothing. It
// returns the body format Ermeo was found to read (body_format auto).
func (b *backend) checkCredentials(ctx context.Context, c *configEntry) (ermeo.BodyFormat, error) {
	client, err := b.client(c)
	if err != nil {
		return "", requestError(http.StatusBadRequest, err.Error())
	}
	const skip = " (set verify_connection=false to write config without this check)"
	res := b.grant(ctx, c, client, grantCheck, "", credentialsCheckToken)
	switch res.kind {
	case outcomeRefused:
		return client.Detected(), nil
	case outcomeGranted:
		return "", requestError(http.StatusBadGateway, "Ermeo answered the credentials check with a token for a refresh token that cannot exist: check api_url"+skip)
	case outcomeNoAnswer:
		return "", requestError(http.StatusBadGateway, fmt.Sprintf("Ermeo did not answer the credentials check at %s: %s%s", c.APIURL, ermeo.Message(res.err), skip))
	}
	if rejected := res.err.(*ermeo.RejectedError); rejected.Code == "invalid_client" || rejected.Code == "unauthorized_client" {
		return "", requestError(http.StatusBadRequest, "client_id, client_secret: Ermeo refused the client credentials: "+rejected.Message()+skip)
	}
	return "", requestError(http.StatusBadRequest, "Ermeo refused the credentials check: "+ermeo.Message(res.err)+skip)
}

// statusError is a failure the caller sees with its HTTP status (errorResponse):
// 400 for what an operator can fix, 502 for Ermeo's part, 404 for no account.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

func requestError(code int, msg string) error { return &statusError{code: code, msg: msg} }

// needsReauth is the message of an account whose chain is gone: what to run.
func needsReauth(mount, name, reason string) string {
	return fmt.Sprintf("account %q needs re-authentication: %s. Run: vault write %saccounts/%s password=- (and type the account's Ermeo password on standard input, so that it stays out of your shell history)",
		name, reason, mount, name)
}

// errorResponse turns a handler's error into what the caller sees: a 400, its
// own status with Vault's {"errors": [...]} body (without the "1 error
// occurred" Vault wraps coded errors in), or the error itself (a 500, or
// logical.ErrReadOnly, which Vault forwards).
func errorResponse(err error) (*logical.Response, error) {
	var se *statusError
	switch {
	case errors.As(err, &se) && se.code == http.StatusBadRequest:
		return logical.ErrorResponse(se.msg), nil
	case errors.As(err, &se) && se.code != http.StatusInternalServerError:
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
