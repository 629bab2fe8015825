package ermeosecrets

import (
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
	if s == nil || s.Renewable {
		t.Fatalf("want a non-renewable lease, got %+v", s)
	}
	if s.TTL != 2*time.Hour-15*time.Minute {
		t.Errorf("lease TTL %v: want the token's life less min_ttl", s.TTL)
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
	// Entries written before the default existed keep their lease=false.
	a := e.stored("inherits")
	a.Lease, a.NoLease = nil, true
	if err := saveAccount(t.Context(), e.storage, "inherits", a); err != nil {
		t.Fatal(err)
	}
	e.b.Invalidate(t.Context(), accountKey("inherits"))
	if r := e.creds("inherits"); r.Secret != nil {
		t.Errorf("an old entry with no_lease: want no lease")
	}
}
