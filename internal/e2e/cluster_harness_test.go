package e2e

// The cluster tests' harness: a cluster with the plugin against a fake
// Ermeo, and, for TestClusterFailover, the readers, the failover loop and the
// figures they leave (failoverRun), which the test then checks.

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

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

// startSingleRaft skips unless a vault binary is at hand, then starts a
// single-node Vault with integrated storage (Raft, its fastest timeouts) in
// a temporary directory, initialised and unsealed with a Shamir key, with
// the plugin registered by sha256 and enabled at ermeo/ (Cluster.Mount).
// About 3.5 s. It is stopped when the test ends.
func startSingleRaft(t *testing.T) *Cluster {
	t.Helper()
	bin, why := FindVault()
	if bin == "" {
		t.Skip("e2e: " + why)
	}
	start := time.Now()
	work := t.TempDir()
	buildDir := filepath.Join(work, "build")
	if err := os.Mkdir(buildDir, 0o755); err != nil {
		t.Fatal(err)
	}
	pluginBin, sha, err := BuildPlugin(buildDir, PluginVersion)
	if err != nil {
		t.Fatal(err)
	}
	c, err := StartCluster(ClusterOptions{
		VaultBin: bin, PluginBin: pluginBin, PluginSHA: sha, PluginVersion: PluginVersion,
		WorkDir: work, Nodes: 1, Timeout: time.Minute, RaftPerformanceMultiplier: 1,
		Logf: func(format string, args ...any) { t.Logf("raft: "+format, args...) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	node := c.Nodes[0]
	t.Logf("single-node Raft server %s (pid %d, data in %s) initialised, unsealed, plugin enabled, in %s",
		node.Addr, node.Pid(), filepath.Join(node.Dir, "raft"), time.Since(start).Round(time.Millisecond))
	return c
}

// startSingleRaftEnv is startSingleRaft with a fake Ermeo of opts, and the
// env of the server's mount against it (not yet configured).
func startSingleRaftEnv(t *testing.T, opts fakeermeo.Options) (*Cluster, *env) {
	t.Helper()
	c := startSingleRaft(t)
	fake := fakeermeo.New(opts)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	client, err := c.NewClient(0)
	if err != nil {
		t.Fatal(err)
	}
	return c, &env{t: t, mount: c.Mount, fake: fake, url: srv.URL, c: client}
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

// failoverRun is what runFailovers saw: what the readers got, the failovers,
// the fake's counters, and the state of every account, node and plugin
// process at the end.
type failoverRun struct {
	reads          *readLog // what the readers saw; the failovers are in it
	activeSeen     map[int]bool
	standbyPlugins int // plugin processes seen on standbys before the kills
	runFor         time.Duration
	counters       fakeermeo.Counters

	// At the end, with the readers stopped and before Stop.
	endCreds    []endCreds   // creds of every account on every node
	endAccounts []endAccount // accounts/<name> on the first active node
	logs        []string     // each node's log
	orphans     []int        // plugin processes left by the kills, still running
	// After Stop.
	runningAfterStop []string // nodes
	orphansAfterStop []int    // plugin processes left by the kills
}

// endCreds is a creds read of account on node at the end.
type endCreds struct {
	node    int
	account string
	err     error // also when the read returned nothing
	valid   bool  // the token is one the fake accepts
}

// endAccount is accounts/<name> as the active node read it at the end.
type endAccount struct {
	name string
	err  error // also when the read returned nothing
	data map[string]any
}

// runFailovers writes the accounts (with a kept password), starts
// clusterReaders readers, kills -9 the active node and brings it back at
// least minFailovers times, stops the readers, reads every account on every
// node, and stops the cluster. It fails the test only when it cannot go on.
func runFailovers(t *testing.T, cl *Cluster, fake *fakeermeo.Server) *failoverRun {
	t.Helper()
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
	run := &failoverRun{reads: &readLog{errorKinds: map[string]int{}}, activeSeen: map[int]bool{}}
	reads := run.reads
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
		run.activeSeen[active] = true
		if f >= minFailovers && (len(run.activeSeen) == clusterNodes || time.Since(phaseStart) > failoverPhaseCap) {
			break
		}

		for _, n := range cl.Nodes {
			if n.Index != active {
				run.standbyPlugins += len(n.PluginPids())
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
				run.activeSeen[l] = true
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
	run.runFor = time.Since(phaseStart)

	// Every account on every node, and as the admin client's node sees it.
	for i := range cl.Nodes {
		for _, name := range clusterAccounts {
			r := endCreds{node: i, account: name}
			s, err := cl.Client(i).Logical().Read(cl.Mount + "/creds/" + name)
			switch {
			case err != nil:
				r.err = err
			case s == nil:
				r.err = errors.New("nothing there")
			default:
				tok, _ := s.Data["access_token"].(string)
				r.valid = fake.AccessTokenValid(tok)
			}
			run.endCreds = append(run.endCreds, r)
		}
	}
	for _, name := range clusterAccounts {
		a := endAccount{name: name}
		s, err := admin.Logical().Read(cl.Mount + "/accounts/" + name)
		switch {
		case err != nil:
			a.err = err
		case s == nil:
			a.err = errors.New("nothing there")
		default:
			a.data = s.Data
		}
		run.endAccounts = append(run.endAccounts, a)
	}
	run.counters = fake.Counters()
	for _, n := range cl.Nodes {
		run.logs = append(run.logs, n.Log())
	}

	// Every process the cluster started ends with it, the plugin processes
	// that the kills left behind included.
	run.orphans = cl.Orphans()
	cl.Stop()
	for _, n := range cl.Nodes {
		if n.Running() {
			run.runningAfterStop = append(run.runningAfterStop, n.ID)
		}
	}
	for _, pid := range run.orphans {
		if isPluginProcess(pid) {
			run.orphansAfterStop = append(run.orphansAfterStop, pid)
		}
	}
	return run
}

// active returns the nodes that were active during the run ("node1", ...).
func (r *failoverRun) active() []string {
	var active []string
	for i := 0; i < clusterNodes; i++ {
		if r.activeSeen[i] {
			active = append(active, fmt.Sprintf("node%d", i+1))
		}
	}
	return active
}

// lostByKills is the number of chains a kill took with it: spent refresh
// tokens presented again, each by a node finding out a chain was gone.
func (r *failoverRun) lostByKills() int { return r.counters.DistinctTokensReplayed }

// rebootstraps is the number of chains restarted with the kept password
// (beyond the accounts' first grant).
func (r *failoverRun) rebootstraps() int {
	return r.counters.Grants["password"]["success"] - len(clusterAccounts)
}

// interrupted is the number of refreshes that a new active node found
// interrupted by a kill, as the nodes logged them.
func (r *failoverRun) interrupted() int {
	n := 0
	for _, log := range r.logs {
		n += strings.Count(log, "found an interrupted refresh")
	}
	return n
}

// print prints the run's figures.
func (r *failoverRun) print(cl *Cluster) {
	reads, counters := r.reads, r.counters
	served, failed := 0, 0
	for i := 0; i < clusterNodes; i++ {
		served += reads.served[i]
		failed += reads.failed[i]
	}
	fmt.Printf("cluster: %d readers over %d nodes for %s, %d accounts (access tokens of %s, min_ttl %s)\n",
		clusterReaders, clusterNodes, r.runFor.Round(time.Millisecond), len(clusterAccounts), clusterTokenTTL, clusterMinTTL)
	fmt.Printf("cluster: refreshes %d (refresh_token grants that succeeded), password grants %d, refresh outcomes %v\n",
		counters.Grants["refresh_token"]["success"], counters.Grants["password"]["success"], counters.Grants["refresh_token"])
	fmt.Printf("cluster: refresh tokens used twice %d, replays after a lost answer %d, live refresh tokens %d (one per account: %d)\n",
		counters.RefreshTokensUsedTwice, counters.ReplaysAfterLostAnswer, counters.LiveRefreshTokens, len(clusterAccounts))
	fmt.Printf("cluster: failovers %d, nodes that were active: %s; plugin processes seen on standbys: %d\n", len(reads.failovers), strings.Join(r.active(), ", "), r.standbyPlugins)
	var perNode []string
	for i, n := range cl.Nodes {
		perNode = append(perNode, fmt.Sprintf("%s %d", n.ID, strings.Count(r.logs[i], "rotated refresh chain")))
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
	for i, n := range cl.Nodes {
		for _, line := range strings.Split(r.logs[i], "\n") {
			if strings.Contains(line, "interrupted refresh") || strings.Contains(line, "refresh chain is gone") {
				if len(line) > 400 {
					line = line[:400] + "..."
				}
				fmt.Printf("cluster: %s log: %s\n", n.ID, line)
			}
		}
	}
	fmt.Printf("cluster: chains lost in flight by a kill: %d (refreshes found interrupted by the new active node: %d), restarted with the kept password: %d; chains lost by the plugin: %d\n",
		r.lostByKills(), r.interrupted(), r.rebootstraps(), max(0, r.lostByKills()-r.interrupted()))
	fmt.Printf("cluster: %d plugin processes left running by the kills, ended by Stop: %v\n", len(r.orphans), r.orphans)
}
