package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"sort"
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

// failover is what happened around one kill of the active node.
type failover struct {
	killed      int
	killAt      time.Time
	newLeader   int
	leaderAfter time.Duration // kill to a new active node seen by sys/health
	firstOK     time.Duration // kill to the first successful read started after it
	firstOKNode int
	restarted   time.Duration // kill to the killed node unsealed again
	healthy     time.Duration // kill to every node a healthy voter again
	// Reads that failed between the kill and the cluster's recovery, on
	// the killed node (down, so expected) and on the others.
	failedKilled, failedOthers int
	// Reads that failed after the recovery, until the next kill.
	failedAfter int
	recovered   bool
}

// readLog collects what the readers saw.
type readLog struct {
	mu            sync.Mutex
	served        [clusterNodes]int
	failed        [clusterNodes]int
	failedAllUp   int // before the first kill, with every node up
	warnings      int
	invalid       int
	invalidSample []string
	errorKinds    map[string]int
	failovers     []*failover
	cur           *failover
}

func (l *readLog) note(node int, started, ended time.Time, tok string, valid bool, warnings []string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.failed[node]++
		var where string
		switch {
		case l.cur == nil:
			where = "with every node up"
			l.failedAllUp++
		case !l.cur.recovered && node == l.cur.killed:
			where = "on the killed node"
			l.cur.failedKilled++
		case !l.cur.recovered:
			where = "on the other nodes"
			l.cur.failedOthers++
		default:
			where = "after recovery"
			l.cur.failedAfter++
		}
		l.errorKinds[where+": "+errorKind(err)]++
		return
	}
	l.served[node]++
	if len(warnings) > 0 {
		l.warnings++
	}
	if !valid {
		l.invalid++
		if len(l.invalidSample) < 10 {
			l.invalidSample = append(l.invalidSample, fmt.Sprintf("node%d at %s: a token of %d chars not accepted by the fake (warnings %v)",
				node+1, ended.UTC().Format("15:04:05.000"), len(tok), warnings))
		}
	}
	if f := l.cur; f != nil && f.firstOK == 0 && started.After(f.killAt) {
		f.firstOK = ended.Sub(f.killAt)
		f.firstOKNode = node
	}
}

// errorKind shortens a Vault error to its first error line, without
// addresses, so that like errors are counted together.
func errorKind(err error) string {
	var re *api.ResponseError
	if errors.As(err, &re) {
		msg := strings.Join(re.Errors, "; ")
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		if len(msg) > 120 {
			msg = msg[:120] + "..."
		}
		return fmt.Sprintf("%d %s", re.StatusCode, msg)
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "connection refused"):
		return "connection refused"
	case strings.Contains(msg, "connection reset"):
		return "connection reset"
	case strings.Contains(msg, "EOF"):
		return "EOF"
	case strings.Contains(msg, "deadline exceeded") || strings.Contains(msg, "Timeout"):
		return "timeout"
	}
	if len(msg) > 120 {
		msg = msg[:120] + "..."
	}
	return msg
}

// startTestCluster skips unless a vault binary is at hand (and without
// -short), then starts a fake Ermeo and a cluster with the plugin enabled and
// configured against it. Everything is stopped at the end of the test; on
// failure the cluster's directory (each node's log) is kept and the end of
// each log printed.
func startTestCluster(t *testing.T, fakeOpts fakeermeo.Options) (*Cluster, *fakeermeo.Server) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e cluster: skipped with -short (it starts a 3-node Vault cluster)")
	}
	bin, why := FindVault()
	if bin == "" {
		t.Skip("e2e cluster: " + why)
	}

	work, err := os.MkdirTemp("", "ermeo-cluster-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept the cluster's directory (node logs in node*/vault.log): %s", work)
			return
		}
		os.RemoveAll(work)
	})
	pluginBin, sha, err := BuildPlugin(work, PluginVersion)
	if err != nil {
		t.Fatal(err)
	}

	fake := fakeermeo.New(fakeOpts)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)

	started := time.Now()
	cl, err := StartCluster(ClusterOptions{
		VaultBin: bin, PluginBin: pluginBin, PluginSHA: sha, PluginVersion: PluginVersion,
		WorkDir: work, Nodes: clusterNodes, LogLevel: "info",
		// Raft's fastest timeouts, as recommended for production: a new
		// leader within seconds of a kill.
		RaftPerformanceMultiplier: 1,
		Logf: func(format string, args ...any) {
			t.Logf("+%s "+format, append([]any{time.Since(started).Round(time.Millisecond)}, args...)...)
		},
	})
	if err != nil {
		t.Fatalf("starting the cluster: %v", err)
	}
	t.Cleanup(func() {
		cl.Stop()
		if t.Failed() {
			for _, n := range cl.Nodes {
				t.Logf("--- last lines of %s ---\n%s", n.LogPath, lastLines(n.Log(), 40))
			}
		}
	})
	fmt.Printf("cluster: %s, %d nodes up, plugin enabled at %s/ in %s\n", cl.Version, len(cl.Nodes), cl.Mount, time.Since(started).Round(time.Millisecond))

	leader, err := cl.Leader()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Client(leader).Logical().Write(cl.Mount+"/config", map[string]any{
		"api_url": srv.URL, "client_id": testClientID, "client_secret": testClientSecret,
	}); err != nil {
		t.Fatalf("writing config: %v", err)
	}
	return cl, fake
}

