package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/consumers"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// Short tokens, so that three token generations pass in under a minute: the
// plugin hands a token out until it has min_ttl left, so a generation lasts
// about vsoTokenTTL - vsoMinTTL (16 s), under leases of min_ttl/2 (4 s)
// renewable up to min_ttl/2 before the token expires.
const (
	vsoTokenTTL = 24 * time.Second
	vsoMinTTL   = 8 * time.Second
	// vsoRenewalPercent is VSO's default renewalPercent.
	vsoRenewalPercent = 67
	// vsoGenerations is how many token generations the client holds to
	// their replacement.
	vsoGenerations = 3
	vsoDeadline    = 90 * time.Second
	// vsoPoll is how often the test checks the token the client holds
	// between two of its passes.
	vsoPoll = 100 * time.Millisecond
)

// TestVSOLikeClientKeepsAValidToken runs, against the real Vault, a client
// that keeps creds/app as Vault Secrets Operator v1.4.1's VaultDynamicSecret
// does (the model of k8s_consumers_test.go, vsoModel): it reads creds/app,
// then at computeDynamicHorizonWithJitter of each lease (67% plus up to 10%
// jitter) renews it through sys/leases/renew with increment = the last
// lease_duration; a renewal that comes back shorter than asked
// (LeaseTruncatedError) or fails makes it read creds/app again in the same
// pass; a non-renewable renewal would stop it for good (VSO returns without
// a requeue). The fake Ermeo issues 24 s tokens; the account's min_ttl is
// 8 s. Through three token generations it checks, every 100 ms and at every
// pass, that the fake accepts the token the client holds; that every renewal
// answer is renewable with a lease_duration above 0; that each re-read past
// the held token's usable end gets the next token, which has at least
// min_ttl left; and that every token Ermeo issued was read. It prints the
// figures.
//
// Beside it, on a mount of its own: `vault lease renew -increment=<the
// lease's lease_duration>` a little after the token's usable end (min_ttl - 2 s
// before it expires) comes back shorter than asked.
func TestVSOLikeClientKeepsAValidToken(t *testing.T) {
	t.Parallel()
	bin, why := FindVault()
	if vault != nil && bin == "" {
		t.Fatal(why)
	}
	e := newEnv(t, fakeermeo.Options{AccessTokenTTL: vsoTokenTTL})
	e.configure()
	cli := newEnvAt(t, fakeermeo.Options{AccessTokenTTL: vsoTokenTTL}, "-cli")
	cli.configure()
	home := t.TempDir()

	// The -increment part runs beside the client, on its own mount and
	// fake, so that neither sees the other's reads.
	cli.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword, "min_ttl": int(vsoMinTTL.Seconds())})
	var wg sync.WaitGroup
	var cliLine string
	wg.Add(1)
	go func() {
		defer wg.Done()
		cliLine = vsoIncrementNearTheEnd(t, cli, bin, home)
	}()
	defer wg.Wait()

	e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword, "min_ttl": int(vsoMinTTL.Seconds())})
	seed := time.Now().UnixNano()
	v := &vsoClient{t: t, e: e, rng: rand.New(rand.NewSource(seed)), start: time.Now(), readsOf: map[string]int{}}
	defer func() {
		if t.Failed() {
			t.Logf("the client's passes (seed %d):\n%s", seed, strings.Join(v.events, "\n"))
		}
	}()
	for len(v.tokens) <= vsoGenerations {
		if time.Since(v.start) > vsoDeadline {
			t.Fatalf("%d token generations in %v: the client read %d tokens", vsoGenerations, vsoDeadline, len(v.tokens))
		}
		next, requeue := v.pass()
		if !requeue {
			t.Errorf("%s: the client (as VSO) stopped requeueing: it would never look at the secret again", v.at(time.Now()))
			break
		}
		v.wait(time.Now().Add(next))
	}
	elapsed := time.Since(v.start)
	wg.Wait()

	// Every token Ermeo issued was read, and the client read again.
	for i, tok := range e.fake.IssuedAccessTokens() {
		if v.readsOf[tok] == 0 {
			exp, _ := e.fake.AccessTokenExpiresAt(tok)
			t.Errorf("Ermeo's token #%d (issued at %s) was never read by the client", i+1, v.at(exp.Add(-vsoTokenTTL)))
		}
	}
	if v.rereads == 0 {
		t.Errorf("the client never read creds/app again")
	}
	if v.expiredPolls > 0 {
		t.Errorf("the client held a token the fake rejects at %d of %d checks", v.expiredPolls, v.polls)
	}
	var perGen []int // reads of each token held to its replacement
	for i := 0; i+1 < len(v.tokens); i++ {
		perGen = append(perGen, v.readsOf[v.tokens[i]])
	}
	mean, most := 0.0, 0
	for _, n := range perGen {
		mean += float64(n)
		most = max(most, n)
	}
	if len(perGen) > 0 {
		mean /= float64(len(perGen))
	}
	refreshes := e.fake.Counters().Grants["refresh_token"]["success"]
	warning := "none"
	if v.truncWarning != "" {
		warning = fmt.Sprintf("%q", v.truncWarning)
	}
	fmt.Printf("%s: VSO-like client (renewalPercent %d + up to 10%% jitter, increment = last lease_duration), tokens of %v, min_ttl %v, %v: "+
		"%d token generations held to their replacement (%d tokens read); creds reads per generation mean %.2f max %d; "+
		"%d passes, %d full renewals, %d cut short (LeaseTruncatedError, then read in the same pass; their lease_duration %v), %d failed, %d non-renewable, %d with lease_duration 0; "+
		"%d re-reads (%d of the same token); %d refresh grants at Ermeo; held token checked %d times, %d rejected (%d at Ermeo's profile); "+
		"least life left in the held token %v (%.0f%% of min_ttl); a truncated renewal's warning: %s\n",
		t.Name(), vsoRenewalPercent, vsoTokenTTL, vsoMinTTL, elapsed.Round(100*time.Millisecond),
		len(perGen), len(v.tokens), mean, most,
		v.passes, v.renewals, v.truncated, v.truncatedTo, v.renewErrors, v.nonRenewable, v.zeroRenewals,
		v.rereads, v.rereadsSameToken, refreshes, v.polls, v.expiredPolls, v.profileRejected,
		v.leastLeft.Round(10*time.Millisecond), 100*float64(v.leastLeft)/float64(vsoMinTTL), warning)
	if cliLine != "" {
		fmt.Printf("%s: %s\n", t.Name(), cliLine)
	}
	e.assertNoSecretReturned(testClientSecret, testPassword)
	cli.assertNoSecretReturned(testClientSecret, testPassword)
}

