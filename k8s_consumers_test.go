package ermeosecrets

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/consumers"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The Kubernetes consumers that renew or re-read creds leases on schedules of
// their own, modelled on the injected clock against the plugin's lease code,
// as TestRenewableLeaseFollowsVaultsRenewer does for Vault's LifetimeWatcher:
//
//   - Vault Secrets Operator (VSO) v1.4.1, VaultDynamicSecret
//     (hashicorp/vault-secrets-operator controllers/vaultdynamicsecret_controller.go:
//     Reconcile, renewLease, syncSecret, computePostSyncHorizon; and
//     controllers/common.go: computeDynamicHorizonWithJitter, capRenewalPercent,
//     LeaseTruncatedError; its BackOffRegistry on a failed sync). Read at
//     commits 01360aad (the controller) and 05f12a2f (common.go) of the
//     repository; the renewal path (renewLease, the LeaseTruncatedError
//     re-read, the return without requeue on a non-renewable renewal) reads
//     the same in the older 96f00133.
//   - External Secrets Operator (ESO), the VaultDynamicSecret generator
//     (external-secrets/external-secrets pkg/generator/vault/vault.go at
//     1a42cf3d: Generate reads the path once, Cleanup does nothing; the
//     ExternalSecret controller's shouldRefresh reads again once
//     refreshInterval has passed since status.refreshTime).
//
// Vault's part is vaultRenewer.renew's (path_creds_test.go): a renewal's lease
// is the increment asked for, capped at the lease's issue time plus the MaxTTL
// the renew handler returns, reported in whole seconds.

// consumerMinTTLs are the min_ttl values the models run with.
var consumerMinTTLs = []time.Duration{6 * time.Second, 10 * time.Second, time.Minute, 10 * time.Minute}

// consumerTokenLifetime keeps the runs short: tokens of 12 min_ttl, at most
// Ermeo's 2 hours (min_ttl 10m gets Ermeo's own 2 h tokens).
func consumerTokenLifetime(minTTL time.Duration) time.Duration {
	return min(2*time.Hour, 12*minTTL)
}

// newConsumerEnv is a mount with one account, app, whose tokens last
// lifetime, read with min_ttl.
func newConsumerEnv(t *testing.T, minTTL, lifetime time.Duration) *testEnv {
	t.Helper()
	e := newTestEnv(t, fakeermeo.Options{AccessTokenTTL: lifetime})
	e.configureUnchecked()
	e.createAccount("app", map[string]any{"min_ttl": minTTL.String()})
	return e
}

// consumerRead reads creds/app as Vault routes it. (Without e.request's
// response-schema check, which the creds tests make: the models read tens of
// thousands of times under -race.)
//
// vaultToken is the consumer's Vault token as Vault hands it to the plugin
// (salted): VSO's login for its VaultAuth, shared by the resources that use
// it; a new one for each of ESO's reads, as it logs in for each.
func consumerRead(e *testEnv, vaultToken string) (*logical.Response, error) {
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.ReadOperation, Path: "creds/app", Storage: e.view, MountPoint: testMount, ClientToken: vaultToken,
	})
	if code, msg, ok := rawError(resp); ok {
		return nil, logical.CodedError(code, msg)
	}
	switch {
	case err != nil:
		return nil, err
	case resp == nil:
		return nil, errors.New("no answer (404)")
	case resp.IsError():
		return nil, resp.Error()
	case resp.Secret == nil:
		return nil, fmt.Errorf("an answer without a lease: %v", resp.Data)
	}
	return resp, nil
}

// tokenExpiry is when Ermeo stops accepting tok.
func tokenExpiry(t *testing.T, e *testEnv, tok string) time.Time {
	t.Helper()
	exp, ok := e.fake.AccessTokenExpiresAt(tok)
	if !ok {
		t.Fatalf("the fake never issued the access token served")
	}
	return exp
}

// vaultDefaultLeaseTTL is the lease Vault gives a secret whose TTL is 0: the
// mount's default, the system's 768 h unless tuned.
const vaultDefaultLeaseTTL = 768 * time.Hour

// vaultReadLease is the lease Vault registers for a read's secret: its TTL
// (the default for 0), capped at its MaxTTL.
func vaultReadLease(s *logical.Secret) (ttl time.Duration, zero bool) {
	ttl = s.TTL
	if ttl == 0 {
		ttl, zero = vaultDefaultLeaseTTL, true
	}
	if s.MaxTTL > 0 && ttl > s.MaxTTL {
		ttl = s.MaxTTL
	}
	return ttl, zero
}

