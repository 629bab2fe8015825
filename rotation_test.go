package ermeosecrets

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// spendChainBehindThePluginsBack uses the account's stored refresh token
// directly, as a second holder of the chain would: the plugin's next refresh
// gets invalid_grant.
func (e *testEnv) spendChainBehindThePluginsBack(name string) {
	e.t.Helper()
	c, err := ermeo.New(ermeo.Config{APIURL: e.url, ClientID: testClientID, ClientSecret: testClientSecret})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := c.RefreshGrant(context.Background(), e.stored(name).RefreshToken); err != nil {
		e.t.Fatal(err)
	}
}

func TestManyReadersAtExpiryCauseOneRefresh(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configureUnchecked()
	e.createAccount("app", nil)
	e.clock.Advance(2 * time.Hour)
	// Hold the refresh's answer so that every reader arrives while it is in flight.
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})

	const readers = 100
	tokens := make([]string, readers)
	var wg sync.WaitGroup
	for i := 0; i < readers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			resp, err := e.request(logical.ReadOperation, "creds/app", nil)
			if err != nil || resp.IsError() {
				t.Errorf("reader %d: %v %v", i, resp, err)
				return
			}
			tokens[i] = resp.Data["access_token"].(string)
		}(i)
	}
	waitFor(t, func() bool { return e.fake.Held() == 1 })
	time.Sleep(50 * time.Millisecond) // let the other readers queue on the lock
	e.fake.ReleaseHeld()
	wg.Wait()

	if got := e.fake.Counters().Grants["refresh_token"]; sum(got) != 1 {
		t.Errorf("refresh requests at the fake: %v, want 1", got)
	}
	for i, tok := range tokens {
		if tok != tokens[0] || !e.fake.AccessTokenValid(tok) {
			t.Fatalf("reader %d got another or an invalid token", i)
		}
	}
	e.assertNoTokenUsedTwice()
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestRotateWritesTheIntentBeforeSending(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	gen := e.stored("app").Generation
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	}()
	waitFor(t, func() bool { return e.fake.Held() == 1 })
	// While the request is at Ermeo, storage already says the token is being spent.
	a := e.stored("app")
	if a.RotationIntent == nil || a.RotationIntent.Generation != gen || !a.RotationIntent.StartedAt.Equal(e.clock.Now()) {
		t.Fatalf("intent record while the refresh is in flight: %+v", a.RotationIntent)
	}
	e.fake.ReleaseHeld()
	<-done
	a = e.stored("app")
	if a.RotationIntent != nil || a.Generation != gen+1 {
		t.Errorf("after the refresh: intent %+v generation %d", a.RotationIntent, a.Generation)
	}
}

func TestFailedIntentWriteSendsNothing(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	storage := e.wrapStorage()
	storage.failPuts(everyPut)
	before := e.fake.Counters().Requests
	_, err := e.request(logical.UpdateOperation, "accounts/app/rotate", nil)
	if err == nil || !strings.Contains(err.Error(), "nothing was sent") {
		t.Fatalf("want an error saying nothing was sent, got %v", err)
	}
	if e.fake.Counters().Requests != before {
		t.Errorf("a refresh was sent without its intent record")
	}
	storage.failPuts(nil)
	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	e.assertNoTokenUsedTwice()
}

func TestFailedWriteAfterRefreshKeepsThePairAndServesIt(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configureUnchecked()
	e.createAccount("app", nil)
	storage := e.wrapStorage()
	e.clock.Advance(2 * time.Hour)
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})
	result := make(chan *logical.Response, 1)
	go func() {
		resp, _ := e.request(logical.ReadOperation, "creds/app", nil)
		result <- resp
	}()
	waitFor(t, func() bool { return e.fake.Held() == 1 })
	storage.failPuts(everyPut) // the intent is written; the new pair's write fails
	e.fake.ReleaseHeld()
	resp := <-result
	if resp == nil || resp.IsError() {
		t.Fatalf("creds while storage fails: %v", resp)
	}
	tok := resp.Data["access_token"].(string)
	if !e.fake.AccessTokenValid(tok) {
		t.Fatalf("served token not valid")
	}
	newRefresh := e.fake.IssuedRefreshTokens()[1]
	if e.stored("app").RefreshToken == newRefresh {
		t.Fatalf("storage should not have the new pair yet")
	}
	// Served from memory meanwhile, with no second refresh.
	if again := e.creds("app").Data["access_token"]; again != tok {
		t.Errorf("second read: another token")
	}
	// Storage comes back: the next locked access writes the pair.
	storage.failPuts(nil)
	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	a := e.stored("app")
	if a.Generation != 3 {
		t.Errorf("generation %d after flush and rotate, want 3", a.Generation)
	}
	e.assertNoTokenUsedTwice()
	if c := e.fake.Counters(); c.Grants["refresh_token"]["invalid_grant"] != 0 {
		t.Errorf("the kept pair was lost: %v", c.Grants)
	}
}