// vsoClient is one VaultDynamicSecret of VSO reading creds/app, and the
// Kubernetes Secret it writes.
type vsoClient struct {
	t     *testing.T
	e     *env
	rng   *rand.Rand
	start time.Time

	// status.secretLease
	leaseID       string
	leaseDuration int
	renewable     bool

	// the Secret
	token   string
	expires time.Time
	tokens  []string // the tokens it held, in order
	readsOf map[string]int

	passes, reads, renewals, truncated, renewErrors, nonRenewable, zeroRenewals int
	rereads, rereadsSameToken                                                   int
	polls, expiredPolls, profileRejected                                        int
	leastLeft                                                                   time.Duration
	leastSet                                                                    bool
	truncWarning                                                                string
	truncatedTo                                                                 []int // the lease_duration of each truncated renewal
	events                                                                      []string
}

func (v *vsoClient) at(t time.Time) string {
	return fmt.Sprintf("t=%.2fs", t.Sub(v.start).Seconds())
}

func (v *vsoClient) event(format string, args ...any) {
	v.events = append(v.events, fmt.Sprintf("  %s ", v.at(time.Now()))+fmt.Sprintf(format, args...))
}

func (v *vsoClient) noteLeft(d time.Duration) {
	if !v.leastSet || d < v.leastLeft {
		v.leastLeft, v.leastSet = d, true
	}
}

// check checks that the fake accepts the token the client holds; withProfile
// also presents it to Ermeo's profile endpoint.
func (v *vsoClient) check(withProfile bool) {
	if v.token == "" {
		return
	}
	v.polls++
	now := time.Now()
	v.noteLeft(v.expires.Sub(now))
	ok := v.e.fake.AccessTokenValid(v.token)
	if ok && withProfile {
		if status := profileStatus(v.t, v.e.url, v.token); status != http.StatusOK {
			v.profileRejected++
			ok = false
		}
	}
	if !ok {
		if v.expiredPolls == 0 {
			v.t.Errorf("%s: the client holds token #%d, which the fake rejects (%v past its expiry)",
				v.at(now), len(v.tokens), now.Sub(v.expires).Round(10*time.Millisecond))
		}
		v.expiredPolls++
	}
}

// wait sleeps until until, checking the held token every vsoPoll.
func (v *vsoClient) wait(until time.Time) {
	for {
		v.check(false)
		d := time.Until(until)
		if d <= 0 {
			return
		}
		time.Sleep(min(d, vsoPoll))
	}
}

// pass is one Reconcile; it returns when to come back, and whether VSO
// would come back at all.
func (v *vsoClient) pass() (time.Duration, bool) {
	v.passes++
	v.check(true)
	if v.leaseID != "" && v.renewable {
		if next, done, requeue := v.renew(); done {
			return next, requeue
		}
	}
	return v.read()
}