// vsoModel is one VaultDynamicSecret of VSO v1.4.1 reading creds/app, and the
// Kubernetes Secret it writes. Each pass is one Reconcile:
//
//   - with a renewable lease in its status, it renews it through
//     sys/leases/renew with increment = the lease's last lease_duration. A
//     renewal as long as asked: status takes the new lease, and the next pass
//     comes at computeDynamicHorizonWithJitter of it; unless the answer is
//     not renewable, when Reconcile returns without a requeue and the
//     resource is never looked at again. Shorter than asked
//     (LeaseTruncatedError), or an error: it reads again in the same pass.
//   - otherwise (the first pass, a non-renewable lease, or after the above)
//     it reads creds/app, writes the Secret, and comes back at
//     computeDynamicHorizonWithJitter of the new lease_duration; with a
//     lease_duration of 0 (and no refreshAfter) the horizon is 0 and it never
//     comes back. A failed read leaves the Secret as it was and comes back
//     after the BackOffRegistry's next backoff (cenkalti/backoff's
//     exponential: 5 s initial, x1.5, +-50%, at most 60 s), reset by a
//     successful read.
type vsoModel struct {
	t              *testing.T
	e              *testEnv
	rng            *rand.Rand
	renewalPercent int
	minTTL         time.Duration
	label          string
	start          time.Time

	// status.secretLease, and Vault's side of it.
	secret        *logical.Secret // the plugin's last answer: what a renewal sends back
	issued        time.Time       // the lease's issue time (Vault keeps it over renewals)
	leaseDuration int64           // lease_duration, whole seconds
	renewable     bool
	leaseExpires  time.Time // when Vault revokes the lease

	// The destination Secret.
	token        string
	tokenExpires time.Time

	boInterval time.Duration // the BackOffRegistry entry's next interval; 0: no entry
	stopped    bool          // no requeue: the resource is never reconciled again

	readsOf    map[string]int // reads that got each token
	generation []string       // the tokens the Secret held, in order
	figures    vsoFigures
}

// vsoFigures are what the models count, summed over runs.
type vsoFigures struct {
	runs, passes, reads, renewals int
	truncated, renewErrors        int // renewals that led to a read
	leaseExpired                  int // renewals that came at or after the lease's end: Vault has revoked it
	readErrors                    int
	shortRenewals                 int // renewal answers under a second (lease_duration 0: truncated)
	// Re-reads (reads after the first) by when they landed in the held
	// token's life, and those that got the same token again (each restarts
	// the rolloutRestartTargets for nothing).
	rereadsBeforeUsableEnd, rereadsAfterUsableEnd, rereadsSameToken int
	// readsPerGeneration: reads of each token the Secret held and let go of.
	readsPerGeneration []int
	// leastLeft is the least life left in the held token at a re-read.
	leastLeft time.Duration
	leastSet  bool
}

func (f *vsoFigures) noteLeft(d time.Duration) {
	if !f.leastSet || d < f.leastLeft {
		f.leastLeft, f.leastSet = d, true
	}
}

func (f *vsoFigures) add(g vsoFigures) {
	f.runs += g.runs
	f.passes += g.passes
	f.reads += g.reads
	f.renewals += g.renewals
	f.truncated += g.truncated
	f.renewErrors += g.renewErrors
	f.leaseExpired += g.leaseExpired
	f.readErrors += g.readErrors
	f.shortRenewals += g.shortRenewals
	f.rereadsBeforeUsableEnd += g.rereadsBeforeUsableEnd
	f.rereadsAfterUsableEnd += g.rereadsAfterUsableEnd
	f.rereadsSameToken += g.rereadsSameToken
	f.readsPerGeneration = append(f.readsPerGeneration, g.readsPerGeneration...)
	if g.leastSet {
		f.noteLeft(g.leastLeft)
	}
}

// perGeneration is the mean and the most reads a token generation took.
func (f *vsoFigures) perGeneration() (mean float64, most int) {
	sum := 0
	for _, n := range f.readsPerGeneration {
		sum += n
		most = max(most, n)
	}
	if len(f.readsPerGeneration) > 0 {
		mean = float64(sum) / float64(len(f.readsPerGeneration))
	}
	return mean, most
}

func newVSOModel(t *testing.T, e *testEnv, rng *rand.Rand, renewalPercent int, minTTL time.Duration, label string) *vsoModel {
	return &vsoModel{t: t, e: e, rng: rng, renewalPercent: renewalPercent, minTTL: minTTL, label: label,
		start: e.clock.Now(), readsOf: map[string]int{}, figures: vsoFigures{runs: 1}}
}

// vsoPass is what one Reconcile did.
type vsoPass struct {
	at        time.Time
	renewed   bool // a full renewal, no read
	read      bool // it read creds/app
	readErr   error
	heldToken string    // the token the Secret held before the pass
	heldExp   time.Time // and its expiry
	warnings  []string  // the read's
	next      time.Duration
	requeue   bool
}

