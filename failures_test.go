package ermeosecrets

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// TestARejectedRefreshBacksOff: with the client secret no longer what Ermeo
// holds, two readers every 0.5 s for 45 s send the stored refresh token once
// per backoff step (at 0, 5, 15 and 35 s), not at every read (72 times before
// the fix), and are served the last token with a warning meanwhile. Writing
// config lifts the backoff: the next read refreshes at once.
func TestARejectedRefreshBacksOff(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	first := e.creds("app").Data["access_token"].(string)
	refresh := e.stored("app").RefreshToken
	e.must(logical.UpdateOperation, "config", map[string]any{"client_secret": "changed-at-ermeo", "verify_connection": false})
	e.clock.Advance(2*time.Hour - 5*time.Minute) // 5 minutes left, min_ttl 10

	// When the fake saw the token, on the test's clock.
	start := e.clock.Now()
	var sent []time.Duration
	for i := 0; i < 90; i++ {
		for reader := 0; reader < 2; reader++ {
			resp := e.creds("app")
			if resp.Data["access_token"] != first || len(resp.Warnings) == 0 {
				t.Fatalf("at %s: want the last token with a warning, got %v", e.clock.Now().Sub(start), resp)
			}
			for len(sent) < e.fake.RefreshTokenPresentations()[refresh] {
				sent = append(sent, e.clock.Now().Sub(start))
			}
		}
		e.clock.Advance(500 * time.Millisecond)
	}
	t.Logf("the stored refresh token was sent %d times in 45 s of two readers every 0.5 s, at %v", len(sent), sent)
	want := []time.Duration{0, 5 * time.Second, 15 * time.Second, 35 * time.Second}
	if len(sent) != len(want) {
		t.Fatalf("sent %d times, want %d (once per backoff step)", len(sent), len(want))
	}
	for i := range want {
		if sent[i] != want[i] {
			t.Errorf("attempt %d at %s, want %s", i+1, sent[i], want[i])
		}
	}
	if a := e.stored("app"); a.RefreshToken != refresh || !e.fake.RefreshTokenLive(refresh) || a.Failures != 4 {
		t.Errorf("the rejected refreshes must leave the chain unspent, with 4 failures counted: %+v", a)
	}

	// The operator fixes config: the next read does not wait.
	e.must(logical.UpdateOperation, "config", map[string]any{"client_secret": testClientSecret})
	resp := e.creds("app")
	if resp.Data["access_token"] == first || len(resp.Warnings) != 0 {
		t.Fatalf("after config was fixed, want a new token at once, got %v", resp)
	}
	if a := e.stored("app"); a.Failures != 0 || !a.NextAttemptAt.IsZero() || a.LastError != "" {
		t.Errorf("a new pair clears the backoff: %+v", a)
	}
	e.assertNoTokenUsedTwice()
}

// TestARejectedRefreshWaitsForAForcedRotation: during the backoff of a
// rejected refresh, the keep-alive and readers wait; an operator's rotate
// does not.
func TestARejectedRefreshWaitsForAForcedRotation(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{AllowedGrants: []string{"password"}})
	e.configureUnchecked()
	e.createAccount("app", nil)
	e.clock.Advance(2*time.Hour - 5*time.Minute)
	e.creds("app") // rejected: unauthorized_client
	before := e.fake.Counters().Requests
	e.creds("app")
	if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.view, MountPoint: testMount}); err != nil {
		t.Fatal(err)
	}
	if n := e.fake.Counters().Requests - before; n != 0 {
		t.Fatalf("%d requests to Ermeo during the backoff", n)
	}
	_, err := e.request(logical.UpdateOperation, "accounts/app/rotate", nil)
	if err == nil || !strings.Contains(err.Error(), "unauthorized_client") {
		t.Fatalf("a forced rotation must be sent (and rejected again): %v", err)
	}
	if n := e.fake.Counters().Requests - before; n != 1 {
		t.Fatalf("%d requests for one forced rotation", n)
	}
}

// TestAStorageFailureDuringARefreshIsCountedAndShown: a refresh that storage
// stops before anything is sent (as Vault's "cannot write to storage during
// setup" after a plugin reload does) is counted in ermeo_refreshes_total and
// shows in the account's last_error, though storage cannot record it.
func TestAStorageFailureDuringARefreshIsCountedAndShown(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	first := e.creds("app").Data["access_token"].(string)
	e.clock.Advance(2*time.Hour - 5*time.Minute)
	storage := e.wrapStorage()
	storage.failPuts(everyPut)
	before := e.fake.Counters().Requests
	for i := 0; i < 3; i++ {
		resp := e.creds("app")
		if resp.Data["access_token"] != first || len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], "nothing was sent") {
			t.Fatalf("want the last token with a warning that nothing was sent, got %v", resp)
		}
	}
	if e.fake.Counters().Requests != before {
		t.Fatal("a refresh was sent without its intent record")
	}
	families, _ := readPrometheus(t, e)
	if n := sampleValue(t, families[metricRefreshes], "storage_refused"); n != 3 {
		t.Errorf("ermeo_refreshes_total{outcome=\"storage_refused\"} = %v, want 3", n)
	}
	view := e.must(logical.ReadOperation, "accounts/app", nil).Data
	if msg := view["last_error"].(string); !strings.Contains(msg, "could not record the rotation") || view["state"] != stateActive {
		t.Errorf("the account's status must show the failure: %v", view)
	}

	storage.failPuts(nil)
	if resp := e.creds("app"); resp.Data["access_token"] == first || len(resp.Warnings) != 0 {
		t.Fatalf("once storage takes writes, the read refreshes: %v", resp)
	}
	if view := e.must(logical.ReadOperation, "accounts/app", nil).Data; view["last_error"] != "" {
		t.Errorf("a stored pair clears the failure: %v", view["last_error"])
	}
	e.assertNoTokenUsedTwice()
}
