package ermeosecrets

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

func TestCredsServesTheCachedTokenWithoutCallingErmeo(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	first := e.creds("app")
	before := e.fake.Counters().Requests
	for i := 0; i < 5; i++ {
		e.clock.Advance(10 * time.Minute) // 7200s token, 600s min_ttl: still fresh
		if e.creds("app").Data["access_token"] != first.Data["access_token"] {
			t.Fatalf("read %d returned another token", i)
		}
	}
	if after := e.fake.Counters().Requests; after != before {
		t.Errorf("cached reads called Ermeo %d times", after-before)
	}
}

func TestCredsResponseAndLease(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", map[string]any{"min_ttl": "15m"})
	resp := e.creds("app")
	if resp.Data["token_type"] != "Bearer" {
		t.Errorf("token_type = %v", resp.Data["token_type"])
	}
	if resp.Data["expires_in"] != int64(7200) {
		t.Errorf("expires_in = %v", resp.Data["expires_in"])
	}
	if resp.Data["expires_at"] != formatTime(e.clock.Now().Add(2*time.Hour)) {
		t.Errorf("expires_at = %v", resp.Data["expires_at"])
	}
	s := resp.Secret
	if s == nil || !s.Renewable {
		t.Fatalf("want a renewable lease, got %+v", s)
	}
	if s.TTL != 15*time.Minute/2 {
		t.Errorf("lease TTL %v: want half of min_ttl", s.TTL)
	}
	if s.MaxTTL != 2*time.Hour-15*time.Minute/2 {
		t.Errorf("lease MaxTTL %v: want the token's life less half of min_ttl", s.MaxTTL)
	}
	if strings.Contains(strings.Join(fmtValues(s.InternalData), " "), e.stored("app").RefreshToken) {
		t.Errorf("lease internal data carries the refresh token")
	}
	// Revoking the lease does nothing upstream and succeeds.
	before := e.fake.Counters().Requests
	_, err := e.b.HandleRequest(t.Context(), &logical.Request{Operation: logical.RevokeOperation, Secret: s, Storage: e.storage})
	if err != nil {
		t.Errorf("revoke: %v", err)
	}
	if e.fake.Counters().Requests != before {
		t.Errorf("revoke called Ermeo")
	}
}

