package ermeosecrets

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// TestNonAtomicServerSeesEachRefreshTokenOnce runs the plugin against a fake
// as lax as the real server library (fakeermeo.Options.NonAtomicRefresh: two
// concurrent refreshes with one token both succeed), so that nothing but the
// plugin's own serialization stands between a burst of callers and a refresh
// token sent twice. Each round expires the cached access token, then sends
// 200 concurrent creds reads, concurrent forced rotations and periodic ticks
// (with a rotation_period the clock has passed) at one account. The fake must
// see every refresh token presented at most once and never two refreshes of
// one token in flight together.
func TestNonAtomicServerSeesEachRefreshTokenOnce(t *testing.T) {
	const (
		rounds    = 5
		readers   = 200
		rotations = 4
		ticks     = 3
	)
	e := newTestEnv(t, fakeermeo.Options{NonAtomicRefresh: true})
	e.configureUnchecked() // the credentials check presents a token that cannot exist
	e.createAccount("app", map[string]any{"rotation_period": "1h"})
	periodic := &logical.Request{Storage: e.storage, MountPoint: testMount}

	for round := 0; round < rounds; round++ {
		// The token is expired and the chain is due for its keep-alive:
		// every kind of caller below wants a refresh.
		e.clock.Advance(2 * time.Hour)
		start := make(chan struct{})
		var wg sync.WaitGroup
		var failures atomic.Int32
		run := func(what string, n int, f func() error) {
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					if err := f(); err != nil && failures.Add(1) <= 3 {
						t.Errorf("round %d, %s %d: %v", round, what, i, err)
					}
				}()
			}
		}
		run("creds read", readers, func() error {
			resp, err := e.request(logical.ReadOperation, "creds/app", nil)
			if err = respError(resp, err); err != nil {
				return err
			}
			if tok, _ := resp.Data["access_token"].(string); !e.fake.AccessTokenValid(tok) || len(resp.Warnings) != 0 {
				return fmt.Errorf("got an invalid access token or warnings %v", resp.Warnings)
			}
			return nil
		})
		run("rotate", rotations, func() error {
			return respError(e.request(logical.UpdateOperation, "accounts/app/rotate", nil))
		})
		run("tick", ticks, func() error {
			return e.b.periodic(context.Background(), periodic)
		})
		close(start)
		wg.Wait()
		if n := failures.Load(); n > 0 {
			t.Errorf("round %d: %d calls failed", round, n)
			break // the fake's counts below tell why
		}
	}

	c := e.fake.Counters()
	if c.ConcurrentRefreshesOfOneToken != 0 {
		t.Errorf("the fake saw %d refreshes presenting a token while another refresh of it was in flight", c.ConcurrentRefreshesOfOneToken)
	}
	if c.RefreshTokensUsedTwice != 0 || c.DistinctTokensReplayed != 0 {
		t.Errorf("the fake saw spent refresh tokens presented again: %+v", c)
	}
	presented := e.fake.RefreshTokenPresentations()
	for tok, n := range presented {
		if n != 1 {
			t.Errorf("a refresh token was presented %d times", n)
		}
		if !isIssued(e.fake, tok) {
			t.Errorf("a refresh token the fake never issued was presented")
		}
	}
	// Every refresh sent succeeded, each round sent at least one, and one
	// chain is left: the stored one.
	refreshes := c.Grants["refresh_token"]
	if refreshes["success"] != len(presented) || sum(refreshes) != len(presented) {
		t.Errorf("refresh grants %v for %d presented tokens", refreshes, len(presented))
	}
	if len(presented) < rounds {
		t.Errorf("%d refreshes in %d rounds, want at least one a round", len(presented), rounds)
	}
	if c.Grants["password"]["success"] != 1 || sum(c.Grants["password"]) != 1 {
		t.Errorf("password grants %v, want the account's first one only", c.Grants["password"])
	}
	if a := e.stored("app"); c.LiveRefreshTokens != 1 || !e.fake.RefreshTokenLive(a.RefreshToken) || a.RotationIntent != nil {
		t.Errorf("after the rounds: %d live refresh tokens, stored one live %v, intent %+v",
			c.LiveRefreshTokens, e.fake.RefreshTokenLive(a.RefreshToken), a.RotationIntent)
	}
	if !t.Failed() {
		t.Logf("%d rounds: %d refreshes, each refresh token presented once", rounds, len(presented))
	}
}

// respError returns err, or the error of an error response.
func respError(resp *logical.Response, err error) error {
	if err != nil {
		return err
	}
	if resp == nil {
		return fmt.Errorf("no response")
	}
	if resp.IsError() {
		return resp.Error()
	}
	return nil
}

func isIssued(fake *fakeermeo.Server, tok string) bool {
	for _, issued := range fake.IssuedRefreshTokens() {
		if issued == tok {
			return true
		}
	}
	return false
}