// renew is VSO's renewLease and what Reconcile does with its answer; done
// means no read follows in this pass.
func (v *vsoClient) renew() (next time.Duration, done, requeue bool) {
	increment := v.leaseDuration
	left := v.expires.Sub(time.Now())
	s, err := v.e.c.Sys().Renew(v.leaseID, increment)
	v.e.record(s)
	if err != nil || s == nil {
		v.renewErrors++
		v.event("renew increment=%ds (token %.2fs left): FAILED (%v): read again", increment, left.Seconds(), err)
		return 0, false, true
	}
	if !s.Renewable {
		v.nonRenewable++
		v.t.Errorf("%s: the renewal of a %ds lease (increment %d, token %.2fs left) answered renewable=false lease_duration=%d (warnings %q): "+
			"VSO stops requeueing on a non-renewable renewal", v.at(time.Now()), v.leaseDuration, increment, left.Seconds(), s.LeaseDuration, s.Warnings)
	}
	if s.LeaseDuration <= 0 {
		v.zeroRenewals++
		v.t.Errorf("%s: the renewal of a %ds lease (increment %d, token %.2fs left) answered lease_duration=%d renewable=%v (warnings %q)",
			v.at(time.Now()), v.leaseDuration, increment, left.Seconds(), s.LeaseDuration, s.Renewable, s.Warnings)
	}
	if s.LeaseDuration < increment {
		// LeaseTruncatedError: read again in the same pass.
		v.truncated++
		v.truncatedTo = append(v.truncatedTo, s.LeaseDuration)
		if v.truncWarning == "" && len(s.Warnings) > 0 {
			v.truncWarning = strings.Join(s.Warnings, " ")
		}
		v.event("renew increment=%ds (token %.2fs left): lease_duration %d renewable %v: truncated, read again", increment, left.Seconds(), s.LeaseDuration, s.Renewable)
		return 0, false, true
	}
	if !s.Renewable {
		v.event("renew increment=%ds: not renewable: VSO stops", increment)
		return 0, true, false
	}
	v.renewals++
	v.leaseDuration = s.LeaseDuration
	next = consumers.VSOHorizon(v.rng, time.Duration(s.LeaseDuration)*time.Second, vsoRenewalPercent)
	v.event("renew increment=%ds (token %.2fs left): lease_duration %d: next pass in %.2fs", increment, left.Seconds(), s.LeaseDuration, next.Seconds())
	return next, true, true
}

// read is VSO's syncSecret and computePostSyncHorizon.
func (v *vsoClient) read() (time.Duration, bool) {
	v.reads++
	now := time.Now()
	reread := v.token != ""
	var heldLeft time.Duration
	if reread {
		v.rereads++
		heldLeft = v.expires.Sub(now)
		v.noteLeft(heldLeft)
		if heldLeft < vsoMinTTL/2 {
			v.t.Errorf("%s: the client read again with %v left in the token it held, less than half of min_ttl", v.at(now), heldLeft)
		}
	}
	s, err := v.e.read("creds/app")
	if err != nil || s == nil {
		// VSO's BackOffRegistry starts at 5 s.
		v.t.Errorf("%s: a creds read failed with Ermeo up: %v", v.at(now), err)
		return 5 * time.Second, true
	}
	tok, _ := s.Data["access_token"].(string)
	exp, ok := v.e.fake.AccessTokenExpiresAt(tok)
	if !ok || !v.e.fake.AccessTokenValid(tok) {
		v.t.Fatalf("%s: creds/app returned a token the fake does not accept", v.at(now))
	}
	if left := time.Until(exp); left < vsoMinTTL {
		v.t.Errorf("%s: a read got a token with %v left, less than min_ttl", v.at(now), left)
	}
	what := "same token"
	if reread && tok == v.token {
		v.rereadsSameToken++
		if !now.Before(v.expires.Add(-vsoMinTTL)) {
			v.t.Errorf("%s: a re-read %v past the held token's usable end got the same token", v.at(now), now.Sub(v.expires.Add(-vsoMinTTL)))
		}
	}
	if tok != v.token {
		v.tokens = append(v.tokens, tok)
		what = fmt.Sprintf("token #%d", len(v.tokens))
	}
	v.readsOf[tok]++
	v.token, v.expires = tok, exp
	v.leaseID, v.leaseDuration, v.renewable = s.LeaseID, s.LeaseDuration, s.Renewable
	if s.LeaseID == "" {
		v.t.Errorf("%s: creds/app answered without a lease", v.at(now))
	}
	if s.LeaseDuration < 1 {
		v.t.Errorf("%s: a creds read answered lease_duration %d: VSO's horizon is 0 and it never comes back", v.at(now), s.LeaseDuration)
		return 0, false
	}
	next := consumers.VSOHorizon(v.rng, time.Duration(s.LeaseDuration)*time.Second, vsoRenewalPercent)
	held := ""
	if reread {
		held = fmt.Sprintf(" (held token had %.2fs left)", heldLeft.Seconds())
	}
	v.event("read%s: %s, %.2fs left, lease_duration %d renewable %v: next pass in %.2fs", held, what, time.Until(exp).Seconds(), s.LeaseDuration, s.Renewable, next.Seconds())
	return next, true
}