func fmtValues(m map[string]any) []string {
	var out []string
	for _, v := range m {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func TestLeaseTTL(t *testing.T) {
	cases := []struct{ remaining, minTTL, want time.Duration }{
		{2 * time.Hour, 10 * time.Minute, 110 * time.Minute},
		{11 * time.Minute, 10 * time.Minute, time.Minute},
		{5 * time.Minute, 10 * time.Minute, 150 * time.Second}, // shorter than min_ttl: half its life
		{time.Second, 10 * time.Minute, time.Second},
		{1500 * time.Millisecond, time.Second, time.Second},
	}
	for _, c := range cases {
		got := leaseTTL(c.remaining, c.minTTL)
		if got != c.want {
			t.Errorf("leaseTTL(%v, %v) = %v, want %v", c.remaining, c.minTTL, got, c.want)
		}
		if got > c.remaining {
			t.Errorf("leaseTTL(%v, %v) = %v outlives the token", c.remaining, c.minTTL, got)
		}
	}
}

func TestCredsRefreshesWhenLessThanMinTTLIsLeft(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	first := e.creds("app").Data["access_token"].(string)
	e.clock.Advance(2*time.Hour - 9*time.Minute) // 9 minutes left < 10 minutes min_ttl
	second := e.creds("app").Data["access_token"].(string)
	if second == first || !e.fake.AccessTokenValid(second) {
		t.Fatalf("want a new valid token")
	}
	a := e.stored("app")
	if a.Generation != 2 || a.RotationIntent != nil || a.State != stateActive {
		t.Errorf("after a refresh: generation %d intent %v state %s", a.Generation, a.RotationIntent, a.State)
	}
	if c := e.fake.Counters(); c.Grants["refresh_token"]["success"] != 1 {
		t.Errorf("refreshes: %v", c.Grants)
	}
	e.assertNoTokenUsedTwice()
}

func TestCredsUnknownAccountIs404(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	resp, err := e.request(logical.ReadOperation, "creds/nobody", nil)
	if err != nil || resp != nil {
		t.Errorf("want nil, nil (a 404), got %v %v", resp, err)
	}
}

func TestCredsOnAPerformanceStandbyForwardsBeforeCallingErmeo(t *testing.T) {
	for _, state := range []struct {
		name string
		set  func(*logical.StaticSystemView)
	}{
		{"performance standby", func(s *logical.StaticSystemView) { s.ReplicationStateVal = consts.ReplicationPerformanceStandby }},
		{"performance secondary", func(s *logical.StaticSystemView) { s.ReplicationStateVal = consts.ReplicationPerformanceSecondary }},
	} {
		t.Run(state.name, func(t *testing.T) {
			e := newTestEnv(t, fakeermeo.Options{})
			e.configure()
			e.createAccount("app", nil)
			state.set(e.system)
			// A cached token is still served locally.
			e.creds("app")
			e.clock.Advance(2 * time.Hour)
			before := e.fake.Counters().Requests
			_, err := e.request(logical.ReadOperation, "creds/app", nil)
			if err != logical.ErrReadOnly {
				t.Fatalf("want ErrReadOnly, got %v", err)
			}
			_, err = e.request(logical.UpdateOperation, "accounts/app/rotate", nil)
			if err != logical.ErrReadOnly {
				t.Fatalf("rotate: want ErrReadOnly, got %v", err)
			}
			if e.fake.Counters().Requests != before {
				t.Errorf("a standby called Ermeo")
			}
		})
	}
}

func TestCredsWithoutALeaseReturnsATTL(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", map[string]any{"lease": false, "min_ttl": "15m"})
	resp := e.creds("app")
	if resp.Secret != nil {
		t.Fatalf("lease=false returned a lease: %+v", resp.Secret)
	}
	if resp.Data["ttl"] != int64((2*time.Hour - 15*time.Minute - time.Second).Seconds()) {
		t.Errorf("ttl = %v", resp.Data["ttl"])
	}
	if resp.Data["rotation_period"] != int64(7200) {
		t.Errorf("rotation_period = %v: Agent needs it to honour ttl", resp.Data["rotation_period"])
	}
	if !e.fake.AccessTokenValid(resp.Data["access_token"].(string)) {
		t.Errorf("token not valid")
	}
	if st := e.must(logical.ReadOperation, "accounts/app", nil); st.Data["lease"] != false {
		t.Errorf("account read: lease = %v", st.Data["lease"])
	}
	// Switching back gives leases again.
	e.must(logical.UpdateOperation, "accounts/app", map[string]any{"lease": true})
	if resp := e.creds("app"); resp.Secret == nil || resp.Data["ttl"] != nil {
		t.Errorf("lease=true: %+v", resp)
	}
}

// The lease mode is chosen once for the mount (config's default_lease), and
// an account's own lease setting wins.
func TestConfigDefaultLeaseAndTheAccountsOverride(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.must(logical.UpdateOperation, "config", map[string]any{"default_lease": false})
	e.createAccount("inherits", nil)
	e.createAccount("leased", map[string]any{"lease": true})
	if r := e.creds("inherits"); r.Secret != nil || r.Data["ttl"] == nil {
		t.Errorf("an account without its own setting under default_lease=false: want no lease and a ttl, got %+v", r)
	}
	if r := e.creds("leased"); r.Secret == nil {
		t.Errorf("an account with lease=true: want a lease, got %+v", r)
	}
	if got := e.must(logical.ReadOperation, "accounts/inherits", nil).Data["lease"]; got != false {
		t.Errorf("accounts/inherits shows lease=%v", got)
	}
	e.must(logical.UpdateOperation, "config", map[string]any{"default_lease": true})
	if r := e.creds("inherits"); r.Secret == nil {
		t.Errorf("after default_lease=true: want a lease")
	}
	if got := e.must(logical.ReadOperation, "config", nil).Data["default_lease"]; got != true {
		t.Errorf("config shows default_lease=%v", got)
	}
}

func TestLeaseFor(t *testing.T) {
	expires := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name      string
		left      time.Duration // of the token's life at the read
		minTTL    time.Duration
		ttl       time.Duration
		renewable bool
		end       time.Duration // before expiry
	}{
		{"fresh token", 2 * time.Hour, 10 * time.Minute, 5 * time.Minute, true, 5 * time.Minute},
		{"just before the renewable window", 10*time.Minute + 2*time.Second, 10 * time.Minute, 5 * time.Minute, true, 5 * time.Minute},
		{"in the last seconds before the usable end", 10*time.Minute + 1500*time.Millisecond, 10 * time.Minute, 300 * time.Second, false, 10*time.Minute + 1500*time.Millisecond - 300*time.Second},
		{"past the usable end (served stale)", 4 * time.Minute, 10 * time.Minute, 2 * time.Minute, false, 2 * time.Minute},
		{"short min_ttl, no room to renew", 20 * time.Second, 5 * time.Second, 15 * time.Second, false, 5 * time.Second},
		{"shortest renewable step", 20 * time.Second, 6 * time.Second, 3 * time.Second, true, 3 * time.Second},
		{"odd min_ttl: a step of whole seconds", 20 * time.Second, 7 * time.Second, 3 * time.Second, true, 3500 * time.Millisecond},
	}
	for _, c := range cases {
		now := expires.Add(-c.left)
		l := leaseFor(now, expires, c.minTTL)
		if l.ttl != c.ttl || l.renewable != c.renewable || !l.end.Equal(expires.Add(-c.end)) {
			t.Errorf("%s: leaseFor = ttl %v renewable %v end %v before expiry; want %v %v %v",
				c.name, l.ttl, l.renewable, expires.Sub(l.end), c.ttl, c.renewable, c.end)
		}
		if now.Add(l.ttl).After(l.end) || l.end.After(expires) {
			t.Errorf("%s: the lease (%v) outlives its end or the token", c.name, l.ttl)
		}
	}
}

// vaultRenewer follows what Vault does with a renewable creds lease on behalf
// of Vault Agent and Vault Proxy: the expiration manager caps each renewal at
// the lease's issue time plus MaxTTL (framework.CalculateTTL) and reports
// whole seconds, and the lease's LifetimeWatcher (vault/api v1.22.0,
// lifetime_watcher.go, the version Vault 1.21 builds with) renews at two
// thirds of the lease plus a third of a 10-20% grace, and lets go once a
// renewal would land it in the grace. It returns when the watcher lets go.
type vaultRenewer struct {
	t         *testing.T
	e         *testEnv
	secret    *logical.Secret
	issued    time.Time
	increment time.Duration
	rng       *rand.Rand
	renewals  int
	// leaseEnds are the lease's ends after each renewal.
	leaseEnds []time.Time
	warnings  []string
}

func (r *vaultRenewer) renew() (time.Duration, error) {
	s := *r.secret
	s.IssueTime = r.issued
	s.Increment = r.increment
	resp, err := r.e.b.HandleRequest(r.t.Context(), &logical.Request{Operation: logical.RenewOperation, Secret: &s, Storage: r.e.view, MountPoint: testMount})
	if err != nil {
		return 0, err
	}
	if resp.IsError() {
		return 0, resp.Error()
	}
	r.warnings = append(r.warnings, resp.Warnings...)
	ttl := resp.Secret.TTL
	if r.increment > 0 {
		ttl = r.increment
	}
	if limit := r.issued.Add(resp.Secret.MaxTTL).Sub(r.e.clock.Now()); ttl > limit {
		ttl = limit
	}
	if ttl <= 0 {
		return 0, errors.New("past the max TTL, cannot renew")
	}
	r.secret = resp.Secret
	r.renewals++
	r.leaseEnds = append(r.leaseEnds, r.e.clock.Now().Add(ttl))
	return ttl.Truncate(time.Second), nil
}

func (r *vaultRenewer) grace(lease time.Duration) time.Duration {
	jitterMax := time.Duration(0.1 * float64(lease))
	return jitterMax + time.Duration(r.rng.Int63n(int64(jitterMax)))
}

// run renews until the watcher lets go, and returns how many renewals
// failed on the way.
func (r *vaultRenewer) run() (failed int) {
	initial := r.secret.TTL.Truncate(time.Second)
	prior := initial
	grace := r.grace(prior)
	initialTime := r.e.clock.Now()
	for i := 0; i < 10000; i++ {
		remaining, err := r.renew()
		if err != nil {
			failed++
			remaining = initialTime.Add(initial).Sub(r.e.clock.Now())
			if remaining <= grace || remaining-10*time.Second <= grace {
				return failed
			}
			r.e.clock.Advance(10 * time.Second)
			continue
		}
		initial, initialTime = remaining, r.e.clock.Now()
		if remaining > prior {
			grace = r.grace(remaining)
		}
		sleep := remaining*2/3 + grace/3
		prior = remaining
		if remaining <= grace || remaining-sleep <= grace {
			return failed
		}
		r.e.clock.Advance(sleep)
	}
	r.t.Fatal("the renewer never let go")
	return failed
}

// A renewable creds lease keeps one answer alive through Vault's renewer for
// as long as the token has at least min_ttl left, is never extended past half
// of min_ttl before the token expires, and is let go of only after the
// token's usable end, so that the read that follows gets the next token: one
// read per token for Vault Proxy, and a new token in time for Vault Agent,
// from whatever point of the token's life the lease was read.
func TestRenewableLeaseFollowsVaultsRenewer(t *testing.T) {
	for _, minTTL := range []time.Duration{6 * time.Second, 7 * time.Second, 10 * time.Second, 10 * time.Minute} {
		for seed := int64(1); seed <= 40; seed++ {
			e := newTestEnv(t, fakeermeo.Options{})
			e.configure()
			e.createAccount("app", map[string]any{"min_ttl": minTTL.String()})
			first := e.creds("app")
			expires := e.stored("app").AccessTokenExpiresAt
			rng := rand.New(rand.NewSource(seed))
			// Read at a random point of the token's renewable life, or
			// (the first seeds) at its very end.
			span := expires.Sub(e.clock.Now()) - minTTL - renewableWindow
			offset := time.Duration(rng.Int63n(int64(span)))
			if seed <= 3 {
				offset = span - time.Duration(seed-1)*300*time.Millisecond
			}
			e.clock.Advance(offset)
			read := e.creds("app")
			if read.Data["access_token"] != first.Data["access_token"] || !read.Secret.Renewable {
				t.Fatalf("min_ttl %v seed %d: want the same token under a renewable lease, got %+v", minTTL, seed, read.Secret)
			}
			r := &vaultRenewer{t: t, e: e, secret: read.Secret, issued: e.clock.Now(), rng: rng}
			if failed := r.run(); failed != 0 {
				t.Errorf("min_ttl %v seed %d: %d renewals failed (Vault's renewer retries failures)", minTTL, seed, failed)
			}
			letGo := e.clock.Now()
			usableEnd := expires.Add(-minTTL)
			if !letGo.After(usableEnd) {
				t.Errorf("min_ttl %v seed %d: the renewer let go %v before the usable end: the next read gets the same token again", minTTL, seed, usableEnd.Sub(letGo))
			}
			for i, end := range r.leaseEnds {
				if left := expires.Sub(end); left < minTTL/2 {
					t.Errorf("min_ttl %v seed %d: renewal %d extended the lease to %v before the token expires, less than half of min_ttl", minTTL, seed, i+1, left)
				}
			}
			next := e.creds("app")
			if next.Data["access_token"] == first.Data["access_token"] {
				t.Errorf("min_ttl %v seed %d: the read after the renewer let go got the old token", minTTL, seed)
			}
			if !next.Secret.Renewable {
				t.Errorf("min_ttl %v seed %d: the next token's lease is not renewable", minTTL, seed)
			}
		}
	}
}

// vault lease renew extends a creds lease, even with -increment, never past
// half of min_ttl before the token expires, and says so; at that end it
// fails, naming what to do.
func TestLeaseRenewNeverPassesTheTokensLeaseLife(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", map[string]any{"min_ttl": "10m"})
	read := e.creds("app")
	expires := e.stored("app").AccessTokenExpiresAt
	r := &vaultRenewer{t: t, e: e, secret: read.Secret, issued: e.clock.Now(), increment: 24 * time.Hour}
	if _, err := r.renew(); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if got, want := r.leaseEnds[0], expires.Add(-5*time.Minute); got.After(want) || got.Before(want.Add(-time.Second)) {
		t.Errorf("renew -increment=24h: lease ends %v before expiry, want 5m (half of min_ttl)", expires.Sub(got))
	}
	if !strings.Contains(strings.Join(r.warnings, "\n"), "never past it") {
		t.Errorf("renew -increment=24h: want a warning saying where the lease stops, got %q", r.warnings)
	}
	r.increment = 0
	e.clock.Advance(2*time.Hour - 5*time.Minute)
	_, err := r.renew()
	if err == nil || !strings.Contains(err.Error(), "creds/app again") {
		t.Errorf("renew at the lease's end: want an error naming creds/app, got %v", err)
	}
}

// After the account's token is replaced, a renewal of the old token's lease
// lasts one second, with a warning, so that Vault's renewer lets go at once
// and the next read gets the current token.
func TestLeaseOfAReplacedTokenLetsGoAtOnce(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	read := e.creds("app")
	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	r := &vaultRenewer{t: t, e: e, secret: read.Secret, issued: e.clock.Now(), rng: rand.New(rand.NewSource(1))}
	before := e.clock.Now()
	if failed := r.run(); failed != 0 || r.renewals != 1 {
		t.Errorf("want one renewal and no failure, got %d renewals and %d failures", r.renewals, failed)
	}
	if !e.clock.Now().Equal(before) {
		t.Errorf("the renewer held the replaced token for %v", e.clock.Now().Sub(before))
	}
	if !strings.Contains(strings.Join(r.warnings, "\n"), "was replaced") {
		t.Errorf("want a warning that the token was replaced, got %q", r.warnings)
	}
	if e.creds("app").Data["access_token"] == read.Data["access_token"] {
		t.Errorf("the next read got the replaced token")
	}
}

// A read of the same token generation by the same Vault token within
// renewableLeaseWait of its renewable lease gets a lease of one step that is
// not renewable (Vault Proxy passes it through without a renewer of its own),
// at most maxNotRenewable times; another Vault token, none named, another
// generation, or the wait's end makes the next read renewable again.
func TestASecondReadByTheSameVaultTokenIsNotRenewable(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", map[string]any{"min_ttl": "10m"})
	read := func(token string) *logical.Response {
		t.Helper()
		resp, err := e.b.HandleRequest(t.Context(), &logical.Request{Operation: logical.ReadOperation, Path: "creds/app", Storage: e.view, MountPoint: testMount, ClientToken: token})
		if err != nil || resp.IsError() {
			t.Fatalf("read creds/app: %v %v", err, resp)
		}
		return resp
	}
	renewable := func(what string, resp *logical.Response, want bool) {
		t.Helper()
		s := resp.Secret
		if s == nil || s.Renewable != want || s.TTL != 5*time.Minute || s.MaxTTL != 5*time.Minute && !want {
			t.Fatalf("%s: want a lease of 5m, renewable=%v; got %+v (warnings %q)", what, want, s, resp.Warnings)
		}
		if got := strings.Contains(strings.Join(resp.Warnings, "\n"), "not renewable"); got == want {
			t.Errorf("%s: warning that the lease is not renewable: %v, want %v (%q)", what, got, !want, resp.Warnings)
		}
	}
	renewable("first read", read("proxy"), true)
	renewable("second read, same Vault token", read("proxy"), false)
	e.clock.Advance(renewableLeaseWait - time.Millisecond)
	renewable("third read, same Vault token, just within the wait", read("proxy"), false)
	renewable("another Vault token", read("vso"), true)
	renewable("no Vault token named", read(""), true)
	renewable("no Vault token named, again", read(""), true)
	e.clock.Advance(time.Millisecond)
	renewable("at the wait's end", read("proxy"), true)
	for i := 1; i <= maxNotRenewable; i++ {
		renewable(fmt.Sprintf("read %d after it", i), read("proxy"), false)
	}
	renewable("the read after maxNotRenewable", read("proxy"), true)
	renewable("and the one after", read("proxy"), false)
	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	renewable("the next generation", read("proxy"), true)
	e.clock.Advance(renewableLeaseWait)
	read("other")
	if n := len(e.b.store.leases["app"]); n != 1 {
		t.Errorf("the store keeps %d Vault tokens' leases of app, want those of the last %s only (1)", n, renewableLeaseWait)
	}
}

// proxyWatcher is one of Vault Proxy's renewers of a cached creds answer,
// vaultRenewer.run one renewal at a time: Proxy starts it when it caches a
// renewable answer, it renews at once, and when it lets go Proxy evicts
// whatever answer the request's index ID then holds
// (command/agentproxyshared/cache/lease_cache.go, startRenewing).
type proxyWatcher struct {
	r            *vaultRenewer
	next         time.Time
	prior, grace time.Duration
}

func newProxyWatcher(r *vaultRenewer) *proxyWatcher {
	ttl := r.secret.TTL.Truncate(time.Second)
	return &proxyWatcher{r: r, next: r.e.clock.Now(), prior: ttl, grace: r.grace(ttl)}
}

// step renews once, and reports whether the watcher goes on (else err, if
// the renewal failed: it then lets go too).
func (w *proxyWatcher) step() (bool, error) {
	remaining, err := w.r.renew()
	if err != nil {
		return false, err
	}
	if remaining > w.prior {
		w.grace = w.r.grace(remaining)
	}
	sleep := remaining*2/3 + w.grace/3
	w.prior = remaining
	if remaining <= w.grace || remaining-sleep <= w.grace {
		return false, nil
	}
	w.next = w.r.e.clock.Now().Add(sleep)
	return true, nil
}

// proxyModelCap stops a run of proxyModel at that many leases: without the
// rule, the cascade grows with each generation.
const proxyModelCap = 600

// proxyRun is what one run of proxyModel counted, per token generation.
type proxyRun struct {
	leases, renewable map[string]int // by access token
	misses            int            // concurrent misses in all
	failed            int            // renewals refused
	// second: the leases of each token generation made for the second
	// request kind (proxyKinds).
	second map[string]int
}

// proxyKinds is what reaches the plugin when a request kind's cached answer is
// gone: misses(first) reads at once, first telling whether it is the first
// miss since the eviction (else the readers come back after an answer passed
// through, all of them).
type proxyKinds struct {
	kinds  int
	misses func(rng *rand.Rand, first bool) int
}

// proxyModel runs Vault Proxy's lease cache for one or more request kinds
// (many readers of creds/app through one Proxy, under its token; each kind's
// requests, whose headers differ from the other's, have an index ID of their
// own) for gens token generations. At each eviction of a kind's answer,
// kinds.misses reads of it reach the plugin at once, before any renewal. A
// renewable answer is cached (replacing the one before) and renewed; one that
// is not renewable is passed through, and the readers come back 20 ms later.
// vaultToken is the salted token the plugin is handed ("": none, as before a
// Vault token could be told apart).
func proxyModel(t *testing.T, minTTL, tokenTTL time.Duration, gens int, seed int64, vaultToken string, kinds proxyKinds) proxyRun {
	e := newTestEnv(t, fakeermeo.Options{AccessTokenTTL: tokenTTL})
	e.configure()
	e.createAccount("app", map[string]any{"min_ttl": minTTL.String()})
	rng := rand.New(rand.NewSource(seed))
	run := proxyRun{leases: map[string]int{}, renewable: map[string]int{}, second: map[string]int{}}
	end := e.clock.Now().Add(time.Duration(gens) * (tokenTTL - minTTL))
	type kind struct {
		cached   bool
		first    bool // no read since the eviction
		retryAt  time.Time
		watchers []*proxyWatcher
	}
	ks := make([]*kind, kinds.kinds)
	for i := range ks {
		ks[i] = &kind{first: true, retryAt: e.clock.Now()}
	}
	total := 0
	for e.clock.Now().Before(end) && total < proxyModelCap {
		for i, k := range ks {
			if k.cached || k.retryAt.After(e.clock.Now()) {
				continue
			}
			misses := kinds.misses(rng, k.first)
			run.misses += misses - 1
			k.first = false
			for range misses {
				resp, err := e.b.HandleRequest(t.Context(), &logical.Request{Operation: logical.ReadOperation, Path: "creds/app", Storage: e.view, MountPoint: testMount, ClientToken: vaultToken})
				if err != nil || resp.IsError() {
					t.Fatalf("read creds/app: %v %v", err, resp)
				}
				token := resp.Data["access_token"].(string)
				run.leases[token]++
				if i == 1 {
					run.second[token]++
				}
				total++
				if resp.Secret.Renewable {
					run.renewable[token]++
					k.cached = true
					k.watchers = append(k.watchers, newProxyWatcher(&vaultRenewer{t: t, e: e, secret: resp.Secret, issued: e.clock.Now(), rng: rng}))
				}
			}
			if !k.cached {
				k.retryAt = e.clock.Now().Add(20 * time.Millisecond)
			}
		}
		// The next event: a renewal, or readers coming back to a kind
		// that has no answer cached.
		var next *kind
		at, w := time.Time{}, -1
		for _, k := range ks {
			if !k.cached && (next == nil || k.retryAt.Before(at)) {
				next, at, w = k, k.retryAt, -1
			}
			for i, pw := range k.watchers {
				if next == nil || pw.next.Before(at) {
					next, at, w = k, pw.next, i
				}
			}
		}
		if d := at.Sub(e.clock.Now()); d > 0 {
			e.clock.Advance(d)
		}
		if w < 0 {
			continue
		}
		goesOn, err := next.watchers[w].step()
		if err != nil {
			run.failed++
		}
		if !goesOn {
			next.watchers = slices.Delete(next.watchers, w, w+1)
			next.cached, next.first, next.retryAt = false, true, e.clock.Now() // evicted by the request's index ID
		}
	}
	return run
}

// proxyModelFigures sums runs of proxyModel.
type proxyModelFigures struct {
	maxRenewable, maxLeases, leases, generations, misses, failed int
	maxSecond, second                                            int
}

func (f *proxyModelFigures) add(run proxyRun) {
	f.misses += run.misses
	f.failed += run.failed
	f.generations += len(run.leases)
	for token, n := range run.leases {
		f.leases += n
		f.maxLeases = max(f.maxLeases, n)
		f.maxRenewable = max(f.maxRenewable, run.renewable[token])
		f.second += run.second[token]
		f.maxSecond = max(f.maxSecond, run.second[token])
	}
}

// Proxy's in-flight guard broken: the first miss after an eviction comes with
// up to 49 others; readers coming back after an answer passed through, all 50.
// Working: one miss, but every reader once an answer passed through.
var (
	proxyGuardBroken = func(rng *rand.Rand, first bool) int {
		if first {
			return 1 + rng.Intn(50)
		}
		return 50
	}
	proxyGuardWorking = func(_ *rand.Rand, first bool) int {
		if first {
			return 1
		}
		return 50
	}
)

// Vault Proxy's concurrent misses (its in-flight guard lets them through)
// used to make a lease each, cached and renewed under the one index ID, and
// each of those renewers, letting go, evicted the next generation's answer:
// the cascade (16, then 11 leases for one token in a fresh clone's e2e run;
// 110.8 per generation in another). With the plugin's answer to a read by
// the same Vault token within 2 s of its renewable lease not renewable, each
// generation has one renewable lease, and the concurrent misses one lease
// each that Proxy passes through. The model without a Vault token named shows
// the cascade it prevents. The price: two request kinds under one Proxy token
// (clients whose headers differ), evicted together, each need a renewable
// lease, and the second passes its readers' reads through, one lease each,
// until the plugin's limit (maxNotRenewable) gives it one.
func TestProxysConcurrentMissesMakeNoCascade(t *testing.T) {
	const seeds, gens = 20, 6
	for _, c := range []struct{ minTTL, tokenTTL time.Duration }{{6 * time.Second, 12 * time.Second}, {10 * time.Minute, 2 * time.Hour}} {
		var withRule, without, twoKinds proxyModelFigures
		for seed := int64(1); seed <= seeds; seed++ {
			withRule.add(proxyModel(t, c.minTTL, c.tokenTTL, gens, seed, "proxy", proxyKinds{1, proxyGuardBroken}))
			// Fewer runs of the others: each makes thousands of leases.
			if seed <= 3 {
				without.add(proxyModel(t, c.minTTL, c.tokenTTL, gens, seed, "", proxyKinds{1, proxyGuardBroken}))
			}
			if seed <= 5 {
				twoKinds.add(proxyModel(t, c.minTTL, c.tokenTTL, gens, seed, "proxy", proxyKinds{2, proxyGuardWorking}))
			}
		}
		for _, v := range []struct {
			what  string
			seeds int
			f     proxyModelFigures
		}{
			{"in-flight guard broken (1 to 50 misses at once at each eviction), the plugin now", seeds, withRule},
			{fmt.Sprintf("in-flight guard broken, no Vault token told apart (as before; each run stopped at %d leases)", proxyModelCap), 3, without},
			{"guard working, two request kinds evicted together, the plugin now", 5, twoKinds},
		} {
			fmt.Printf("Proxy model, min_ttl %v, tokens of %v, %d seeds, 50 readers: %s: %d token generations, %d concurrent misses, %d leases (%.1f per generation, at most %d in one), at most %d renewable in one generation, %d renewals refused",
				c.minTTL, c.tokenTTL, v.seeds, v.what, v.f.generations, v.f.misses, v.f.leases, float64(v.f.leases)/float64(max(v.f.generations, 1)), v.f.maxLeases, v.f.maxRenewable, v.f.failed)
			if v.f.second > 0 {
				fmt.Printf("; the second kind's: %.1f leases per generation, at most %d in one", float64(v.f.second)/float64(max(v.f.generations, 1)), v.f.maxSecond)
			}
			fmt.Println()
		}
		if withRule.maxRenewable > 1 || withRule.failed > 0 {
			t.Errorf("min_ttl %v: up to %d renewable leases in one generation, %d renewals refused: want one renewable lease per generation, none refused", c.minTTL, withRule.maxRenewable, withRule.failed)
		}
		if withRule.generations < seeds*gens {
			t.Errorf("min_ttl %v: %d token generations in %d runs of %d", c.minTTL, withRule.generations, seeds, gens)
		}
		if without.maxRenewable <= 2 {
			t.Errorf("min_ttl %v: the model without the rule shows no cascade (at most %d renewable leases in a generation): it cannot tell the rule works", c.minTTL, without.maxRenewable)
		}
		// The second kind's readers come back 50 at a time: the plugin's
		// limit, then the rest of the round that reached it.
		if most := 1 + maxNotRenewable + 50; twoKinds.maxRenewable > 2 || twoKinds.maxSecond > most || twoKinds.failed > 0 {
			t.Errorf("min_ttl %v, two request kinds: up to %d renewable leases and %d of the second kind in one generation, %d renewals refused: want at most 2, %d and 0",
				c.minTTL, twoKinds.maxRenewable, twoKinds.maxSecond, twoKinds.failed, most)
		}
	}
}
