package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The cluster test's shape. Tokens live 6 s and are refreshed when less than
// 2 s is left, so each account's chain turns about every 4 s.
const (
	clusterNodes      = 3
	clusterReaders    = 50
	clusterTokenTTL   = 6 * time.Second
	clusterMinTTL     = "2s"
	minFailovers      = 3
	maxFailovers      = 6
	failoverPhaseCap  = 120 * time.Second // no new failover starts after this
	steadyBeforeKill  = 5 * time.Second
	downBeforeRestart = 2 * time.Second
)

var clusterAccounts = []string{"app", "billing", "reports"}

// TestClusterFailover kills -9 the active node of a 3-node cluster, again and
// again, under 50 readers (runFailovers), then checks what must hold.
func TestClusterFailover(t *testing.T) {
	cl, fake := startTestCluster(t, fakeermeo.Options{AccessTokenTTL: clusterTokenTTL})
	run := runFailovers(t, cl, fake)
	run.print(cl)
	reads, counters := run.reads, run.counters

	// Every account is usable on every node at the end.
	for _, r := range run.endCreds {
		switch {
		case r.err != nil:
			t.Errorf("at the end, creds/%s on node%d: %v", r.account, r.node+1, r.err)
		case !r.valid:
			t.Errorf("at the end, creds/%s on node%d returned a token the fake does not accept", r.account, r.node+1)
		}
	}
	// No account needs re-authentication, and none has a refresh whose
	// answer was lost.
	for _, a := range run.endAccounts {
		if a.err != nil {
			t.Errorf("at the end, accounts/%s: %v", a.name, a.err)
			continue
		}
		if a.data["state"] != "active" {
			t.Errorf("at the end, accounts/%s is %v (last_error %v)", a.name, a.data["state"], a.data["last_error"])
		}
		if a.data["rotation_in_flight"] == true {
			t.Logf("at the end, accounts/%s still has a refresh in flight (last_error %v)", a.name, a.data["last_error"])
		}
	}

	// A spent token is sent again only by a new active node finding out about
	// a refresh that a kill interrupted, once per chain, and every such chain
	// was restarted with the kept password: none was lost by the plugin.
	lostByKills, interrupted := run.lostByKills(), run.interrupted()
	if lostByKills > interrupted || lostByKills > len(reads.failovers)*len(clusterAccounts) {
		t.Errorf("%d chains found gone, but only %d refreshes interrupted by %d kills", lostByKills, interrupted, len(reads.failovers))
	}
	if counters.RefreshTokensUsedTwice+counters.ReplaysAfterLostAnswer > lostByKills {
		t.Errorf("spent tokens sent again %d times for %d chains lost by kills: a token was sent twice needlessly",
			counters.RefreshTokensUsedTwice+counters.ReplaysAfterLostAnswer, lostByKills)
	}
	if rebootstraps := run.rebootstraps(); rebootstraps != lostByKills {
		t.Errorf("%d chains lost by kills but %d restarted with the kept password", lostByKills, rebootstraps)
	}
	// One live chain per account, plus the orphaned successor of each chain
	// lost by a kill (Ermeo revokes nothing; it lives until it expires).
	if want := len(clusterAccounts) + lostByKills; counters.LiveRefreshTokens != want {
		t.Errorf("live refresh tokens at the fake: %d, want %d (one per account, plus %d orphaned by kills): a chain was lost or forked", counters.LiveRefreshTokens, want, lostByKills)
	}
	if n := counters.Grants["refresh_token"]["success"]; n < len(reads.failovers) {
		t.Errorf("only %d refreshes during the run: the test did not exercise refreshes across failovers", n)
	}

	// Every read got a token the fake accepts, and the cluster recovered
	// from every kill.
	if reads.invalid > 0 {
		t.Errorf("readers got %d tokens the fake does not accept, the first:\n%s", reads.invalid, strings.Join(reads.invalidSample, "\n"))
	}
	if len(reads.failovers) < minFailovers {
		t.Errorf("only %d failovers", len(reads.failovers))
	}
	for i, fo := range reads.failovers {
		if fo.firstOK == 0 {
			t.Errorf("failover %d: no read started after the kill succeeded", i+1)
		}
	}
	if active := run.active(); len(active) < clusterNodes {
		t.Logf("not every node was active during the run (Raft elects among the survivors at random): %s", strings.Join(active, ", "))
	}

	// Every process the cluster started ends with it, the plugin processes
	// that the kills left behind included. A plugin process whose vault was
	// killed exits by itself within a second (it polls its parent every
	// 250 ms): none may still run before Stop.
	if len(run.orphans) != 0 {
		t.Errorf("plugin processes of killed nodes still running: %v", run.orphans)
	}
	for _, id := range run.runningAfterStop {
		t.Errorf("%s still runs after Stop", id)
	}
	for _, pid := range run.orphansAfterStop {
		t.Errorf("plugin process %d, left by a kill, still runs after Stop", pid)
	}
}