func (v *vsoModel) where() string {
	return fmt.Sprintf("%s, t=%v", v.label, v.e.clock.Now().Sub(v.start))
}

// pass runs one Reconcile at the clock's time.
func (v *vsoModel) pass() vsoPass {
	now := v.e.clock.Now()
	p := vsoPass{at: now, heldToken: v.token, heldExp: v.tokenExpires}
	v.figures.passes++
	if v.secret != nil && v.renewable {
		if next, done := v.renew(now); done {
			p.renewed, p.next, p.requeue = true, next, !v.stopped
			return p
		}
	}
	v.read(now, &p)
	return p
}

// renew is VSO's renewLease and what follows it; done means no read follows
// in this pass.
func (v *vsoModel) renew(now time.Time) (time.Duration, bool) {
	increment := time.Duration(v.leaseDuration) * time.Second
	if !now.Before(v.leaseExpires) {
		// Vault revoked the lease at its end: "lease not found".
		v.figures.leaseExpired++
		v.figures.renewErrors++
		return 0, false
	}
	r := &vaultRenewer{t: v.t, e: v.e, secret: v.secret, issued: v.issued, increment: increment}
	got, err := r.renew()
	if err != nil {
		v.figures.renewErrors++
		return 0, false
	}
	answer := r.secret
	if !answer.Renewable || answer.TTL <= 0 {
		v.t.Errorf("%s: the renewal of a %ds lease (increment %v) answered renewable=%v ttl=%v (warnings %q): "+
			"VSO stops requeueing on a non-renewable renewal, and Vault makes a TTL of 0 the mount's default",
			v.where(), v.leaseDuration, increment, answer.Renewable, answer.TTL, r.warnings)
	}
	if got < time.Second {
		v.figures.shortRenewals++
	}
	if got < increment {
		// LeaseTruncatedError: read again in the same pass.
		v.figures.truncated++
		return 0, false
	}
	if !answer.Renewable {
		v.stopped = true
		return 0, true
	}
	v.figures.renewals++
	v.secret, v.leaseDuration, v.renewable = answer, int64(got/time.Second), true
	v.leaseExpires = r.leaseEnds[0]
	lease := time.Duration(v.leaseDuration) * time.Second
	if lease < time.Second {
		lease = 5 * time.Second // VSO's stand-in for a lease under a second
	}
	return consumers.VSOHorizon(v.rng, lease, v.renewalPercent), true
}

// read is VSO's syncSecret and computePostSyncHorizon.
func (v *vsoModel) read(now time.Time, p *vsoPass) {
	p.read = true
	v.figures.reads++
	reread := v.token != ""
	if reread {
		left := v.tokenExpires.Sub(now)
		v.figures.noteLeft(left)
		if now.Before(v.tokenExpires.Add(-v.minTTL)) {
			v.figures.rereadsBeforeUsableEnd++
		} else {
			v.figures.rereadsAfterUsableEnd++
		}
	}
	resp, err := consumerRead(v.e, "vso")
	if err != nil {
		v.figures.readErrors++
		p.readErr = err
		if v.boInterval == 0 {
			v.boInterval = 5 * time.Second
		}
		delta := 0.5 * float64(v.boInterval)
		p.next = time.Duration(float64(v.boInterval) - delta + v.rng.Float64()*(2*delta+1))
		v.boInterval = min(time.Duration(float64(v.boInterval)*1.5), 60*time.Second)
		p.requeue = true
		return
	}
	v.boInterval = 0
	p.warnings = resp.Warnings
	tok := resp.Data["access_token"].(string)
	if reread && tok == v.token {
		v.figures.rereadsSameToken++
	}
	if tok != v.token {
		if v.token != "" {
			v.figures.readsPerGeneration = append(v.figures.readsPerGeneration, v.readsOf[v.token])
		}
		v.generation = append(v.generation, tok)
	}
	v.readsOf[tok]++
	v.token, v.tokenExpires = tok, tokenExpiry(v.t, v.e, tok)

	ttl, zero := vaultReadLease(resp.Secret)
	if zero {
		v.t.Errorf("%s: a creds read answered a lease TTL of 0: Vault makes it the mount's default, %v", v.where(), vaultDefaultLeaseTTL)
	}
	v.secret, v.issued, v.renewable = resp.Secret, now, resp.Secret.Renewable
	v.leaseDuration, v.leaseExpires = int64(ttl/time.Second), now.Add(ttl)
	if v.leaseDuration < 1 {
		v.t.Errorf("%s: a creds read answered a lease of %v, lease_duration 0: VSO's horizon is 0 and it never comes back", v.where(), ttl)
		v.stopped = true
		return
	}
	p.next, p.requeue = consumers.VSOHorizon(v.rng, time.Duration(v.leaseDuration)*time.Second, v.renewalPercent), true
}