func TestClusterFailover(t *testing.T) {
	cl, fake := startTestCluster(t, fakeermeo.Options{AccessTokenTTL: clusterTokenTTL})
	leader, err := cl.Leader()
	if err != nil {
		t.Fatal(err)
	}
	admin := cl.Client(leader)
	// The accounts keep their password: a kill -9 of the active node can
	// land between Ermeo spending a refresh token and the new pair reaching
	// Raft (the killed node's orphaned plugin process may even receive the
	// answer, with nowhere to store it). No client can save such a chain; the
	// new active node finds the intent record, learns the chain is gone with
	// one refresh, and starts a new one with the kept password.
	for _, name := range clusterAccounts {
		if _, err := admin.Logical().Write(cl.Mount+"/accounts/"+name, map[string]any{
			"username": testUser, "password": testPassword, "min_ttl": clusterMinTTL, "store_password": true,
		}); err != nil {
			t.Fatalf("writing accounts/%s: %v", name, err)
		}
	}

	// The readers: each bound to one node, each reading one account's
	// creds in a loop and checking every token with the fake at once.
	reads := &readLog{errorKinds: map[string]int{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	stopReaders := func() {
		stopOnce.Do(func() { close(stop) })
		wg.Wait()
	}
	defer stopReaders()
	for r := 0; r < clusterReaders; r++ {
		node := r % clusterNodes
		account := clusterAccounts[(r/clusterNodes)%len(clusterAccounts)]
		client, err := cl.NewClient(node)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := cl.Mount + "/creds/" + account
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				s, err := client.Logical().ReadWithContext(ctx, path)
				cancel()
				end := time.Now()
				var tok string
				var warnings []string
				if err == nil && s == nil {
					err = errors.New("creds read returned nothing")
				}
				if err == nil {
					tok, _ = s.Data["access_token"].(string)
					warnings = s.Warnings
				}
				valid := err == nil && tok != "" && fake.AccessTokenValid(tok)
				reads.note(node, start, end, tok, valid, warnings, err)
				pause := 50 * time.Millisecond
				if err != nil {
					pause = 100 * time.Millisecond
				}
				select {
				case <-stop:
					return
				case <-time.After(pause):
				}
			}
		}()
	}

	// The failovers: kill -9 the active node, wait for a new one, restart
	// and unseal the killed node, wait until the cluster is healthy again;
	// at least minFailovers times, and until every node has been active.
	activeSeen := map[int]bool{}
	standbyPlugins := 0 // plugin processes seen on standbys before the kills
	phaseStart := time.Now()
	for f := 0; f < maxFailovers; f++ {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		err := cl.WaitHealthy(ctx)
		cancel()
		if err != nil {
			t.Fatalf("before failover %d: %v", f+1, err)
		}
		time.Sleep(steadyBeforeKill)
		active, err := cl.Leader()
		if err != nil {
			t.Fatalf("before failover %d: %v", f+1, err)
		}
		activeSeen[active] = true
		if f >= minFailovers && (len(activeSeen) == clusterNodes || time.Since(phaseStart) > failoverPhaseCap) {
			break
		}

		for _, n := range cl.Nodes {
			if n.Index != active {
				standbyPlugins += len(n.PluginPids())
			}
		}

		fo := &failover{killed: active, newLeader: -1, firstOKNode: -1}
		reads.mu.Lock()
		fo.killAt = time.Now()
		reads.cur = fo
		reads.failovers = append(reads.failovers, fo)
		reads.mu.Unlock()
		if err := cl.Kill(active); err != nil {
			t.Fatalf("failover %d: killing node%d: %v", f+1, active+1, err)
		}

		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if l, err := cl.Leader(); err == nil {
				reads.mu.Lock()
				fo.newLeader, fo.leaderAfter = l, time.Since(fo.killAt)
				reads.mu.Unlock()
				activeSeen[l] = true
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if fo.newLeader < 0 {
			t.Fatalf("failover %d: no new active node 60s after killing node%d", f+1, active+1)
		}

		time.Sleep(downBeforeRestart)
		if err := cl.Restart(active); err != nil {
			t.Fatalf("failover %d: restarting node%d: %v", f+1, active+1, err)
		}
		restarted := time.Since(fo.killAt)
		ctx, cancel = context.WithTimeout(context.Background(), 90*time.Second)
		err = cl.WaitHealthy(ctx)
		cancel()
		if err != nil {
			t.Fatalf("failover %d: after restarting node%d: %v", f+1, active+1, err)
		}
		reads.mu.Lock()
		fo.restarted, fo.healthy, fo.recovered = restarted, time.Since(fo.killAt), true
		reads.mu.Unlock()
	}
	time.Sleep(steadyBeforeKill)
	stopReaders()
	runFor := time.Since(phaseStart)

	// Every account is usable on every node.
	for i := range cl.Nodes {
		for _, name := range clusterAccounts {
			s, err := cl.Client(i).Logical().Read(cl.Mount + "/creds/" + name)
			if err != nil || s == nil {
				t.Errorf("at the end, creds/%s on node%d: %v", name, i+1, err)
				continue
			}
			if tok, _ := s.Data["access_token"].(string); !fake.AccessTokenValid(tok) {
				t.Errorf("at the end, creds/%s on node%d returned a token the fake does not accept", name, i+1)
			}
		}
	}
	// No account needs re-authentication, and none has a refresh whose
	// answer was lost.
	for _, name := range clusterAccounts {
		s, err := admin.Logical().Read(cl.Mount + "/accounts/" + name)
		if err != nil || s == nil {
			t.Errorf("at the end, accounts/%s: %v", name, err)
			continue
		}
		if s.Data["state"] != "active" {
			t.Errorf("at the end, accounts/%s is %v (last_error %v)", name, s.Data["state"], s.Data["last_error"])
		}
		if s.Data["rotation_in_flight"] == true {
			t.Logf("at the end, accounts/%s still has a refresh in flight (last_error %v)", name, s.Data["last_error"])
		}
	}

	counters := fake.Counters()
	reads.mu.Lock()
	defer reads.mu.Unlock()
	served, failed := 0, 0
	for i := 0; i < clusterNodes; i++ {
		served += reads.served[i]
		failed += reads.failed[i]
	}
	var active []string
	for i := 0; i < clusterNodes; i++ {
		if activeSeen[i] {
			active = append(active, fmt.Sprintf("node%d", i+1))
		}
	}
	fmt.Printf("cluster: %d readers over %d nodes for %s, %d accounts (access tokens of %s, min_ttl %s)\n",
		clusterReaders, clusterNodes, runFor.Round(time.Millisecond), len(clusterAccounts), clusterTokenTTL, clusterMinTTL)
	fmt.Printf("cluster: refreshes %d (refresh_token grants that succeeded), password grants %d, refresh outcomes %v\n",
		counters.Grants["refresh_token"]["success"], counters.Grants["password"]["success"], counters.Grants["refresh_token"])
	fmt.Printf("cluster: refresh tokens used twice %d, replays after a lost answer %d, live refresh tokens %d (one per account: %d)\n",
		counters.RefreshTokensUsedTwice, counters.ReplaysAfterLostAnswer, counters.LiveRefreshTokens, len(clusterAccounts))
	fmt.Printf("cluster: failovers %d, nodes that were active: %s; plugin processes seen on standbys: %d\n", len(reads.failovers), strings.Join(active, ", "), standbyPlugins)
	var perNode []string
	for _, n := range cl.Nodes {
		perNode = append(perNode, fmt.Sprintf("%s %d", n.ID, strings.Count(n.Log(), "rotated refresh chain")))
	}
	fmt.Printf("cluster: refreshes logged by each node's plugin (\"rotated refresh chain\"): %s\n", strings.Join(perNode, ", "))
	fmt.Printf("cluster: reads served %d (node1 %d, node2 %d, node3 %d), with a warning %d; reads failed %d (%d with every node up)\n",
		served, reads.served[0], reads.served[1], reads.served[2], reads.warnings, failed, reads.failedAllUp)
	for i, fo := range reads.failovers {
		fmt.Printf("cluster: failover %d: at %s killed node%d (active); node%d active after %s; first successful read %s after the kill (on node%d); reads failed until recovered: %d on the killed node, %d on the others; node%d unsealed again at +%s, all healthy at +%s; reads failed after: %d\n",
			i+1, fo.killAt.UTC().Format("15:04:05.000"), fo.killed+1, fo.newLeader+1, fo.leaderAfter.Round(time.Millisecond), fo.firstOK.Round(time.Millisecond), fo.firstOKNode+1,
			fo.failedKilled, fo.failedOthers, fo.killed+1, fo.restarted.Round(time.Millisecond), fo.healthy.Round(time.Millisecond), fo.failedAfter)
	}
	kinds := make([]string, 0, len(reads.errorKinds))
	for k := range reads.errorKinds {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(a, b int) bool { return reads.errorKinds[kinds[a]] > reads.errorKinds[kinds[b]] })
	for _, k := range kinds {
		fmt.Printf("cluster:   %6d × %s\n", reads.errorKinds[k], k)
	}

	// What the plugin logged about refreshes that a kill interrupted.
	for _, n := range cl.Nodes {
		for _, line := range strings.Split(n.Log(), "\n") {
			if strings.Contains(line, "interrupted refresh") || strings.Contains(line, "refresh chain is gone") {
				if len(line) > 400 {
					line = line[:400] + "..."
				}
				fmt.Printf("cluster: %s log: %s\n", n.ID, line)
			}
		}
	}

	// A spent token is sent again only by a new active node finding out about
	// a refresh that a kill interrupted, once per chain, and every such chain
	// was restarted with the kept password: none was lost by the plugin.
	lostByKills := counters.DistinctTokensReplayed
	rebootstraps := counters.Grants["password"]["success"] - len(clusterAccounts)
	interrupted := 0
	for _, n := range cl.Nodes {
		interrupted += strings.Count(n.Log(), "found an interrupted refresh")
	}
	fmt.Printf("cluster: chains lost in flight by a kill: %d (refreshes found interrupted by the new active node: %d), restarted with the kept password: %d; chains lost by the plugin: %d\n",
		lostByKills, interrupted, rebootstraps, max(0, lostByKills-interrupted))
	if lostByKills > interrupted || lostByKills > len(reads.failovers)*len(clusterAccounts) {
		t.Errorf("%d chains found gone, but only %d refreshes interrupted by %d kills", lostByKills, interrupted, len(reads.failovers))
	}
	if counters.RefreshTokensUsedTwice+counters.ReplaysAfterLostAnswer > lostByKills {
		t.Errorf("spent tokens sent again %d times for %d chains lost by kills: a token was sent twice needlessly",
			counters.RefreshTokensUsedTwice+counters.ReplaysAfterLostAnswer, lostByKills)
	}
	if rebootstraps != lostByKills {
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
	if len(active) < clusterNodes {
		t.Logf("not every node was active during the run (Raft elects among the survivors at random): %s", strings.Join(active, ", "))
	}

	// Every process the cluster started ends with it, the plugin processes
	// that the kills left behind included.
	orphans := cl.Orphans()
	// A plugin process whose vault was killed exits by itself within a
	// second (it polls its parent every 250 ms): none may still run now.
	if len(orphans) != 0 {
		t.Errorf("plugin processes of killed nodes still running: %v", orphans)
	}
	cl.Stop()
	for _, n := range cl.Nodes {
		if n.Running() {
			t.Errorf("%s still runs after Stop", n.ID)
		}
	}
	for _, pid := range orphans {
		if isPluginProcess(pid) {
			t.Errorf("plugin process %d, left by a kill, still runs after Stop", pid)
		}
	}
	fmt.Printf("cluster: %d plugin processes left running by the kills, ended by Stop: %v\n", len(orphans), orphans)
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
	_, err = c.Logical().Write(cl.Mount+"/accounts/plain/rotate", nil)
	// The rotate that finds the chain gone is a 502 (Ermeo refused it), naming the command.
	if statusOf(err) != 502 || !strings.Contains(err.Error(), "vault write "+cl.Mount+"/accounts/plain password=") {
		t.Errorf("rotate of plain (no password) after the crash: want a 502 naming the command to run, got %v", err)
	} else {
		t.Logf("plain after the crash: %s", firstError(err))
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
