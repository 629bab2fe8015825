package ermeosecrets

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

func (e *testEnv) tick() {
	e.t.Helper()
	if err := e.b.periodic(context.Background(), &logical.Request{Storage: e.storage, MountPoint: testMount}); err != nil {
		e.t.Fatalf("periodic: %v", err)
	}
}

func TestIdleChainSurvivesWeeksThanksToThePeriodicFunction(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("idle", nil)
	e.createAccount("control", nil)
	// "control" is deleted from the schedule to show what happens without it.
	_, _ = e.b.store.queue.PopByKey("control")

	// 20 days of hourly ticks; nobody reads either account.
	for h := 0; h < 20*24; h++ {
		e.clock.Advance(time.Hour)
		e.tick()
		_, _ = e.b.store.queue.PopByKey("control")
		if h == 13*24 {
			a := e.stored("idle")
			if age := e.clock.Now().Sub(a.RefreshTokenIssuedAt); age > 7*24*time.Hour {
				t.Fatalf("day 13: the idle chain's refresh token is %v old", age)
			}
			if !e.fake.RefreshTokenLive(a.RefreshToken) {
				t.Fatalf("day 13: the idle chain is dead")
			}
		}
	}
	resp := e.creds("idle")
	if len(resp.Warnings) != 0 || !e.fake.AccessTokenValid(resp.Data["access_token"].(string)) {
		t.Fatalf("after 20 idle days: %v", resp)
	}
	c := e.fake.Counters()
	if c.Grants["password"]["success"] != 2 { // one per account, at creation
		t.Errorf("password grants: %v", c.Grants["password"])
	}
	// Rotations at days 7 and 14, and the read's refresh at day 20.
	if got := c.Grants["refresh_token"]["success"]; got != 3 {
		t.Errorf("refreshes of the idle chain: %d, want 3", got)
	}
	// Without the keep-alive, the control chain died at day 14.
	// The read that finds it out is a 502 (Ermeo refused), naming the command.
	resp, err := e.request(logical.ReadOperation, "creds/control", nil)
	if codeOf(err) != 502 || !strings.Contains(errText(resp, err), "password=") {
		t.Errorf("control chain after 20 idle days: want needs_reauth, got %v %v", resp, err)
	}
	e.assertNoTokenUsedTwice()
}

func TestPeriodicHonoursEachAccountsRotationPeriod(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("daily", map[string]any{"rotation_period": "24h"})
	e.createAccount("weekly", nil)
	for h := 0; h < 3*24; h++ {
		e.clock.Advance(time.Hour)
		e.tick()
	}
	if g := e.stored("daily").Generation; g != 4 {
		t.Errorf("daily: generation %d after 3 days, want 4", g)
	}
	if g := e.stored("weekly").Generation; g != 1 {
		t.Errorf("weekly: generation %d after 3 days, want 1", g)
	}
}

func TestPeriodicDoesNothingWhereWritesAreNotSafe(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	e.system.ReplicationStateVal = consts.ReplicationPerformanceStandby
	e.clock.Advance(8 * 24 * time.Hour)
	before := e.fake.Counters().Requests
	e.tick()
	if e.fake.Counters().Requests != before {
		t.Errorf("a performance standby's periodic function called Ermeo")
	}
}

func TestPeriodicSkipsNeedsReauthAccounts(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	e.spendChainBehindThePluginsBack("app")
	// The rotate finds the chain gone.
	if _, err := e.request(logical.UpdateOperation, "accounts/app/rotate", nil); codeOf(err) != 502 || e.stored("app").State != stateNeedsReauth {
		t.Fatalf("rotate of a stolen chain: %v", err)
	}
	before := e.fake.Counters().Requests
	for i := 0; i < 10; i++ {
		e.clock.Advance(8 * 24 * time.Hour)
		e.tick()
	}
	if e.fake.Counters().Requests != before {
		t.Errorf("the periodic function called Ermeo for a needs_reauth account")
	}
}

func TestATickReadsOnlyTheAccountsThatAreDue(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	const accounts = 300
	for i := 0; i < accounts; i++ {
		e.createAccount(fmt.Sprintf("a%03d", i), nil)
	}
	counting := newTestStorage(e.storage)
	req := &logical.Request{Storage: counting, MountPoint: testMount}
	// The first tick loads the schedule: one list, one read per account.
	if err := e.b.periodic(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	t.Logf("first tick (loads the schedule): %d gets, %d lists", counting.gets.Load(), counting.lists.Load())
	counting.resetCounts()
	for i := 0; i < 10; i++ {
		e.clock.Advance(time.Minute)
		if err := e.b.periodic(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing is due: each tick reads config and nothing else.
	if g, l := counting.gets.Load(), counting.lists.Load(); g > 10 || l != 0 {
		t.Errorf("10 idle ticks over %d accounts made %d gets and %d lists, want at most 10 and 0", accounts, g, l)
	}
}

func TestInitializeFindsAnInterruptedRefreshAndTheNextTickResolvesIt(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	// The plugin dies right after writing the intent record.
	e.b.crashHook = func(p crashPoint) bool { return p == crashAfterIntent }
	_, _ = e.request(logical.UpdateOperation, "accounts/app/rotate", nil)
	if e.stored("app").RotationIntent == nil {
		t.Fatal("no intent record left behind")
	}
	// A new plugin process starts on the same storage.
	b2 := e.restart()
	if err := b2.Initialize(t.Context(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { b2.store.mu.Lock(); defer b2.store.mu.Unlock(); return b2.store.load.loaded })
	e.tick()
	a := e.stored("app")
	if a.RotationIntent != nil || a.Generation != 2 || a.State != stateActive {
		t.Fatalf("after the tick: %+v", a)
	}
	e.assertNoTokenUsedTwice()
}
