package ermeosecrets

import (
	"context"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The chaos campaign: randomized schedules of readers, clock jumps, periodic
// ticks, operator rotations, upstream faults, storage faults, crashes and
// restarts, each checked against the invariants of the refresh protocol:
//
//   - after every step, an account that is active, with no intent record,
//     holds a refresh token that Ermeo still accepts (else the plugin lost
//     the chain by itself);
//   - a spent refresh token is sent again only after a lost answer or a
//     crash, to find out;
//   - when the faults stop, every account settles: usable, or needs_reauth
//     (only without a kept password, and only after a loss in flight).
//
// ERMEO_CHAOS_SCHEDULES (default 500) and ERMEO_CHAOS_SEED set its size and
// seed; `make chaos` runs a longer one.

type chaosStats struct {
	schedules, steps, reads, readsFailed     int
	crashes, restarts, ticks, rotations      int
	refreshes, lostInFlight, answersDropped  int
	pairsLostInMemory                        int
	rebootstrapped, needsReauth, reauthByOps int
	lostByPlugin                             int
}

func (s *chaosStats) add(o chaosStats) {
	s.schedules += o.schedules
	s.steps += o.steps
	s.reads += o.reads
	s.readsFailed += o.readsFailed
	s.crashes += o.crashes
	s.restarts += o.restarts
	s.ticks += o.ticks
	s.rotations += o.rotations
	s.refreshes += o.refreshes
	s.lostInFlight += o.lostInFlight
	s.answersDropped += o.answersDropped
	s.pairsLostInMemory += o.pairsLostInMemory
	s.rebootstrapped += o.rebootstrapped
	s.needsReauth += o.needsReauth
	s.reauthByOps += o.reauthByOps
	s.lostByPlugin += o.lostByPlugin
}

func envInt(name string, def int64) int64 {
	if v, err := strconv.ParseInt(os.Getenv(name), 10, 64); err == nil {
		return v
	}
	return def
}

func TestChaosCampaign(t *testing.T) {
	schedules := int(envInt("ERMEO_CHAOS_SCHEDULES", 500))
	seed := envInt("ERMEO_CHAOS_SEED", time.Now().UnixNano())
	fmt.Printf("chaos campaign: %d schedules, seed %d (ERMEO_CHAOS_SEED=%d to replay)\n", schedules, seed, seed)
	t.Logf("seed %d", seed)
	var total chaosStats
	for i := 0; i < schedules; i++ {
		rng := rand.New(rand.NewSource(seed + int64(i)))
		var st chaosStats
		ok := t.Run(fmt.Sprintf("schedule-%d", i), func(t *testing.T) {
			st = runChaosSchedule(t, rng)
		})
		total.add(st)
		if !ok {
			t.Fatalf("schedule %d failed (seed %d): replay with ERMEO_CHAOS_SEED=%d ERMEO_CHAOS_SCHEDULES=1", i, seed+int64(i), seed+int64(i))
		}
	}
	table := fmt.Sprintf(`chaos campaign (seed %d)
  schedules                      %d
  steps                          %d
  reads (failed)                 %d (%d)
  periodic ticks                 %d
  operator rotations             %d
  crashes / clean restarts       %d / %d
  refreshes at the fake          %d
  answers dropped by the network %d
  chains lost by the plugin      %d
  chains lost in flight          %d   (Ermeo spent the token; the answer was dropped, or died with a crash)
  new pairs lost in memory       %d   (storage refused them, then the process died)
    re-bootstrapped (kept pw)    %d
    needs_reauth (no password)   %d
    then re-authed by operator   %d
`, seed, total.schedules, total.steps, total.reads, total.readsFailed, total.ticks, total.rotations,
		total.crashes, total.restarts, total.refreshes, total.answersDropped, total.lostByPlugin, total.lostInFlight,
		total.pairsLostInMemory, total.rebootstrapped, total.needsReauth, total.reauthByOps)
	fmt.Print(table)
	if total.lostByPlugin != 0 {
		t.Fatalf("the plugin lost %d chains by itself", total.lostByPlugin)
	}
}

func runChaosSchedule(t *testing.T, rng *rand.Rand) chaosStats {
	st := chaosStats{schedules: 1}
	e := newTestEnv(t, fakeermeo.Options{})
	store := e.wrapStorage()
	e.configure()
	names := []string{"a", "b"}[:1+rng.Intn(2)]
	kept := map[string]bool{}
	for _, n := range names {
		kept[n] = rng.Intn(2) == 0
		e.createAccount(n, map[string]any{"store_password": kept[n], "min_ttl": "10m", "rotation_period": "24h"})
	}
	passwordGrantsByOps := len(names)

	restart := func() {
		st.pairsLostInMemory += e.b.store.unsavedCount()
		store = e.wrapStorage() // the dead process's storage stays dead
		e.restart()
		e.b.httpClient = e.http
	}

	steps := 10 + rng.Intn(30)
	for step := 0; step < steps; step++ {
		st.steps++
		// Faults for this step.
		if rng.Intn(4) == 0 {
			f := upstreamFaults[1+rng.Intn(len(upstreamFaults)-1)]
			if f.timeout {
				e.b.httpClient = &http.Client{Timeout: 50 * time.Millisecond}
			}
			ff := *f.fault
			ff.Grant, ff.Times = "refresh_token", 1
			e.fake.InjectFault(ff)
		}
		if rng.Intn(6) == 0 {
			store.failPuts(storageFault(1 + rng.Intn(2)).fails)
		}
		var fired atomic.Bool
		if rng.Intn(6) == 0 {
			point := crashPoint(1 + rng.Intn(3))
			s := store
			e.b.crashHook = func(p crashPoint) bool {
				if p == point && fired.CompareAndSwap(false, true) {
					s.die()
					return true
				}
				return false
			}
		}

		// The step's action.
		switch rng.Intn(10) {
		case 0, 1, 2, 3:
			readers := 1 + rng.Intn(4)
			var wg sync.WaitGroup
			var failed atomic.Int32
			for r := 0; r < readers; r++ {
				name := names[rng.Intn(len(names))]
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := e.request(logical.ReadOperation, "creds/"+name, nil)
					if err != nil || resp == nil || resp.IsError() {
						failed.Add(1)
						return
					}
					if tok := resp.Data["access_token"].(string); !e.fake.AccessTokenValid(tok) {
						t.Errorf("step %d: served a token Ermeo refuses", step)
					}
				}()
			}
			wg.Wait()
			st.reads += readers
			st.readsFailed += int(failed.Load())
		case 4, 5:
			// Time passes; Vault's periodic function runs every minute, so a
			// jump ends with a tick.
			jumps := []time.Duration{time.Minute, 10 * time.Minute, time.Hour, 2 * time.Hour, 26 * time.Hour}
			e.clock.Advance(jumps[rng.Intn(len(jumps))])
			st.ticks++
			_ = e.b.periodic(context.Background(), &logical.Request{Storage: store, MountPoint: testMount})
		case 6:
			st.ticks++
			_ = e.b.periodic(context.Background(), &logical.Request{Storage: store, MountPoint: testMount})
		case 7:
			st.rotations++
			_, _ = e.request(logical.UpdateOperation, "accounts/"+names[rng.Intn(len(names))]+"/rotate", nil)
		case 8:
			// A clean restart between requests: memory is lost.
			st.restarts++
			restart()
		case 9:
			// An operator re-authenticates an account that needs it.
			for _, n := range names {
				if a, _ := loadAccount(context.Background(), e.storage, n); a != nil && a.State == stateNeedsReauth {
					before := e.fake.Counters().Grants["password"]["success"]
					resp, err := e.request(logical.UpdateOperation, "accounts/"+n, map[string]any{"password": testPassword, "store_password": kept[n]})
					passwordGrantsByOps += e.fake.Counters().Grants["password"]["success"] - before
					if err == nil && !resp.IsError() {
						st.reauthByOps++
					}
				}
			}
		}

		if fired.Load() {
			st.crashes++
			restart()
		}
		store.failPuts(nil)
		e.b.crashHook = nil
		e.b.httpClient = e.http
		e.fake.ClearFaults()

		// Invariant: an active account with no intent record holds a live chain.
		for _, n := range names {
			a, err := e.b.store.getLocked(context.Background(), e.storage, n)
			if err != nil || a == nil {
				t.Fatalf("step %d: account %s: %v", step, n, err)
			}
			if a.State == stateActive && a.RotationIntent == nil && a.RefreshToken != "" && !e.fake.RefreshTokenLive(a.RefreshToken) {
				st.lostByPlugin++
				t.Errorf("step %d: account %s is active with no intent record, but its refresh token is dead: the plugin lost the chain", step, n)
			}
		}
	}

	// Settle: no more faults; readers until every account is usable or
	// needs_reauth.
	for _, n := range names {
		settled := false
		for i := 0; i < 8 && !settled; i++ {
			e.clock.Advance(11 * time.Minute)
			resp, err := e.request(logical.ReadOperation, "creds/"+n, nil)
			switch {
			case err == nil && !resp.IsError() && len(resp.Warnings) == 0:
				settled = true
			case err == nil && resp.IsError() && strings.Contains(resp.Error().Error(), "password="):
				settled = true // needs_reauth, its last token expired
			case err == nil && !resp.IsError() && strings.Contains(strings.Join(resp.Warnings, " "), "password="):
				settled = true // needs_reauth, serving its last token with the command
			}
		}
		if !settled {
			t.Fatalf("account %s did not settle: %+v", n, e.stored(n))
		}
	}

	c := e.fake.Counters()
	st.refreshes = c.Grants["refresh_token"]["success"]
	st.lostInFlight = c.DistinctTokensReplayed
	st.answersDropped = c.AnswersDropped
	// A spent token whose answer arrived is sent again only by a process
	// that crashed or restarted holding that answer.
	if c.RefreshTokensUsedTwice > 0 && st.crashes+st.restarts == 0 {
		st.lostByPlugin++
		t.Errorf("%d spent tokens sent again after their answer arrived, with no crash or restart", c.RefreshTokensUsedTwice)
	}
	// Every chain found gone is explained by an answer lost in flight, a
	// crash (which can take one in-flight refresh per account with it), or a
	// new pair that died in memory with its process while storage refused it.
	if explained := st.answersDropped + st.crashes*len(names) + st.pairsLostInMemory; st.lostInFlight > explained {
		st.lostByPlugin += st.lostInFlight - explained
		t.Errorf("%d chains found gone, but only %d answers dropped, %d crashes and %d pairs lost in memory to explain them",
			st.lostInFlight, st.answersDropped, st.crashes, st.pairsLostInMemory)
	}
	st.rebootstrapped = c.Grants["password"]["success"] - passwordGrantsByOps
	for _, n := range names {
		a := e.stored(n)
		if a.State == stateNeedsReauth {
			st.needsReauth++
			if kept[n] && !strings.Contains(a.LastError, "kept password") {
				t.Errorf("account %s has a kept password but needs_reauth: %s", n, a.LastError)
			}
		}
	}
	// needs_reauth events over the schedule, including those an operator fixed.
	st.needsReauth += st.reauthByOps
	if lost := st.lostInFlight + st.pairsLostInMemory; st.rebootstrapped+st.needsReauth > lost {
		st.lostByPlugin += st.rebootstrapped + st.needsReauth - lost
		t.Errorf("%d chains restarted or marked needs_reauth, but only %d were found gone and %d pairs died in memory",
			st.rebootstrapped+st.needsReauth, st.lostInFlight, st.pairsLostInMemory)
	}
	return st
}
