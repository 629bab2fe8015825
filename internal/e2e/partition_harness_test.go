package e2e

// The harness of the namespaced cluster's tests (TestPartitionedLeader,
// TestSoak): a cluster whose nodes each run in a network namespace of their
// own against a fake Ermeo served over https on the host's service address,
// readers that note what they saw in the current "window" (a partition, a
// kill, ...), and the fake's requests sorted by the node that sent them.

import (
	"context"
	"errors"
	"fmt"
	"net"
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

// nsCluster is a namespaced cluster with the plugin configured against a
// fake Ermeo.
type nsCluster struct {
	*Cluster
	fake *fakeermeo.Server
	srv  *httptest.Server
	// caPEM is the fake's certificate, the plugin's ca_certificate.
	caPEM    string
	stopOnce sync.Once
}

// startNamespacedCluster skips unless a vault binary is at hand, without
// -short, and as root; then it starts a 3-node cluster with each node in a
// namespace of its own (Raft's fastest timeouts), a fake Ermeo on the host's
// service address over https, and writes config with the fake's
// certificate as ca_certificate. edit, if not nil, may change the options
// (PrepareNode, ...). Everything is stopped and removed at the end; on
// failure the cluster's directory is kept and each log's end printed.
func startNamespacedCluster(t *testing.T, fakeOpts fakeermeo.Options, edit func(*ClusterOptions)) *nsCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e namespaced cluster: skipped with -short")
	}
	bin, why := FindVault()
	if bin == "" {
		t.Skip("e2e namespaced cluster: " + why)
	}
	if os.Geteuid() != 0 {
		if os.Getenv("ERMEO_E2E_REQUIRED") != "" {
			t.Fatal("e2e namespaced cluster: required (ERMEO_E2E_REQUIRED is set), but network namespaces need root")
		}
		t.Skip("e2e namespaced cluster: network namespaces need root")
	}
	work, err := os.MkdirTemp("", "ermeo-nscluster-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("ERMEO_KEEP_CLUSTER") != "" {
			t.Logf("kept the cluster's directory (node logs in node*/vault.log): %s", work)
			return
		}
		os.RemoveAll(work)
	})
	pluginBin, sha, err := BuildPlugin(work, PluginVersion)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	opts := ClusterOptions{
		VaultBin: bin, PluginBin: pluginBin, PluginSHA: sha, PluginVersion: PluginVersion,
		WorkDir: work, Nodes: clusterNodes, LogLevel: "info",
		RaftPerformanceMultiplier: 1, Namespaced: true,
		Logf: func(format string, args ...any) {
			t.Logf("+%s "+format, append([]any{time.Since(started).Round(time.Millisecond)}, args...)...)
		},
	}
	if edit != nil {
		edit(&opts)
	}
	cl, err := StartCluster(opts)
	if err != nil {
		t.Fatalf("starting the namespaced cluster: %v", err)
	}
	nc := &nsCluster{Cluster: cl, fake: fakeermeo.New(fakeOpts)}
	if nc.srv, nc.caPEM, err = ServeTLS(cl.Net.HostIP, nc.fake); err != nil {
		cl.Stop()
		t.Fatalf("serving the fake Ermeo on %s: %v", cl.Net.HostIP, err)
	}
	t.Cleanup(func() {
		nc.stop()
		if t.Failed() {
			for _, n := range cl.Nodes {
				t.Logf("--- last lines of %s ---\n%s", n.LogPath, lastLines(n.Log(), 40))
			}
		}
	})
	fmt.Printf("nscluster: %s, %d nodes in namespaces %s..%s (service %s.0/24, cluster link per node), plugin enabled at %s/ in %s; fake Ermeo at %s\n",
		cl.Version, len(cl.Nodes), cl.Net.Nodes[0].NS, cl.Net.Nodes[len(cl.Nodes)-1].NS,
		strings.TrimSuffix(cl.Net.HostIP, ".1"), cl.Mount, time.Since(started).Round(time.Millisecond), nc.srv.URL)

	leader, err := cl.Leader()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Client(leader).Logical().Write(cl.Mount+"/config", map[string]any{
		"api_url": nc.srv.URL, "client_id": testClientID, "client_secret": testClientSecret,
		"ca_certificate": nc.caPEM,
	}); err != nil {
		t.Fatalf("writing config: %v", err)
	}
	return nc
}

// stop stops the cluster, removes its network, and then stops the fake
// (whose held answers are released first, so that Close does not wait on
// them).
func (nc *nsCluster) stop() {
	nc.stopOnce.Do(func() {
		nc.Cluster.Stop()
		nc.fake.ReleaseHeld()
		nc.srv.Close()
	})
}

