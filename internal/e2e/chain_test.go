package e2e

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// TestKilledPluginMidRefreshLosesNothing kills the plugin process (kill -9,
// the child of vault serving the plugin) while Ermeo holds the answer of a
// refresh it has already committed. Vault starts the plugin again on the next
// request; the intent record tells the new process that the stored token may
// be spent, and the account recovers as specified: a new chain from the kept
// password, or needs_reauth with the command to run.
func TestKilledPluginMidRefreshLosesNothing(t *testing.T) {
	for _, kept := range []bool{true, false} {
		t.Run(fmt.Sprintf("store_password=%v", kept), func(t *testing.T) {
			e := newEnv(t, fakeermeo.Options{AccessTokenTTL: time.Hour})
			e.configure()
			e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword, "store_password": kept})
			e.mustRead("creds/app")

			e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})
			rotateErr := make(chan error, 1)
			go func() {
				_, err := e.write("accounts/app/rotate", nil)
				rotateErr <- err
			}()
			waitUntil(t, 10*time.Second, func() bool { return e.fake.Held() == 1 })

			// The refresh is committed at Ermeo and its answer is held: kill
			// the plugin process now.
			pids, err := vault.PluginPids()
			if err != nil || len(pids) == 0 {
				t.Fatalf("no plugin process under vault pid %d: %v", vault.Pid(), err)
			}
			for _, pid := range pids {
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatalf("kill -9 %d: %v", pid, err)
				}
			}
			t.Logf("killed plugin process(es) %v while Ermeo held a committed refresh", pids)
			err = <-rotateErr
			t.Logf("the rotate in flight got: %v", err)
			e.fake.ReleaseHeld()
			waitUntil(t, 10*time.Second, func() bool { return e.fake.Held() == 0 })

			// Vault starts a new plugin process on the next request.
			var status map[string]any
			waitUntil(t, 30*time.Second, func() bool {
				s, err := e.read("accounts/app")
				if err != nil || s == nil {
					return false
				}
				status = s.Data
				return true
			})
			if status["rotation_in_flight"] != true {
				t.Errorf("the new process must see the intent record: %v", status)
			}
			if after, _ := vault.PluginPids(); len(after) == 0 || after[0] == pids[0] {
				t.Errorf("want a new plugin process, have %v (killed %v)", after, pids)
			}

			// The access token has most of its hour left, so reads serve it
			// without a refresh; the next refresh (the periodic function's,
			// within a minute, or an operator's) finds out. Force it now.
			if s := e.mustRead("creds/app"); !e.fake.AccessTokenValid(s.Data["access_token"].(string)) {
				t.Fatalf("the cached token is not valid")
			}
			_, rerr := e.write("accounts/app/rotate", nil)
			t.Logf("the rotate after the restart got: %v", rerr)
			s, err := e.read("creds/app")
			c := e.fake.Counters()
			if c.RefreshTokensUsedTwice != 0 {
				t.Errorf("refresh tokens used twice: %d", c.RefreshTokensUsedTwice)
			}
			if c.ReplaysAfterLostAnswer != 1 {
				t.Errorf("replays after the lost answer: %d, want the one that found out", c.ReplaysAfterLostAnswer)
			}
			if kept {
				if err != nil || !e.fake.AccessTokenValid(s.Data["access_token"].(string)) || len(s.Warnings) != 0 {
					t.Fatalf("with a kept password the account must carry on: %v %v", s, err)
				}
				if c.Grants["password"]["success"] != 2 {
					t.Errorf("want a re-bootstrap, grants %v", c.Grants)
				}
			} else {
				// The last access token (an hour) is still valid: served, with
				// a warning naming the command.
				if err != nil || len(s.Warnings) == 0 || !strings.Contains(s.Warnings[0], "vault write "+e.mount+"/accounts/app password=") {
					t.Fatalf("without a kept password: want the last token and the command, got %v %v", s, err)
				}
				if st := e.mustRead("accounts/app"); st.Data["state"] != "needs_reauth" {
					t.Errorf("state %v", st.Data["state"])
				}
			}
			t.Logf("after the kill: %+v", c)
			e.assertNoSecretReturned(testClientSecret, testPassword)
		})
	}
}