// VSO's VaultDynamicSecret, at renewalPercent 67 (its default) and 90 (its
// cap), from a first read anywhere in a token's renewable life: every renewal
// answer is renewable and longer than 0, so that VSO keeps requeueing; the
// renewal that reaches past the lease's end comes back short, and VSO's read
// in the same pass gets the next token; the Secret never holds a token with
// less than half of min_ttl left. The same with two VaultDynamicSecrets of
// the account under one VaultAuth (one Vault token), created at once: the
// second's reads within 2 s of the first's get a lease that is not renewable
// (path_creds.go's credsLease), which VSO reads again at 67-77% of.
func TestVSORenewsCredsLeasesAndRereadsForTheNextToken(t *testing.T) {
	const seeds, generations = 40, 2
	for _, resources := range []int{1, 2} {
		for _, rp := range []int{67, 90} {
			for _, minTTL := range consumerMinTTLs {
				lifetime := consumerTokenLifetime(minTTL)
				var sum vsoFigures
				for seed := int64(1); seed <= seeds; seed++ {
					label := fmt.Sprintf("%d VaultDynamicSecret(s), renewalPercent %d, min_ttl %v, tokens of %v, seed %d", resources, rp, minTTL, lifetime, seed)
					e := newConsumerEnv(t, minTTL, lifetime)
					rng := rand.New(rand.NewSource(seed))
					// The first read anywhere in the token's renewable life; the
					// first seeds at its very end, and seed 4 in the last seconds
					// before the usable end (a non-renewable lease).
					span := lifetime - minTTL - renewableWindow
					offset := time.Duration(rng.Int63n(int64(span)))
					switch {
					case seed <= 3:
						offset = span - time.Duration(seed-1)*300*time.Millisecond
					case seed == 4:
						offset = span + time.Second
					}
					e.clock.Advance(offset)
					var vs []*vsoModel
					nextAt := make([]time.Time, resources)
					for i := range resources {
						vs = append(vs, newVSOModel(t, e, rng, rp, minTTL, fmt.Sprintf("%s, resource %d", label, i+1)))
						nextAt[i] = e.clock.Now()
					}
					for slices.ContainsFunc(vs, func(v *vsoModel) bool { return len(v.generation) <= generations }) {
						i := 0
						for j := range vs {
							if nextAt[j].Before(nextAt[i]) {
								i = j
							}
						}
						v := vs[i]
						if v.figures.passes > 20000 {
							t.Fatalf("%s: %d passes without %d token generations", v.label, v.figures.passes, generations)
						}
						if d := nextAt[i].Sub(e.clock.Now()); d > 0 {
							e.clock.Advance(d)
						}
						p := v.pass()
						checkVSOPass(t, v, p, minTTL)
						nextAt[i] = e.clock.Now().Add(p.next)
					}
					e.assertNoTokenUsedTwice()
					for _, v := range vs {
						sum.add(v.figures)
					}
				}
				mean, most := sum.perGeneration()
				t.Logf("VSO, %s, renewalPercent %d, min_ttl %v, tokens of %v, %d seeds: %d token generations; creds reads per generation per resource mean %.2f max %d; "+
					"%d full renewals, %d cut short (then read again in the pass; %d answers under 1 s), %d failed (%d at or past the lease's end); "+
					"re-reads before the usable end %d, after it %d, of the same token %d; least life left in the held token at a re-read %v (%.0f%% of min_ttl)",
					map[int]string{1: "one VaultDynamicSecret", 2: "two VaultDynamicSecrets of the account under one VaultAuth"}[resources], rp, minTTL, lifetime, seeds, len(sum.readsPerGeneration), mean, most,
					sum.renewals, sum.truncated, sum.shortRenewals, sum.renewErrors, sum.leaseExpired,
					sum.rereadsBeforeUsableEnd, sum.rereadsAfterUsableEnd, sum.rereadsSameToken,
					sum.leastLeft.Round(time.Millisecond), 100*float64(sum.leastLeft)/float64(minTTL))
			}
		}
	}
}