// nodeOfRequest is the node that sent a request to the fake, by its source
// address, or -1.
func (nc *nsCluster) nodeOfRequest(r fakeermeo.TokenRequest) int {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return -1
	}
	return nc.Net.NodeOf(host)
}

// window is a stretch of a run (a partition, a kill, ...) in which the
// readers' failures are counted apart: on the node it is about, and on the
// others.
type window struct {
	node                 int
	start                time.Time
	end                  time.Time // zero while it lasts
	failedNode, failedOn int       // reads failed on node, on the other nodes
	servedNode, servedOn int
}

// nsReaders are readers spread over every node, each reading one account's
// creds in a loop and checking each token with the fake.
type nsReaders struct {
	mu            sync.Mutex
	served        []int
	failed        []int
	invalid       int
	invalidSample []string
	// expiredInTransit counts tokens that expired between the plugin's
	// answer and the reader's receipt (tokenVerdict), longestTransit the
	// longest such read.
	expiredInTransit int
	transitSample    []string
	longestTransit   time.Duration
	errorKinds       map[string]int
	cur              *window

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func startReaders(t *testing.T, nc *nsCluster, readers int, accounts []string) *nsReaders {
	t.Helper()
	rs := &nsReaders{served: make([]int, len(nc.Nodes)), failed: make([]int, len(nc.Nodes)), errorKinds: map[string]int{}, stop: make(chan struct{})}
	for r := 0; r < readers; r++ {
		node := r % len(nc.Nodes)
		account := accounts[(r/len(nc.Nodes))%len(accounts)]
		client, err := nc.NewClient(node)
		if err != nil {
			t.Fatal(err)
		}
		rs.wg.Add(1)
		go func() {
			defer rs.wg.Done()
			path := nc.Mount + "/creds/" + account
			for {
				select {
				case <-rs.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				sent := time.Now()
				s, err := client.Logical().ReadWithContext(ctx, path)
				got := time.Now()
				cancel()
				if err == nil && s == nil {
					err = errors.New("creds read returned nothing")
				}
				var tok string
				if err == nil {
					tok, _ = s.Data["access_token"].(string)
				}
				expires, issued := nc.fake.AccessTokenExpiresAt(tok)
				rs.note(node, account, err, tok, tokenVerdict(expires, issued, sent, got), got.Sub(sent))
				pause := 50 * time.Millisecond
				if err != nil {
					pause = 100 * time.Millisecond
				}
				select {
				case <-rs.stop:
					return
				case <-time.After(pause):
				}
			}
		}()
	}
	t.Cleanup(rs.Stop)
	return rs
}

// A reader's verdict on a token it got.
type verdict int

const (
	tokenValid verdict = iota
	// tokenExpiredInTransit: Ermeo no longer accepted it when the answer
	// came, but it had at least servedLifeFloor left when the read was
	// sent, so the plugin, whose clock is the fake's and which counts a
	// token's life from before Ermeo issued it, handed it out with at
	// least that much: Vault took longer than the token's life left to
	// deliver the answer (a creds read's lease is a Raft write, which a
	// log compaction can hold up for seconds).
	tokenExpiredInTransit
	tokenInvalid
)

// servedLifeFloor is the least life the plugin leaves a token it hands out:
// a token that could not be refreshed is served, with a warning, while it
// has at least this much left (serveStale).
const servedLifeFloor = time.Second

// tokenVerdict judges a token by when the fake stops accepting it (and
// whether the fake issued it at all) against when the read was sent and
// when its answer came, so that a reader's own delay in asking the fake
// does not count.
func tokenVerdict(expires time.Time, issued bool, sent, got time.Time) verdict {
	switch {
	case !issued:
		return tokenInvalid
	case !got.After(expires):
		return tokenValid
	case !expires.Before(sent.Add(servedLifeFloor)):
		return tokenExpiredInTransit
	default:
		return tokenInvalid
	}
}

func (rs *nsReaders) note(node int, account string, err error, tok string, v verdict, took time.Duration) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	w := rs.cur
	if err != nil {
		rs.failed[node]++
		where := "outside any fault window"
		if w != nil {
			if w.node < 0 {
				w.failedOn++
				where = "during an upstream fault"
			} else if node == w.node {
				w.failedNode++
				where = "on the node at fault"
			} else {
				w.failedOn++
				where = "on the other nodes, during a fault"
			}
		}
		rs.errorKinds[where+": "+errorKind(err)]++
		return
	}
	rs.served[node]++
	if w != nil {
		if node == w.node {
			w.servedNode++
		} else {
			w.servedOn++
		}
	}
	switch v {
	case tokenInvalid:
		rs.invalid++
		if len(rs.invalidSample) < 10 {
			rs.invalidSample = append(rs.invalidSample, fmt.Sprintf("node%d at %s: creds/%s returned, after %s, a token of %d chars that the fake does not accept",
				node+1, time.Now().UTC().Format("15:04:05.000"), account, took.Round(time.Millisecond), len(tok)))
		}
	case tokenExpiredInTransit:
		rs.expiredInTransit++
		rs.longestTransit = max(rs.longestTransit, took)
		if len(rs.transitSample) < 3 {
			rs.transitSample = append(rs.transitSample, fmt.Sprintf("node%d at %s: creds/%s after %s",
				node+1, time.Now().UTC().Format("15:04:05.000"), account, took.Round(time.Millisecond)))
		}
	}
}

// begin starts counting failures in a new window about node; end closes it.
func (rs *nsReaders) begin(node int) *window {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.cur = &window{node: node, start: time.Now()}
	return rs.cur
}

func (rs *nsReaders) end(w *window) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	w.end = time.Now()
	if rs.cur == w {
		rs.cur = nil
	}
}