// TestThousandReadersAtExpiryCauseOneRefresh sends 1,000 concurrent creds
// reads through the real Vault (the shared dev server, in-memory storage) at
// the moment the token needs a refresh.
func TestThousandReadersAtExpiryCauseOneRefresh(t *testing.T) {
	e := newEnv(t, thousandReadersFake) // skips if there is no dev server
	thousandReadersAtExpiry(t, e, "the dev server, "+vault.Version)
}

// TestThousandReadersAtExpiryCauseOneRefreshRaft is the same on a
// single-node Vault of its own with integrated storage (Raft), production's
// storage, where each of the 1,000 leases is a Raft log entry on disk: the
// refresh's writes and the readers' lease writes queue for the same log.
func TestThousandReadersAtExpiryCauseOneRefreshRaft(t *testing.T) {
	c, e := startSingleRaftEnv(t, thousandReadersFake)
	thousandReadersAtExpiry(t, e, "a single-node Raft server, "+c.Version)
}

// thousandReadersFake issues 8 s tokens.
var thousandReadersFake = fakeermeo.Options{AccessTokenTTL: 8 * time.Second}

// thousandReadersAtExpiry is the body of the TestThousandReadersAtExpiry
// tests: e's mount, on the server named by server, gets 1,000 concurrent
// creds reads when its token needs a refresh, and must refresh it once.
func thousandReadersAtExpiry(t *testing.T, e *env, server string) {
	e.configure()
	e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword, "min_ttl": "3s"})
	first := e.mustRead("creds/app").Data["access_token"]
	// The token now has 8s of life; with min_ttl 3s it needs a refresh 5s on
	// (past half its life: reads never refresh a younger token).
	time.Sleep(5100 * time.Millisecond)

	const readers = 1000
	start := make(chan struct{})
	waits := make([]time.Duration, readers)
	tokens := make([]string, readers)
	errs := make([]error, readers)
	var wg sync.WaitGroup
	for i := 0; i < readers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			t0 := time.Now()
			s, err := e.c.Logical().Read(e.mount + "/creds/app")
			waits[i] = time.Since(t0)
			if err == nil && s != nil {
				tokens[i], _ = s.Data["access_token"].(string)
			} else if err == nil {
				err = errors.New("empty response")
			}
			errs[i] = err
		}(i)
	}
	before := e.fake.Counters()
	close(start)
	wg.Wait()
	after := e.fake.Counters()

	failed := 0
	for i := range errs {
		if errs[i] != nil {
			failed++
			if failed <= 3 {
				t.Errorf("reader %d: %v", i, errs[i])
			}
		} else if tokens[i] != tokens[0] || tokens[i] == first || !e.fake.AccessTokenValid(tokens[i]) {
			t.Errorf("reader %d got another, an old or an invalid token", i)
		}
	}
	refreshes := after.Grants["refresh_token"]["success"] - before.Grants["refresh_token"]["success"]
	requests := after.Requests - before.Requests
	sort.Slice(waits, func(i, j int) bool { return waits[i] < waits[j] })
	p50, p99, max := waits[readers/2], waits[readers*99/100], waits[readers-1]
	fmt.Printf("1,000 concurrent creds reads at expiry through %s: %d refresh(es) at the fake (%d token requests), %d failed; wait p50 %v, p99 %v, max %v\n",
		server, refreshes, requests, failed, p50.Round(time.Microsecond), p99.Round(time.Microsecond), max.Round(time.Microsecond))
	if refreshes != 1 || requests != 1 {
		t.Errorf("want exactly 1 refresh at the fake, got %d (%d requests)", refreshes, requests)
	}
	if after.RefreshTokensUsedTwice != 0 {
		t.Errorf("refresh tokens used twice: %d", after.RefreshTokensUsedTwice)
	}
}

func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