// TestClusterCrashDuringRefresh crashes the active node's machine (vault and
// its plugin process, SIGKILL) while two refreshes are in flight: Ermeo has
// committed them (the old refresh tokens are spent) and their answers are
// held back, so nobody ever gets them. The new active node must find the
// intent records, replicated through Raft, and resolve them: the account
// with a kept password starts a new chain by itself, the other one becomes
// needs_reauth and says which command to run. No refresh token is presented
// after its answer was delivered.
func TestClusterCrashDuringRefresh(t *testing.T) {
	cl, fake := startTestCluster(t, fakeermeo.Options{})
	leader, err := cl.Leader()
	if err != nil {
		t.Fatal(err)
	}
	admin := cl.Client(leader)
	accounts := map[string]bool{"kept": true, "plain": false} // name: store_password
	for name, keep := range accounts {
		if _, err := admin.Logical().Write(cl.Mount+"/accounts/"+name, map[string]any{
			"username": testUser, "password": testPassword, "store_password": keep,
		}); err != nil {
			t.Fatalf("writing accounts/%s: %v", name, err)
		}
	}

	fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: len(accounts)})
	var wg sync.WaitGroup
	for name := range accounts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := admin.Logical().Write(cl.Mount+"/accounts/"+name+"/rotate", nil)
			t.Logf("rotate of %s on the node that crashed: %v", name, err)
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for fake.Held() < len(accounts) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if fake.Held() < len(accounts) {
		t.Fatalf("only %d refreshes reached the fake", fake.Held())
	}
	killAt := time.Now()
	if err := cl.Crash(leader); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	var next int
	for time.Now().Before(killAt.Add(60 * time.Second)) {
		if next, err = cl.Leader(); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("no new active node after the crash: %v", err)
	}
	fmt.Printf("cluster: crashed node%d with %d refreshes in flight; node%d active after %s\n",
		leader+1, len(accounts), next+1, time.Since(killAt).Round(time.Millisecond))
	c := cl.Client(next)

	// The new active node sees the interrupted refreshes.
	for name := range accounts {
		var s *api.Secret
		for time.Now().Before(killAt.Add(60 * time.Second)) {
			if s, err = c.Logical().Read(cl.Mount + "/accounts/" + name); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil || s == nil {
			t.Fatalf("accounts/%s on the new active node: %v", name, err)
		}
		if s.Data["rotation_in_flight"] != true {
			t.Errorf("accounts/%s on the new active node: the interrupted refresh is not seen: %v", name, s.Data)
		}
	}

	// Rotating resolves them.
	_, err = c.Logical().Write(cl.Mount+"/accounts/kept/rotate", nil)
	if err != nil {
		t.Errorf("rotate of kept (password kept) after the crash: %v", err)
	}
	// The request that finds Ermeo refusing the chain, and records
	// needs_reauth, is a 502 (it changed something: a 400 must not); a later
	// one is a 400, which this rotate is if Vault's periodic tick on the new
	// active node resolved the interrupted refresh first. Either names the
	// command to run.
	_, err = c.Logical().Write(cl.Mount+"/accounts/plain/rotate", nil)
	if code := statusOf(err); (code != 502 && code != 400) || !strings.Contains(err.Error(), "vault write "+cl.Mount+"/accounts/plain password=") {
		t.Errorf("rotate of plain (no password) after the crash: want a 502 (or a 400, after a tick) naming the command to run, got %v", err)
	} else {
		t.Logf("plain after the crash: %d %s", statusOf(err), firstError(err))
	}
	kept, err := c.Logical().Read(cl.Mount + "/accounts/kept")
	if err != nil || kept == nil || kept.Data["state"] != "active" || kept.Data["rotation_in_flight"] != false {
		t.Errorf("accounts/kept after the crash: %v %v", kept, err)
	}
	plain, err := c.Logical().Read(cl.Mount + "/accounts/plain")
	if err != nil || plain == nil || plain.Data["state"] != "needs_reauth" {
		t.Errorf("accounts/plain after the crash: %v %v", plain, err)
	}
	for i := range cl.Nodes {
		if i == leader {
			continue
		}
		s, err := cl.Client(i).Logical().Read(cl.Mount + "/creds/kept")
		if err != nil || s == nil {
			t.Errorf("creds/kept on node%d: %v", i+1, err)
			continue
		}
		if tok, _ := s.Data["access_token"].(string); !fake.AccessTokenValid(tok) {
			t.Errorf("creds/kept on node%d: a token the fake does not accept", i+1)
		}
	}

	counters := fake.Counters()
	fmt.Printf("cluster: after the crash: refresh outcomes %v, password grants %v, refresh tokens used twice %d, replays after a lost answer %d\n",
		counters.Grants["refresh_token"], counters.Grants["password"], counters.RefreshTokensUsedTwice, counters.ReplaysAfterLostAnswer)
	if counters.RefreshTokensUsedTwice != 0 {
		t.Errorf("refresh tokens used twice: %d", counters.RefreshTokensUsedTwice)
	}
	if counters.ReplaysAfterLostAnswer != len(accounts) {
		t.Errorf("replays after a lost answer: %d, want one per interrupted refresh (%d): the new active node must find out once", counters.ReplaysAfterLostAnswer, len(accounts))
	}
}