// snapshot returns a copy of w, safe to read.
func (rs *nsReaders) snapshot(w *window) window {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return *w
}

// Stop stops the readers and waits for them.
func (rs *nsReaders) Stop() {
	rs.once.Do(func() { close(rs.stop) })
	rs.wg.Wait()
}

func (rs *nsReaders) totals() (served, failed int) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for i := range rs.served {
		served += rs.served[i]
		failed += rs.failed[i]
	}
	return served, failed
}

// printErrorKinds prints the readers' errors by kind, the most frequent first.
func (rs *nsReaders) printErrorKinds(prefix string) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	kinds := make([]string, 0, len(rs.errorKinds))
	for k := range rs.errorKinds {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(a, b int) bool { return rs.errorKinds[kinds[a]] > rs.errorKinds[kinds[b]] })
	for _, k := range kinds {
		fmt.Printf("%s  %6d × %s\n", prefix, rs.errorKinds[k], k)
	}
}

// writeAccounts writes the accounts with a kept password on the active node.
func writeAccounts(t *testing.T, nc *nsCluster, accounts []string, minTTL string) {
	t.Helper()
	leader, err := nc.Leader()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range accounts {
		if _, err := nc.Client(leader).Logical().Write(nc.Mount+"/accounts/"+name, map[string]any{
			"username": testUser, "password": testPassword, "min_ttl": minTTL, "store_password": true,
		}); err != nil {
			t.Fatalf("writing accounts/%s: %v", name, err)
		}
	}
}