// checkVSOPass holds one Reconcile to what VSO needs of the plugin.
func checkVSOPass(t *testing.T, v *vsoModel, p vsoPass, minTTL time.Duration) {
	t.Helper()
	if p.read && p.readErr != nil {
		t.Errorf("%s: a read failed with Ermeo up: %v", v.where(), p.readErr)
	}
	if p.read && p.readErr == nil && p.heldToken != "" {
		left := p.heldExp.Sub(p.at)
		if left < minTTL/2 {
			t.Errorf("%s: VSO read again with %v left in the token it held, less than half of min_ttl", v.where(), left)
		}
		if !p.at.Before(p.heldExp.Add(-minTTL)) && v.token == p.heldToken {
			t.Errorf("%s: a re-read %v past the held token's usable end got the same token", v.where(), p.at.Sub(p.heldExp.Add(-minTTL)))
		}
	}
	if p.read && p.readErr == nil {
		if left := v.tokenExpires.Sub(p.at); left < minTTL {
			t.Errorf("%s: a read got a token with %v left, less than min_ttl", v.where(), left)
		}
	}
	if !p.requeue {
		t.Fatalf("%s: VSO stopped requeueing (renewed=%v)", v.where(), p.renewed)
	}
}

// With Ermeo down from around a token's usable end, VSO holds the last token
// and reads it again at 67-77% of each ever shorter non-renewable lease the
// plugin serves it under: those re-reads send at most one refresh grant per
// step of the plugin's backoff (5 s, 10 s, 20 s ...), and the Secret holds an
// expired token only when the plugin had no valid one to serve.
func TestVSORereadsOfAStaleTokenSendOneGrantPerBackoffStep(t *testing.T) {
	const seeds = 40
	for _, minTTL := range consumerMinTTLs {
		lifetime := consumerTokenLifetime(minTTL)
		var (
			outages, grants, staleReads, mostStaleReads, mostGrants int
			leastGapRatio                                           = -1.0
			leastLeft                                               time.Duration
			leastSet                                                bool
			expiredDown, expiredPluginWait, expiredVSOWait          time.Duration
			runsPluginWait, validWhenBack                           int
			longest, shortest, worstPluginWait, worstValidWait      time.Duration
			worst, worstValid                                       string
		)
		for seed := int64(1); seed <= seeds; seed++ {
			rp := 67
			if seed%2 == 0 {
				rp = 90
			}
			rng := rand.New(rand.NewSource(seed))
			e := newConsumerEnv(t, minTTL, lifetime)
			first := e.stored("app")
			// VSO's first read within the last 4 min_ttl before the token's
			// usable end.
			e.clock.Advance(lifetime - 5*minTTL + time.Duration(rng.Int63n(int64(3*minTTL))))
			label := fmt.Sprintf("min_ttl %v, tokens of %v, renewalPercent %d, seed %d", minTTL, lifetime, rp, seed)
			v := newVSOModel(t, e, rng, rp, minTTL, label)
			// Ermeo goes down up to half of min_ttl before the first token's
			// usable end, for a quarter of min_ttl to one and a half min_ttl:
			// long enough, in some seeds, to outlast the token.
			down := first.AccessTokenExpiresAt.Add(-minTTL - time.Duration(rng.Int63n(int64(minTTL/2))))
			outage := minTTL/4 + time.Duration(rng.Int63n(int64(minTTL*5/4)))
			back := down.Add(outage)
			if shortest == 0 || outage < shortest {
				shortest = outage
			}
			longest = max(longest, outage)
			injected, cleared := false, false
			ermeoUp := func(at time.Time) bool { return at.Before(down) || !at.Before(back) }
			reads, pluginWait, stillValidWhenBack := 0, time.Duration(0), false
			var pluginWaitDetail string
			var sent []time.Time // the refresh grants sent while Ermeo was down
			next := e.clock.Now()
			for {
				if !injected && !next.Before(down) {
					e.clock.Advance(down.Sub(e.clock.Now()))
					e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: 503, Grant: "refresh_token"})
					injected = true
					continue
				}
				if injected && !cleared && !next.Before(back) {
					e.clock.Advance(back.Sub(e.clock.Now()))
					e.fake.ClearFaults()
					cleared = true
					continue
				}
				e.clock.Advance(next.Sub(e.clock.Now()))
				now := e.clock.Now()
				before, grantsBefore := e.stored("app"), refreshGrants(e)
				p := v.pass()
				// The fake stamps requests with the real clock: a grant is
				// dated by the pass that sent it.
				for n := refreshGrants(e) - grantsBefore; n > 0; n-- {
					if injected && !cleared {
						sent = append(sent, now)
					}
				}
				if p.read && injected && !cleared {
					reads++
				}
				if p.read && p.readErr == nil && p.heldToken != "" && v.token == p.heldToken {
					// A re-read of the stale token: how close to its expiry
					// VSO's ever shorter horizons drive it.
					if left := p.heldExp.Sub(now); !leastSet || left < leastLeft {
						leastLeft, leastSet = left, true
					}
				}
				after := e.stored("app")
				// A read when the plugin could refresh (Ermeo up, no backoff
				// pending) and the token held is past its usable end gets the
				// next token.
				if p.read && ermeoUp(now) && !now.Before(before.NextAttemptAt) && p.heldToken != "" &&
					!now.Before(p.heldExp.Add(-minTTL)) && (p.readErr != nil || v.token == p.heldToken) {
					t.Errorf("%s, t=%v: a read with Ermeo up and no backoff pending did not get the next token (err %v)", label, now.Sub(v.start), p.readErr)
				}
				// The Secret holds an expired token only when the plugin has
				// no valid one to serve, nor could get one.
				couldServe := !now.After(after.AccessTokenExpiresAt.Add(-time.Second)) || refreshWouldSucceed(ermeoUp(now), now, after)
				if !now.Before(v.tokenExpires) && couldServe {
					t.Errorf("%s, t=%v: the Secret holds a token expired %v ago while the plugin could serve a valid one (stored token expires %v, next attempt %v, Ermeo up %v)",
						label, now.Sub(v.start), now.Sub(v.tokenExpires), after.AccessTokenExpiresAt.Sub(now), after.NextAttemptAt.Sub(now), ermeoUp(now))
				}
				if !p.requeue {
					t.Fatalf("%s, t=%v: VSO stopped requeueing", label, now.Sub(v.start))
				}
				next = now.Add(p.next)
				// The time until the next pass the Secret spends holding an
				// expired token, by why.
				if from := maxTime(now, v.tokenExpires); from.Before(next) {
					ready := maxTime(back, after.NextAttemptAt)
					expiredDown += overlap(from, next, time.Time{}, back)
					expiredVSOWait += overlap(from, next, ready, next)
					if w := overlap(from, next, back, ready); w > 0 {
						expiredPluginWait += w
						if pluginWait == 0 {
							expired := fmt.Sprintf("%v before", back.Sub(v.tokenExpires))
							if v.tokenExpires.After(back) {
								expired = fmt.Sprintf("%v after", v.tokenExpires.Sub(back))
								stillValidWhenBack = true
							}
							pluginWaitDetail = fmt.Sprintf("Ermeo down from %v before the token's usable end for %v; the token VSO held expired %s Ermeo came back; "+
								"the plugin's next attempt came %v after Ermeo was back (after %d failed refreshes, a backoff step of %v)",
								v.tokenExpires.Add(-minTTL).Sub(down), outage, expired, after.NextAttemptAt.Sub(back), after.Failures, backoffFor(after.Failures, 0))
						}
						pluginWait += w
					}
				}
				if cleared && len(v.generation) >= 2 && v.token != first.AccessToken {
					break
				}
				if now.Sub(back) > lifetime {
					t.Fatalf("%s: no new token a token's lifetime after Ermeo came back", label)
				}
			}
			outages++
			if pluginWait > 0 {
				runsPluginWait++
				detail := fmt.Sprintf("seed %d (renewalPercent %d): %s: the Secret held an expired token %v while Ermeo was up again", seed, rp, pluginWaitDetail, pluginWait.Round(time.Millisecond))
				if pluginWait > worstPluginWait {
					worstPluginWait, worst = pluginWait, detail
				}
				if stillValidWhenBack {
					validWhenBack++
					if pluginWait > worstValidWait {
						worstValidWait, worstValid = pluginWait, detail
					}
				}
			}
			staleReads += reads
			mostStaleReads = max(mostStaleReads, reads)
			// The refresh grants sent while Ermeo was down: each at least
			// one backoff step (after k failures, backoffFor(k)) after the
			// one before.
			grants += len(sent)
			mostGrants = max(mostGrants, len(sent))
			for k := 1; k < len(sent); k++ {
				gap, step := sent[k].Sub(sent[k-1]), backoffFor(k, 0)
				if ratio := float64(gap) / float64(step); leastGapRatio < 0 || ratio < leastGapRatio {
					leastGapRatio = ratio
				}
				if gap < step {
					t.Errorf("%s: refresh grant %d came %v after grant %d, within backoff step %d (%v): %d grants in %v of outage",
						label, k+1, gap, k, k, step, len(sent), outage)
				}
			}
			e.assertNoTokenUsedTwice()
		}
		t.Logf("VSO with Ermeo down, min_ttl %v, tokens of %v, %d seeds (renewalPercent 67 and 90), outages of %v to %v from up to min_ttl/2 before the usable end: "+
			"re-reads of the stale token per outage mean %.1f max %d; refresh grants per outage mean %.1f max %d, the closest two %.2f backoff steps apart; "+
			"least life left in the stale token at a re-read that got it again %v; time the Secret held an expired token (all runs): %v while Ermeo was down, %v while Ermeo was up again but the plugin's backoff ran (%d runs, in %d of them the token was still valid when Ermeo came back), %v while VSO's own backoff ran after that",
			minTTL, lifetime, seeds, shortest.Round(time.Second), longest.Round(time.Second),
			float64(staleReads)/float64(outages), mostStaleReads, float64(grants)/float64(outages), mostGrants, leastGapRatio,
			leastLeft, expiredDown.Round(time.Millisecond), expiredPluginWait.Round(time.Millisecond), runsPluginWait, validWhenBack, expiredVSOWait.Round(time.Millisecond))
		if worst != "" {
			t.Logf("VSO with Ermeo down, min_ttl %v: the longest wait on the plugin's backoff with an expired token held: %s", minTTL, worst)
		}
		if worstValid != "" && worstValid != worst {
			t.Logf("VSO with Ermeo down, min_ttl %v: the longest such wait where the token was still valid when Ermeo came back: %s", minTTL, worstValid)
		}
	}
}