func TestCallerCancelDoesNotCancelTheRefresh(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	e.clock.Advance(2 * time.Hour)
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = e.requestCtx(ctx, logical.ReadOperation, "creds/app", nil)
	}()
	waitFor(t, func() bool { return e.fake.Held() == 1 })
	cancel()
	time.Sleep(20 * time.Millisecond)
	e.fake.ReleaseHeld()
	<-done
	a := e.stored("app")
	if a.Generation != 2 || a.RotationIntent != nil || a.RefreshToken != e.fake.IssuedRefreshTokens()[1] {
		t.Fatalf("the refresh did not complete after the caller left: generation %d intent %+v", a.Generation, a.RotationIntent)
	}
	e.assertNoTokenUsedTwice()
}

func TestUnknownOutcomeKeepsTheIntentAndServesTheCurrentToken(t *testing.T) {
	faults := []fakeermeo.Fault{
		{Kind: fakeermeo.FaultStatus, Status: 503},
		{Kind: fakeermeo.FaultTooManyRequests, RetryAfter: "30"},
		{Kind: fakeermeo.FaultReset},
		{Kind: fakeermeo.FaultNonJSON},
		{Kind: fakeermeo.FaultLostAfterCommit},
	}
	for _, f := range faults {
		t.Run(f.Kind.String(), func(t *testing.T) {
			e := newTestEnv(t, fakeermeo.Options{})
			e.configure()
			e.createAccount("app", nil)
			first := e.creds("app").Data["access_token"].(string)
			e.clock.Advance(2*time.Hour - 5*time.Minute) // 5 minutes left, min_ttl 10
			f.Grant, f.Times = "refresh_token", 1
			e.fake.InjectFault(f)
			resp := e.creds("app")
			if resp.Data["access_token"] != first || len(resp.Warnings) == 0 {
				t.Fatalf("want the current token with a warning, got %v", resp)
			}
			a := e.stored("app")
			if a.RotationIntent == nil || a.LastError == "" {
				t.Fatalf("after an unknown outcome the intent must stay: %+v", a)
			}
			if !strings.Contains(e.stored("app").LastError, "did not answer") || e.stored("app").NextAttemptAt.IsZero() {
				t.Fatalf("want a backoff after an unknown outcome: %+v", e.stored("app"))
			}
			// During the backoff, reads serve the current token and leave Ermeo alone.
			before := e.fake.Counters().Requests
			if resp := e.creds("app"); resp.Data["access_token"] != first || !strings.Contains(resp.Warnings[0], "next attempt waits until") {
				t.Fatalf("during the backoff: %v", resp)
			}
			if e.fake.Counters().Requests != before {
				t.Fatalf("a read during the backoff called Ermeo")
			}
			// After it (30s covers the 5s backoff and the 429's Retry-After),
			// the next read retries with the stored token and finds out.
			e.clock.Advance(31 * time.Second)
			resp, err := e.request(logical.ReadOperation, "creds/app", nil)
			if err != nil {
				t.Fatal(err)
			}
			if f.Kind == fakeermeo.FaultLostAfterCommit {
				// The answer was lost after Ermeo spent the token: the chain
				// is gone, lost to the network. The last token still has
				// life: served, with a warning that names what to run.
				if resp.IsError() || resp.Data["access_token"] != first || len(resp.Warnings) == 0 ||
					!strings.Contains(resp.Warnings[0], "vault write ermeo/accounts/app password=") {
					t.Fatalf("want the last token and the re-auth command, got %v", resp)
				}
				if a := e.stored("app"); a.State != stateNeedsReauth || !strings.Contains(a.LastError, "lost") {
					t.Errorf("state %s, last error %q", a.State, a.LastError)
				}
				if c := e.fake.Counters(); c.RefreshTokensUsedTwice != 0 || c.ReplaysAfterLostAnswer != 1 {
					t.Errorf("used twice %d, replays after a lost answer %d", c.RefreshTokensUsedTwice, c.ReplaysAfterLostAnswer)
				}
				return
			}
			if resp.IsError() || resp.Data["access_token"] == first || !e.fake.AccessTokenValid(resp.Data["access_token"].(string)) {
				t.Fatalf("the retry should have refreshed: %v", resp)
			}
			if a := e.stored("app"); a.RotationIntent != nil || a.LastError != "" {
				t.Errorf("after a successful retry: %+v", a)
			}
		})
	}
}