// waitNewActive waits up to d for a node other than old to be active, and
// returns it and when it was seen, or -1.
func waitNewActive(nc *nsCluster, old int, d time.Duration) (int, time.Time) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, n := range nc.Nodes {
			if n.Index == old {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			active := nc.isActive(ctx, n)
			cancel()
			if active {
				return n.Index, time.Now()
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return -1, time.Time{}
}

// interruption is a stretch in which a node could not store what it got
// from Ermeo: cut off from the quorum (from the cut to the heal), its disk
// full (from the fill to the free), or its vault or plugin process killed
// (from and to: the kill).
type interruption struct {
	node     int
	from, to time.Time
	kind     string // "partition", "full disk", "kill", "plugin kill"
}

// interruptedAfter is how long after an answer's delivery a kill still
// explains that its pair was never stored: the pair's write takes
// milliseconds, seconds on a loaded machine.
const interruptedAfter = 10 * time.Second

// pairCommitWindow is how long before a partition an answer's delivery may
// come and its pair's Raft commit still be cut off, when the node's log
// shows the pair refused (refusedPairBetween).
const pairCommitWindow = 2 * time.Second

// refusedPairBetween reports whether the node's log says, between from and
// to, that storage refused a refreshed token pair.
func (n *Node) refusedPairBetween(from, to time.Time) bool {
	for _, line := range strings.Split(n.Log(), "\n") {
		if !strings.Contains(line, "storage refused a refreshed token pair") {
			continue
		}
		stamp, _, _ := strings.Cut(line, " ")
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if err == nil && !at.Before(from) && !at.After(to.Add(time.Second)) {
			return true
		}
	}
	return false
}

// chainAudit sorts the fake's record of refresh requests. A refresh token
// presented again after a refresh had consumed it is explained when that
// refresh's answer was dropped (the client could not know: it finds out),
// or delivered to a node that could not store the pair: cut off from the
// quorum when the answer came (then another node found out through the
// intent record), with its disk full when the answer came, or killed (vault
// or plugin) while the request was in flight or within interruptedAfter of
// its answer. Any other is a token
// used twice: the plugin sent a token whose successor it had.
type chainAudit struct {
	replays          int // presentations of a consumed token
	afterDropped     int // its answer was dropped
	afterCutOff      int // its answer reached a node cut off from the quorum
	afterKill        int // its answer reached a node killed before it could store the pair
	afterFullDisk    int // its answer reached a node whose disk was full (the pair then died in memory)
	usedTwice        int // none of these
	usedTwiceSamples []string
}

func auditChains(nc *nsCluster, reqs []fakeermeo.TokenRequest, ints []interruption) chainAudit {
	var a chainAudit
	consumedBy := map[string]fakeermeo.TokenRequest{}
	for _, r := range reqs {
		if r.GrantType != "refresh_token" || r.Presented == "" {
			continue
		}
		if !r.Replay {
			if r.Outcome == "success" {
				consumedBy[r.Presented] = r
			}
			continue
		}
		a.replays++
		by, ok := consumedBy[r.Presented]
		from, sender := nc.nodeOfRequest(by), nc.nodeOfRequest(r)
		why := ""
		if ok && !by.Delivered {
			why = "dropped"
		}
		for _, in := range ints {
			if !ok || why != "" || in.node != from {
				continue
			}
			during := !by.Ended.Before(in.from) && !by.Ended.After(in.to)
			switch in.kind {
			case "partition":
				// Delivered while cut off, or just before the cut while
				// the pair's Raft commit was still in flight, which the
				// node's log then shows refused (seen in a 30-minute soak:
				// delivered 73 ms before the cut, "storage refused a
				// refreshed token pair ... leadership lost" 0.5 s later).
				justBefore := by.Ended.Before(in.from) && in.from.Sub(by.Ended) < pairCommitWindow &&
					nc.Nodes[from].refusedPairBetween(by.Ended, in.to)
				if (during || justBefore) && sender != from {
					why = "cut off"
				}
			case "full disk":
				if during {
					why = "full disk"
				}
			default:
				// A second of slack before the request: the kill's time is
				// taken just before the signal, and a request already in
				// the dying process can reach the fake after it.
				if !in.from.Before(by.Received.Add(-time.Second)) && !in.from.After(by.Ended.Add(interruptedAfter)) && !in.from.After(r.Received) {
					why = "killed"
				}
			}
		}
		switch why {
		case "dropped":
			a.afterDropped++
		case "cut off":
			a.afterCutOff++
		case "killed":
			a.afterKill++
		case "full disk":
			a.afterFullDisk++
		default:
			a.usedTwice++
			if len(a.usedTwiceSamples) < 5 {
				a.usedTwiceSamples = append(a.usedTwiceSamples, fmt.Sprintf(
					"a token consumed at %s by node%d (answer delivered %v at %s) presented again at %s by node%d (%s)",
					by.Received.UTC().Format("15:04:05.000"), from+1, by.Delivered, by.Ended.UTC().Format("15:04:05.000"),
					r.Received.UTC().Format("15:04:05.000"), sender+1, r.Outcome))
			}
		}
	}
	return a
}

// lostByPluginInLogs counts the refreshes that found a chain gone with no
// intent record left by an earlier attempt (how=refused, where an answer
// lost with its intent record is how=lost_in_flight): the plugin believed the
// stored refresh token unspent, and Ermeo had consumed it. Every fault of these tests leaves an intent record behind when it
// interrupts a refresh, so each such line is a chain lost by the plugin.
func lostByPluginInLogs(nc *nsCluster) (int, []string) {
	n := 0
	var lines []string
	for _, node := range nc.Nodes {
		for _, line := range strings.Split(node.Log(), "\n") {
			if strings.Contains(line, "refresh chain is gone") && strings.Contains(line, "how=refused") {
				n++
				if len(lines) < 5 {
					lines = append(lines, node.ID+": "+line)
				}
			}
		}
	}
	return n, lines
}

// endCheck reads every account's creds on every node and its state on the
// active node: each must be usable with a token the fake accepts.
func endCheck(t *testing.T, nc *nsCluster, accounts []string) (unusable int) {
	t.Helper()
	leader, err := nc.Leader()
	if err != nil {
		t.Errorf("at the end: %v", err)
		return len(accounts)
	}
	for _, n := range nc.Nodes {
		for _, name := range accounts {
			// A read just after a fault may meet a refresh waiting out its
			// backoff; give each account a few seconds.
			deadline := time.Now().Add(20 * time.Second)
			var s *api.Secret
			var err error
			for {
				s, err = nc.Client(n.Index).Logical().Read(nc.Mount + "/creds/" + name)
				if err == nil && s != nil {
					if tok, _ := s.Data["access_token"].(string); nc.fake.AccessTokenValid(tok) {
						break
					}
					err = errors.New("a token the fake does not accept")
				}
				if time.Now().After(deadline) {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			if err != nil || s == nil {
				unusable++
				t.Errorf("at the end, creds/%s on %s: %v", name, n.ID, err)
			}
		}
	}
	for _, name := range accounts {
		s, err := nc.Client(leader).Logical().Read(nc.Mount + "/accounts/" + name)
		if err != nil || s == nil {
			t.Errorf("at the end, accounts/%s: %v", name, err)
			continue
		}
		if s.Data["state"] != "active" {
			t.Errorf("at the end, accounts/%s is %v (last_error %v)", name, s.Data["state"], s.Data["last_error"])
		}
	}
	return unusable
}

// stopAndCheck stops the cluster and checks that nothing it started is left:
// no vault, no plugin process, no namespace, link or bridge.
func stopAndCheck(t *testing.T, nc *nsCluster) {
	t.Helper()
	orphans := nc.Orphans()
	// Each start of a node unseals it once (see Cluster.unseal).
	for _, n := range nc.Nodes {
		log := n.Log()
		if starts, unseals := strings.Count(log, "==== "), strings.Count(log, "core: vault is unsealed"); unseals > starts {
			t.Errorf("%s was unsealed %d times in %d starts: Vault then runs a standby loop per unseal", n.ID, unseals, starts)
		}
	}
	nc.stop()
	for _, n := range nc.Nodes {
		if n.Running() {
			t.Errorf("%s still runs after Stop", n.ID)
		}
	}
	for _, pid := range orphans {
		if isPluginProcess(pid) {
			t.Errorf("plugin process %d still runs after Stop", pid)
		}
	}
	for _, p := range nc.LeftInNamespaces {
		t.Errorf("a process the harness did not know of was still in a namespace after Stop: %s", p)
	}
	if left := nc.Net.Leftovers(); len(left) > 0 {
		t.Errorf("left on the machine after Stop: %v", left)
	}
	fmt.Printf("nscluster: stopped; %d plugin processes left by kills were ended by Stop; namespaces, links and bridges of %s removed\n", len(orphans), nc.Net.ID)
}

// pluginLogKinds returns the plugin's warnings and errors that node logged
// between from and to, each message (without its fields) with its count.
func pluginLogKinds(n *Node, from, to time.Time) []string {
	counts := map[string]int{}
	var order []string
	for _, line := range strings.Split(n.Log(), "\n") {
		if len(line) < 24 || !strings.Contains(line, "secrets.vault-plugin-secrets-ermeo") ||
			!(strings.Contains(line, "[WARN]") || strings.Contains(line, "[ERROR]")) {
			continue
		}
		at, err := time.Parse("2006-01-02T15:04:05.000Z", line[:24])
		if err != nil || at.Before(from.Add(-time.Millisecond)) || at.After(to) {
			continue
		}
		msg := line[strings.LastIndex(line, "vault-plugin-secrets-ermeo: ")+len("vault-plugin-secrets-ermeo: "):]
		if i := strings.Index(msg, ": account="); i >= 0 {
			msg = msg[:i]
		} else if i := strings.Index(msg, ": "); i >= 0 {
			msg = msg[:i]
		}
		if counts[msg] == 0 {
			order = append(order, msg)
		}
		counts[msg]++
	}
	var out []string
	for _, msg := range order {
		out = append(out, fmt.Sprintf("%d × %q", counts[msg], msg))
	}
	return out
}

// transitNote explains the tokens that expired in transit, or is "".
func (rs *nsReaders) transitNote() string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.expiredInTransit == 0 {
		return ""
	}
	return fmt.Sprintf("   (valid for at least %s when the read was sent, expired when its answer came: the longest such read took %s; %s)",
		servedLifeFloor, rs.longestTransit.Round(time.Millisecond), strings.Join(rs.transitSample, "; "))
}