// vsoIncrementNearTheEnd reads creds/app of cli's account (written just
// before) when its token has min_ttl + 2.5 s left, renews that lease as VSO
// would (increment = its lease_duration) half a second before the token's
// usable end, and then, min_ttl - 2 s before the token expires, runs `vault
// lease renew -increment=<lease_duration>`: the renewal must come back
// shorter than asked. It returns the line to print. Called on a goroutine:
// it reports with t.Errorf only.
func vsoIncrementNearTheEnd(t *testing.T, cli *env, bin, home string) string {
	issued := cli.fake.IssuedAccessTokens()
	if len(issued) != 1 {
		t.Errorf("-increment: the fake issued %d tokens, want 1", len(issued))
		return ""
	}
	exp, _ := cli.fake.AccessTokenExpiresAt(issued[0])
	time.Sleep(time.Until(exp.Add(-vsoMinTTL - 2500*time.Millisecond)))
	s, err := cli.read("creds/app")
	if err != nil || s == nil {
		t.Errorf("-increment: creds read: %v", err)
		return ""
	}
	if s.Data["access_token"] != issued[0] || !s.Renewable || s.LeaseDuration < 1 {
		t.Errorf("-increment: want a renewable lease of the first token %.2fs before it expires, got renewable=%v lease_duration=%d same token %v",
			time.Until(exp).Seconds(), s.Renewable, s.LeaseDuration, s.Data["access_token"] == issued[0])
		return ""
	}
	lease := s.LeaseDuration
	// Renewed once as VSO would, so that the lease is alive past the usable end.
	time.Sleep(time.Until(exp.Add(-vsoMinTTL - 500*time.Millisecond)))
	r, err := cli.c.Sys().Renew(s.LeaseID, lease)
	cli.record(r)
	if err != nil || r == nil || r.LeaseDuration != lease || !r.Renewable {
		t.Errorf("-increment: the renewal %.2fs before the token expires: want lease_duration %d renewable, got %+v, %v", time.Until(exp).Seconds(), lease, r, err)
		return ""
	}
	time.Sleep(time.Until(exp.Add(-vsoMinTTL + 2*time.Second)))
	leftAt := time.Until(exp)
	asked := fmt.Sprintf("-increment=%ds", lease)
	cmd := exec.Command(bin, "lease", "renew", "-format=json", asked, s.LeaseID)
	cmd.Env = append(cleanEnv(), "HOME="+home, "VAULT_ADDR="+vault.Addr, "VAULT_TOKEN="+vault.Token)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	leftAfter := time.Until(exp)
	cli.mu.Lock()
	cli.responses = append(cli.responses, string(out), stderr.String())
	cli.mu.Unlock()
	if err != nil {
		t.Errorf("vault lease renew %s %.2fs before the token expires: %v\n%s%s", asked, leftAt.Seconds(), err, out, stderr.String())
		return ""
	}
	var got struct {
		LeaseID       string   `json:"lease_id"`
		LeaseDuration int      `json:"lease_duration"`
		Renewable     bool     `json:"renewable"`
		Warnings      []string `json:"warnings"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Errorf("vault lease renew %s: parsing its output: %v\n%s", asked, err, out)
		return ""
	}
	if got.LeaseDuration >= lease {
		t.Errorf("vault lease renew %s %.2fs before the token expires (min_ttl %v): lease_duration %d, want less than asked",
			asked, leftAt.Seconds(), vsoMinTTL, got.LeaseDuration)
	}
	if got.LeaseDuration <= 0 || !got.Renewable {
		t.Errorf("vault lease renew %s %.2fs before the token expires: lease_duration %d renewable %v (warnings %q)",
			asked, leftAt.Seconds(), got.LeaseDuration, got.Renewable, got.Warnings)
	}
	warning := "no warning"
	if len(got.Warnings) > 0 {
		warning = fmt.Sprintf("warning %q", strings.Join(got.Warnings, " "))
	}
	return fmt.Sprintf("vault lease renew %s <lease>, run %.2fs before the token expires and done %.2fs before (min_ttl %v: the usable end passed %.2fs before the run): lease_duration %ds (asked %ds), renewable %v, %s",
		asked, leftAt.Seconds(), leftAfter.Seconds(), vsoMinTTL, (vsoMinTTL - leftAt).Seconds(), got.LeaseDuration, lease, got.Renewable, warning)
}