func TestInvalidGrantWithoutPasswordNeedsReauth(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	last := e.creds("app").Data["access_token"].(string)
	e.spendChainBehindThePluginsBack("app")
	e.clock.Advance(2*time.Hour - 5*time.Minute)

	// The last access token has 5 minutes left: served, with a warning.
	resp := e.creds("app")
	if resp.Data["access_token"] != last || len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], "password=") {
		t.Fatalf("want the last token with a warning naming the command, got %v", resp)
	}
	if a := e.stored("app"); a.State != stateNeedsReauth || a.RefreshToken != "" {
		t.Fatalf("state %s", a.State)
	}
	// Once it expires, the error names the exact command; no further call to Ermeo.
	e.clock.Advance(6 * time.Minute)
	before := e.fake.Counters().Requests
	resp, err := e.request(logical.ReadOperation, "creds/app", nil)
	want := "vault write ermeo/accounts/app password="
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), want) {
		t.Fatalf("want an error naming %q, got %v %v", want, resp, err)
	}
	if e.fake.Counters().Requests != before {
		t.Errorf("a needs_reauth account called Ermeo")
	}
	// Writing the password restarts the chain.
	e.must(logical.UpdateOperation, "accounts/app", map[string]any{"password": testPassword})
	if tok := e.creds("app").Data["access_token"].(string); !e.fake.AccessTokenValid(tok) {
		t.Errorf("after re-auth: token not valid")
	}
	// The one replay is the plugin finding out that someone else spent its token.
	if c := e.fake.Counters(); c.RefreshTokensUsedTwice != 1 {
		t.Errorf("used twice: %d, want exactly the one discovery", c.RefreshTokensUsedTwice)
	}
}

func TestInvalidGrantWithKeptPasswordRebootstraps(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", map[string]any{"store_password": true})
	e.spendChainBehindThePluginsBack("app")
	e.clock.Advance(2 * time.Hour)
	resp := e.creds("app")
	if len(resp.Warnings) != 0 || !e.fake.AccessTokenValid(resp.Data["access_token"].(string)) {
		t.Fatalf("want a fresh token from a new chain, got %v", resp)
	}
	a := e.stored("app")
	if a.State != stateActive || a.Generation != 2 {
		t.Errorf("state %s generation %d", a.State, a.Generation)
	}
	if c := e.fake.Counters(); c.Grants["password"]["success"] != 2 {
		t.Errorf("grants: %v", c.Grants)
	}
}

func TestKeptPasswordRefusedNeedsReauth(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", map[string]any{"store_password": true})
	e.spendChainBehindThePluginsBack("app")
	e.fake.SetUserPassword(testUser, "changed")
	e.clock.Advance(2 * time.Hour)
	resp, err := e.request(logical.ReadOperation, "creds/app", nil)
	if codeOf(err) != 502 || !strings.Contains(errText(resp, err), "kept password was refused") {
		t.Fatalf("got %v %v", resp, err)
	}
	if a := e.stored("app"); a.State != stateNeedsReauth {
		t.Errorf("state %s", a.State)
	}
}

func TestRejectedClientLeavesTheChainUnspent(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	refresh := e.stored("app").RefreshToken
	e.must(logical.UpdateOperation, "config", map[string]any{"client_secret": "rotated-elsewhere", "verify_connection": false})
	_, err := e.request(logical.UpdateOperation, "accounts/app/rotate", nil)
	if err == nil || !strings.Contains(err.Error(), "invalid_client") {
		t.Fatalf("want invalid_client, got %v", err)
	}
	a := e.stored("app")
	if a.RotationIntent != nil || a.State != stateActive || a.RefreshToken != refresh || !e.fake.RefreshTokenLive(refresh) {
		t.Errorf("a refused client must leave the chain as it was: %+v", a)
	}
	e.must(logical.UpdateOperation, "config", map[string]any{"client_secret": testClientSecret})
	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	e.assertNoTokenUsedTwice()
}

func TestRefreshResponseWithoutRefreshTokenKeepsTheOld(t *testing.T) {
	// RFC 6749 section 6: the old refresh token stays current. Exercised with
	// applyGrant directly, since the fake always sends one.
	e := newTestEnv(t, fakeermeo.Options{})
	a := &accountEntry{RefreshToken: "old", RefreshTokenIssuedAt: e.clock.Now().Add(-time.Hour), Generation: 4}
	applyGrant(a, &ermeo.Token{AccessToken: "new-access", ExpiresIn: time.Hour}, e.clock.Now(), e.clock.Now())
	if a.RefreshToken != "old" || !a.RefreshTokenIssuedAt.Equal(e.clock.Now().Add(-time.Hour)) || a.Generation != 5 || a.AccessToken != "new-access" {
		t.Errorf("%+v", a)
	}
}
