package ermeosecrets

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// A restore of Vault's storage from a snapshot older than the chain's last
// rotation rewinds the account to a refresh token Ermeo has spent. The first
// refresh that meets it says so, in the account's status and last_error
// (naming the restore and the rotate-everything runbook), and in a gauge read
// from the stored account, which a reload of the plugin does not reset.
func TestARewoundChainIsAnnouncedAndSurvivesAReload(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	ctx := context.Background()

	// The snapshot, then three rotations, then the restore.
	snapshot, err := e.storage.Get(ctx, accountKey("app"))
	if err != nil || snapshot == nil {
		t.Fatal(snapshot, err)
	}
	for range 3 {
		e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	}
	if err := e.storage.Put(ctx, snapshot); err != nil {
		t.Fatal(err)
	}
	e.restart()

	_, err = e.request(logical.UpdateOperation, "accounts/app/rotate", nil)
	if err == nil || !strings.Contains(err.Error(), "password=") {
		t.Fatalf("the rotate of a rewound chain: want the needs_reauth error, got %v", err)
	}
	st := e.must(logical.ReadOperation, "accounts/app", nil).Data
	lastError, _ := st["last_error"].(string)
	for _, want := range []string{"no refresh of this mount had sent", "restored from a snapshot", "vault write -f " + testMount + "accounts/<name>/rotate"} {
		if !strings.Contains(lastError, want) {
			t.Errorf("last_error lacks %q: %s", want, lastError)
		}
	}
	if st["chain_lost_how"] != "refused" || st["chain_lost_at"] == "" || st["state"] != stateNeedsReauth {
		t.Errorf("status after the rewound chain: %v", st)
	}

	// A reload: a new plugin process, its counters at zero, the schedule
	// loaded from storage at start-up.
	b := e.restart()
	if err := b.initialize(ctx, &logical.InitializationRequest{Storage: e.view}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { b.store.mu.Lock(); defer b.store.mu.Unlock(); return b.store.load.loaded })
	b.clean(ctx)
	prom := e.must(logical.ReadOperation, "metrics", map[string]any{"format": "prometheus"}).Data[logical.HTTPRawBody].(string)
	for _, want := range []string{
		`ermeo_chains_lost_total{how="refused"} 0`,
		`ermeo_chain_lost_timestamp_seconds{account="app",how="refused"} `,
		`ermeo_accounts{state="needs_reauth"} 1`,
	} {
		if !strings.Contains(prom, want) {
			t.Errorf("after a reload, the prometheus text lacks %q:\n%s", want, prom)
		}
	}
}