// refreshGrants is how many refresh_token grants the fake has seen.
func refreshGrants(e *testEnv) int {
	n := 0
	for _, count := range e.fake.Counters().Grants["refresh_token"] {
		n += count
	}
	return n
}

// refreshWouldSucceed reports whether a read at now would refresh the
// account a: Ermeo is up and the plugin's backoff is over.
func refreshWouldSucceed(up bool, now time.Time, a *accountEntry) bool {
	return up && !now.Before(a.NextAttemptAt)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// overlap is the length of [a, b) within [from, to) (from zero: the start of time).
func overlap(a, b, from, to time.Time) time.Duration {
	lo, hi := maxTime(a, from), b
	if to.Before(hi) {
		hi = to
	}
	if !hi.After(lo) {
		return 0
	}
	return hi.Sub(lo)
}

// esoRun is ESO's VaultDynamicSecret generator behind an ExternalSecret: a
// read of creds/app every interval, from first on, until end; it never
// renews or revokes a lease. other, if not nil, is when another reader of
// the same account reads next after a read at a given time and token expiry
// (nil: ESO alone). It returns the least life left in the token the Secret
// held when it let go of it, the time it held an expired token (in all and
// the most at once), and the reads (leases) per token generation.
type esoFigures struct {
	reads               int
	leastLeft           time.Duration
	leastSet            bool
	expired, mostAtOnce time.Duration
	expiredLater        time.Duration // of the tokens after the first the Secret held
	readsPerGeneration  []int
}

func esoRun(t *testing.T, e *testEnv, label string, first time.Time, interval time.Duration, end time.Time,
	other func(rng *rand.Rand, exp time.Time) time.Time, rng *rand.Rand) esoFigures {
	t.Helper()
	var (
		f            esoFigures
		held         string
		heldExp      time.Time
		readsOf      = map[string]int{}
		nextESO      = first
		nextOther    time.Time
		otherReading = other != nil
	)
	if otherReading {
		nextOther = other(rng, e.stored("app").AccessTokenExpiresAt)
	}
	for nextESO.Before(end) {
		if otherReading && nextOther.Before(nextESO) {
			e.clock.Advance(nextOther.Sub(e.clock.Now()))
			resp, err := consumerRead(e, "other")
			if err != nil {
				t.Fatalf("%s: the other reader's read failed: %v", label, err)
			}
			nextOther = other(rng, tokenExpiry(t, e, resp.Data["access_token"].(string)))
			continue
		}
		e.clock.Advance(nextESO.Sub(e.clock.Now()))
		now := e.clock.Now()
		if held != "" {
			left := heldExp.Sub(now)
			if !f.leastSet || left < f.leastLeft {
				f.leastLeft, f.leastSet = left, true
			}
			if left < 0 {
				f.expired += -left
				f.mostAtOnce = max(f.mostAtOnce, -left)
				if f.reads > readsOf[held] {
					f.expiredLater += -left
				}
			}
		}
		resp, err := consumerRead(e, fmt.Sprint("eso-", f.reads))
		if err != nil {
			t.Fatalf("%s: an ESO read failed with Ermeo up: %v", label, err)
		}
		f.reads++
		tok := resp.Data["access_token"].(string)
		if tok != held && held != "" {
			f.readsPerGeneration = append(f.readsPerGeneration, readsOf[held])
		}
		readsOf[tok]++
		held, heldExp = tok, tokenExpiry(t, e, tok)
		nextESO = now.Add(interval)
	}
	return f
}

// ESO's VaultDynamicSecret generator with refreshInterval at most half of
// min_ttl: each read gets a token with at least min_ttl left, so the Secret
// never holds one with less than half of min_ttl left.
func TestESOIntervalReadsKeepHalfOfMinTTLInTheSecret(t *testing.T) {
	const seeds = 40
	for _, minTTL := range consumerMinTTLs {
		lifetime := consumerTokenLifetime(minTTL)
		var (
			reads, generations, generationReads int
			least                               time.Duration
			leastSet                            bool
			shortest, longest                   time.Duration
		)
		for seed := int64(1); seed <= seeds; seed++ {
			rng := rand.New(rand.NewSource(seed))
			// refreshInterval: min_ttl/2 exactly for the first seeds, else
			// anywhere from a quarter to half of min_ttl, in whole seconds
			// as an ExternalSecret's duration would be written (at least 1s).
			interval := minTTL / 2
			if seed > 5 {
				interval = minTTL/4 + time.Duration(rng.Int63n(int64(minTTL/4)+1))
			}
			interval = max(interval.Truncate(time.Second), time.Second)
			if interval > minTTL/2 {
				t.Fatalf("refreshInterval %v above min_ttl/2", interval)
			}
			if shortest == 0 || interval < shortest {
				shortest = interval
			}
			longest = max(longest, interval)
			e := newConsumerEnv(t, minTTL, lifetime)
			label := fmt.Sprintf("ESO refreshInterval %v, min_ttl %v, tokens of %v, seed %d", interval, minTTL, lifetime, seed)
			first := e.clock.Now().Add(time.Duration(rng.Int63n(int64(lifetime))))
			f := esoRun(t, e, label, first, interval, first.Add(2*lifetime), nil, rng)
			if f.leastSet && f.leastLeft < minTTL/2 {
				t.Errorf("%s: the Secret held a token down to %v of life left, less than half of min_ttl", label, f.leastLeft)
			}
			if f.leastSet && (!leastSet || f.leastLeft < least) {
				least, leastSet = f.leastLeft, true
			}
			reads += f.reads
			for _, n := range f.readsPerGeneration {
				generations++
				generationReads += n
			}
			e.assertNoTokenUsedTwice()
		}
		t.Logf("ESO refreshInterval %v to %v (at most min_ttl/2), min_ttl %v, tokens of %v, %d seeds: %d reads (each a lease ESO never renews nor revokes) over %d token generations, %.1f per generation; least life left in the Secret's token %v (%.0f%% of min_ttl)",
			shortest, longest, minTTL, lifetime, seeds, reads, generations, float64(generationReads)/float64(max(generations, 1)), least, 100*float64(least)/float64(minTTL))
	}
}

// ESO's defaults, refreshInterval 1h, with Ermeo's 2 h tokens and min_ttl
// 10m: shown, not asserted. Alone, ESO's reads lock to the token's life after
// the first; another reader of the same account (here one that refreshes the
// token within 5 minutes of its usable end, as Vault Agent would) shifts the
// token's life against ESO's reads, and a Secret then holds a token expired
// for up to refreshInterval - min_ttl.
func TestESODefaultIntervalHoldsExpiredTokens(t *testing.T) {
	const (
		seeds    = 40
		minTTL   = 10 * time.Minute
		lifetime = 2 * time.Hour
		interval = time.Hour
	)
	for _, shared := range []bool{false, true} {
		var (
			expired, later, most, least time.Duration
			runsExpired                 int
			leastSet                    bool
		)
		for seed := int64(1); seed <= seeds; seed++ {
			rng := rand.New(rand.NewSource(seed))
			e := newConsumerEnv(t, minTTL, lifetime)
			var other func(*rand.Rand, time.Time) time.Time
			if shared {
				other = func(rng *rand.Rand, exp time.Time) time.Time {
					return exp.Add(-minTTL + time.Duration(rng.Int63n(int64(5*time.Minute))))
				}
			}
			label := fmt.Sprintf("ESO refreshInterval 1h, min_ttl 10m, 2h tokens, shared %v, seed %d", shared, seed)
			first := e.clock.Now().Add(time.Duration(rng.Int63n(int64(lifetime))))
			f := esoRun(t, e, label, first, interval, first.Add(12*time.Hour), other, rng)
			expired += f.expired
			later += f.expiredLater
			most = max(most, f.mostAtOnce)
			if f.expired > 0 {
				runsExpired++
			}
			if f.leastSet && (!leastSet || f.leastLeft < least) {
				least, leastSet = f.leastLeft, true
			}
		}
		who := "ESO alone"
		if shared {
			who = "ESO sharing the account with a reader that refreshes within 5m of the usable end"
		}
		t.Logf("ESO defaults (not asserted): refreshInterval 1h, min_ttl 10m, 2h tokens, %s, %d seeds of 12h from a first read anywhere in the first token's life: "+
			"the Secret held an expired token in %d runs, %v in all (mean %v a run; %v of it after the first token), at most %v at once; least life left in the Secret's token %v",
			who, seeds, runsExpired, expired.Round(time.Second), (expired / seeds).Round(time.Second), later.Round(time.Second), most.Round(time.Second), least.Round(time.Second))
	}
}
