package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"
)

// ClusterOptions say how to start a Vault cluster with integrated storage
// (Raft) on 127.0.0.1, or with each node in a network namespace of its own
// (Namespaced).
type ClusterOptions struct {
	// VaultBin is the vault binary (see FindVault).
	VaultBin string
	// PluginBin is the plugin binary (see BuildPlugin). Each node gets its
	// own plugin directory holding a copy of it, as in a real cluster where
	// every node loads the plugin from its own disk.
	PluginBin string
	// PluginSHA and PluginVersion are what the plugin is registered with.
	PluginSHA     string
	PluginVersion string
	// Mount is where the plugin is enabled; default "ermeo". "-" enables
	// nothing (and then nothing is registered either).
	Mount string
	// WorkDir holds one directory per node (config, Raft data, plugin
	// directory, log) and init.json: the unseal key and the root token. It
	// must exist; the cluster never removes it.
	WorkDir string
	// Nodes is the number of nodes; default 3.
	Nodes int
	// LogLevel of each node; default "debug".
	LogLevel string
	// RaftPerformanceMultiplier scales Raft's timeouts (election, heartbeat);
	// 0 leaves Vault's default (5). 1 is the fastest failover Vault offers.
	RaftPerformanceMultiplier int
	// ServerStabilizationTime is autopilot's wait before a new node becomes
	// a voter; 0 means 3s (Vault's default is 10s).
	ServerStabilizationTime time.Duration
	// Telemetry gives every node the telemetry stanza `vault server -dev`
	// has (Prometheus retention, no hostname prefix), so that
	// sys/metrics?format=prometheus answers with the same names as on a
	// dev server (internal/bench reads Vault's storage counters there).
	Telemetry bool
	// Namespaced puts each node in a network namespace of its own, created
	// for this cluster and removed by Stop (netns.go: Network): api_addr on
	// a "service" link, which the test process and the nodes reach, and
	// cluster_addr on a "cluster" link, which Partition cuts. A test server
	// the nodes must reach listens on Cluster.Net.HostIP (ServeTLS). Linux,
	// as root.
	Namespaced bool
	// PrepareNode, if set, is called for each node after its directory
	// (with raft/ and plugins/ in it) and config are written and before its
	// vault server first starts: a test can mount a small disk on
	// <n.Dir>/raft there. An error stops the start-up.
	PrepareNode func(n *Node) error
	// Timeout bounds the start-up; default 2 minutes.
	Timeout time.Duration
	// Logf, if set, is told each step and each change in what keeps the
	// cluster from being healthy.
	Logf func(format string, args ...any)
}

// Cluster is a set of vault server processes that this package started, each
// with its own directory, ports and plugin directory, joined into one Raft
// cluster through retry_join and unsealed with Shamir keys.
type Cluster struct {
	Nodes     []*Node
	RootToken string
	UnsealKey string
	Version   string
	WorkDir   string
	Mount     string
	// Net is the nodes' namespaces, links and bridges (Namespaced), or nil.
	Net *Network
	// LeftInNamespaces lists the processes that Stop found still in a
	// node's namespace once every vault it started had ended and every
	// orphan it knew of was ended (Stop then ended them too): none, when
	// the harness keeps track of everything it starts.
	LeftInNamespaces []string

	opts ClusterOptions
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

// Node is one vault server of a Cluster.
type Node struct {
	Index       int
	ID          string // Raft node_id, "node1".."nodeN"
	Dir         string
	ConfigPath  string
	LogPath     string
	PluginDir   string
	APIPort     int
	ClusterPort int
	// Addr is the node's VAULT_ADDR, http://127.0.0.1:<api port>, or
	// http://<service address>:8200 in a namespace of its own.
	Addr string
	// IP is the address its API listens on (127.0.0.1, or its service
	// address), ClusterIP the one its cluster port listens on.
	IP, ClusterIP string
	// NS is the node's network namespace (Namespaced), or "".
	NS string

	client *api.Client

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	// orphans are plugin processes left behind by a Kill: a vault server
	// killed with SIGKILL cannot stop its plugin children, which are
	// re-parented and keep running. They are ended by Stop.
	orphans []int
}

// initResult is what `operator init` returned, kept in WorkDir/init.json.
type initResult struct {
	UnsealKeys []string `json:"unseal_keys_b64"`
	RootToken  string   `json:"root_token"`
}

// StartCluster starts the nodes, initialises the first one with one Shamir
// key share, unseals it, unseals the others (which join it through
// retry_join), waits until every node is a healthy Raft voter, then registers
// the plugin by sha256 with its version and enables it once at opts.Mount.
// On error every process started so far is stopped.
func StartCluster(opts ClusterOptions) (*Cluster, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "debug"
	}
	if opts.Mount == "" {
		opts.Mount = "ermeo"
	}
	if opts.ServerStabilizationTime == 0 {
		opts.ServerStabilizationTime = 3 * time.Second
	}
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.WorkDir == "" {
		return nil, errors.New("ClusterOptions.WorkDir is required")
	}
	version, err := VaultVersion(opts.VaultBin)
	if err != nil {
		return nil, fmt.Errorf("vault version: %w", err)
	}
	c := &Cluster{Version: version, WorkDir: opts.WorkDir, Mount: opts.Mount, opts: opts}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()
	if opts.Namespaced {
		if c.Net, err = NewNetwork(opts.Nodes); err != nil {
			return nil, err
		}
		c.logf("network %s: cluster bridge %s, service bridge %s (host %s), namespaces %s..%s",
			c.Net.ID, c.Net.ClusterBridge, c.Net.ServiceBridge, c.Net.HostIP, c.Net.Nodes[0].NS, c.Net.Nodes[opts.Nodes-1].NS)
	}

	// Addresses first, so that each node's retry_join can name the others.
	for i := 0; i < opts.Nodes; i++ {
		n := &Node{
			Index: i, ID: fmt.Sprintf("node%d", i+1),
			Dir: filepath.Join(opts.WorkDir, fmt.Sprintf("node%d", i+1)),
			IP:  "127.0.0.1", ClusterIP: "127.0.0.1",
			// Each namespace has its own addresses: Vault's usual ports.
			APIPort: 8200, ClusterPort: 8201,
		}
		if c.Net != nil {
			n.IP, n.ClusterIP, n.NS = c.Net.Nodes[i].ServiceIP, c.Net.Nodes[i].ClusterIP, c.Net.Nodes[i].NS
		} else {
			if n.APIPort, err = FreePort(); err != nil {
				return nil, err
			}
			if n.ClusterPort, err = FreePort(); err != nil {
				return nil, err
			}
		}
		n.Addr = fmt.Sprintf("http://%s:%d", n.IP, n.APIPort)
		n.ConfigPath = filepath.Join(n.Dir, "vault.hcl")
		n.LogPath = filepath.Join(n.Dir, "vault.log")
		n.PluginDir = filepath.Join(n.Dir, "plugins")
		if n.client, err = newNodeClient(n.Addr, ""); err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		if err := c.prepare(n); err != nil {
			return nil, err
		}
		if opts.PrepareNode != nil {
			if err := opts.PrepareNode(n); err != nil {
				return nil, fmt.Errorf("preparing %s: %w", n.ID, err)
			}
		}
	}
	for _, n := range c.Nodes {
		if err := c.startProcess(n); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	for _, n := range c.Nodes {
		if err := n.waitAnswering(ctx); err != nil {
			return nil, c.withLog(n, err)
		}
	}
	c.logf("%d vault servers answering; initialising %s", len(c.Nodes), c.Nodes[0].ID)

	first := c.Nodes[0]
	initResp, err := first.client.Sys().InitWithContext(ctx, &api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		return nil, c.withLog(first, fmt.Errorf("operator init: %w", err))
	}
	c.UnsealKey = initResp.KeysB64[0]
	c.RootToken = initResp.RootToken
	saved, _ := json.MarshalIndent(initResult{UnsealKeys: initResp.KeysB64, RootToken: initResp.RootToken}, "", "  ")
	if err := os.WriteFile(filepath.Join(opts.WorkDir, "init.json"), saved, 0o600); err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		n.client.SetToken(c.RootToken)
	}
	if err := c.unseal(ctx, first); err != nil {
		return nil, err
	}
	if err := c.waitActive(ctx, first); err != nil {
		return nil, err
	}
	c.logf("%s unsealed and active; unsealing the others, which join it", first.ID)
	// New nodes become voters once they have been healthy this long.
	_, err = first.client.Logical().WriteWithContext(ctx, "sys/storage/raft/autopilot/configuration", map[string]any{
		"server_stabilization_time": opts.ServerStabilizationTime.String(),
	})
	if err != nil {
		return nil, fmt.Errorf("autopilot configuration: %w", err)
	}
	for _, n := range c.Nodes[1:] {
		if err := c.unseal(ctx, n); err != nil {
			return nil, err
		}
	}
	if err := c.WaitHealthy(ctx); err != nil {
		return nil, err
	}
	if opts.Mount != "-" {
		if err := c.registerAndMount(ctx); err != nil {
			return nil, err
		}
		c.logf("plugin %s %s registered by sha256 and enabled at %s/", PluginName, opts.PluginVersion, opts.Mount)
	}
	ok = true
	return c, nil
}

// prepare writes the node's config and copies the plugin into its own
// plugin directory.
func (c *Cluster) prepare(n *Node) error {
	if err := os.MkdirAll(filepath.Join(n.Dir, "raft"), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(n.PluginDir, 0o755); err != nil {
		return err
	}
	if c.opts.PluginBin != "" {
		if err := copyFile(c.opts.PluginBin, filepath.Join(n.PluginDir, PluginName), 0o755); err != nil {
			return fmt.Errorf("copying the plugin to %s: %w", n.PluginDir, err)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "storage \"raft\" {\n  path    = %q\n  node_id = %q\n", filepath.Join(n.Dir, "raft"), n.ID)
	if c.opts.RaftPerformanceMultiplier > 0 {
		fmt.Fprintf(&b, "  performance_multiplier = %d\n", c.opts.RaftPerformanceMultiplier)
	}
	for _, o := range c.Nodes {
		if o != n {
			fmt.Fprintf(&b, "  retry_join {\n    leader_api_addr = %q\n  }\n", o.Addr)
		}
	}
	b.WriteString("}\n\n")
	fmt.Fprintf(&b, "listener \"tcp\" {\n  address         = \"%s:%d\"\n  cluster_address = \"%s:%d\"\n  tls_disable     = true\n}\n\n", n.IP, n.APIPort, n.ClusterIP, n.ClusterPort)
	// The cluster port always speaks Vault's own TLS, hence https.
	fmt.Fprintf(&b, "api_addr         = %q\ncluster_addr     = \"https://%s:%d\"\n", n.Addr, n.ClusterIP, n.ClusterPort)
	fmt.Fprintf(&b, "cluster_name     = \"ermeo-e2e\"\ndisable_mlock    = true\nplugin_directory = %q\nui               = false\n", n.PluginDir)
	if c.opts.Telemetry {
		b.WriteString("\ntelemetry {\n  prometheus_retention_time = \"24h\"\n  disable_hostname          = true\n}\n")
	}
	return os.WriteFile(n.ConfigPath, []byte(b.String()), 0o600)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// newNodeClient is a client of one node that never retries by itself (so
// that the tests count every failure) and keeps enough idle connections for
// many concurrent readers.
func newNodeClient(addr, token string) (*api.Client, error) {
	conf := api.DefaultConfig()
	conf.Address = addr
	conf.MaxRetries = 0
	conf.Timeout = 15 * time.Second
	if t, ok := conf.HttpClient.Transport.(*http.Transport); ok {
		t.MaxIdleConnsPerHost = 64
	}
	client, err := api.NewClient(conf)
	if err != nil {
		return nil, err
	}
	client.SetToken(token)
	return client, nil
}

// startProcess starts the node's vault server; its output is appended to
// the node's log, so that a restarted node's log holds every run.
func (c *Cluster) startProcess(n *Node) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		select {
		case <-n.done:
		default:
			return fmt.Errorf("%s is already running", n.ID)
		}
	}
	logFile, err := os.OpenFile(n.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logFile, "==== %s: starting %s (%s) ====\n", time.Now().Format(time.RFC3339Nano), n.ID, n.Addr)
	args := []string{"server", "-config=" + n.ConfigPath, "-log-level=" + c.opts.LogLevel}
	cmd := exec.Command(c.opts.VaultBin, args...)
	if c.Net != nil {
		// ip netns exec enters the namespace and executes vault in its own
		// process: cmd's pid is vault's.
		cmd = c.Net.Command(n.Index, c.opts.VaultBin, args...)
	}
	cmd.Dir = n.Dir
	cmd.Env = append(cleanEnv(), "HOME="+n.Dir)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C in the terminal reaches only the
	// program that started the cluster, which then stops each node itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(done)
	}()
	n.cmd, n.done = cmd, done
	return nil
}

// Running reports whether the node's vault process is running.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Pid is the node's vault server process id, or 0 if it is not running.
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	select {
	case <-n.done:
		return 0
	default:
		return n.cmd.Process.Pid
	}
}

// Log returns the node's log so far.
func (n *Node) Log() string {
	b, _ := os.ReadFile(n.LogPath)
	return string(b)
}

// PluginPids returns the plugin processes whose parent is this node's vault
// server.
func (n *Node) PluginPids() []int {
	n.mu.Lock()
	cmd := n.cmd
	n.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	pids, _ := (&Vault{cmd: cmd}).PluginPids()
	return pids
}

func (c *Cluster) withLog(n *Node, err error) error {
	return fmt.Errorf("%s: %w\n--- last lines of %s ---\n%s", n.ID, err, n.LogPath, lastLines(n.Log(), 40))
}

// waitAnswering waits until the node's HTTP API answers (sealed or not).
func (n *Node) waitAnswering(ctx context.Context) error {
	for {
		if !n.Running() {
			return errors.New("vault exited during start-up")
		}
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := n.client.Sys().HealthWithContext(hctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vault did not answer in time: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// unseal gives the node the unseal key and waits until it reports
// unsealed. A node that is joining the cluster keeps the key until
// retry_join has reached the leader and answers "sealed" meanwhile; the key
// is given again only if the last attempt got no answer, or after a long
// wait. Giving it twice to a joining node makes Vault (1.21.1) unseal it
// twice and run two standby loops, both reading Raft's leadership
// notifications: once that node is active, the stale loop can take the
// "leadership lost" notification, and the node's core stays active long
// after Raft stepped it down (seen as an isolated leader that never stepped
// down, and never rejoined as a standby after the heal).
func (c *Cluster) unseal(ctx context.Context, n *Node) error {
	var last error
	var given time.Time // when the key was last given and Vault answered
	for {
		if !n.Running() {
			return c.withLog(n, errors.New("vault exited while being unsealed"))
		}
		uctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var st *api.SealStatusResponse
		var err error
		if given.IsZero() || time.Since(given) > unsealRetryAfter {
			if st, err = n.client.Sys().UnsealWithContext(uctx, c.UnsealKey); err == nil {
				given = time.Now()
			}
		} else {
			st, err = n.client.Sys().SealStatusWithContext(uctx)
		}
		cancel()
		if err == nil && !st.Sealed {
			return nil
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("still sealed (progress %d/%d)", st.Progress, st.T)
		}
		select {
		case <-ctx.Done():
			return c.withLog(n, fmt.Errorf("unseal: %v", last))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// unsealRetryAfter is how long unseal waits for a node that took the key
// before it gives the key again.
const unsealRetryAfter = 30 * time.Second

// waitActive waits until node n is the active node.
func (c *Cluster) waitActive(ctx context.Context, n *Node) error {
	for {
		if c.isActive(ctx, n) {
			return nil
		}
		select {
		case <-ctx.Done():
			return c.withLog(n, errors.New("did not become active in time"))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) isActive(ctx context.Context, n *Node) bool {
	if !n.Running() {
		return false
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	h, err := n.client.Sys().HealthWithContext(hctx)
	return err == nil && h.Initialized && !h.Sealed && !h.Standby && !h.PerformanceStandby
}

// WaitHealthy waits until every node is running and unsealed, every node is
// a Raft voter that the leader has heard from lately, every standby follows
// the active node, and every standby has applied the Raft log up to where
// the leader had committed it when the check began: the state in which
// losing any one node, the active one included, keeps a quorum that can
// elect a leader with the whole log.
//
// Autopilot's own "healthy" is not used: it also wants each follower's last
// index, as reported every few seconds, within max_trailing_logs (1000) of
// the leader's, which a cluster writing a lease per read never shows.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	start := time.Now()
	last := "?"
	var target uint64 // the leader's commit index when the check began
	for {
		problem := c.healthProblem(ctx, &target)
		// Told once per kind of problem, not at each new index or duration.
		if numbers.ReplaceAllString(problem, "#") != numbers.ReplaceAllString(last, "#") {
			if problem == "" {
				c.logf("cluster healthy (after %s)", time.Since(start).Round(time.Millisecond))
			} else {
				c.logf("waiting for the cluster: %s", problem)
			}
			last = problem
		}
		if problem == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not healthy in time: %s", last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

var numbers = regexp.MustCompile(`[0-9.]+(ms|s)?`)

func (c *Cluster) healthProblem(ctx context.Context, target *uint64) string {
	for _, n := range c.Nodes {
		if !n.Running() {
			return n.ID + " is not running"
		}
	}
	leader, err := c.LeaderContext(ctx)
	if err != nil {
		return err.Error()
	}
	active := c.Nodes[leader]
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := active.client.Sys().RaftAutopilotStateWithContext(sctx)
	if err != nil {
		return "autopilot state: " + err.Error()
	}
	if st == nil {
		return "autopilot state: none"
	}
	if len(st.Voters) != len(c.Nodes) {
		return fmt.Sprintf("voters %v, non-voters %v", st.Voters, st.NonVoters)
	}
	for _, s := range st.Servers {
		if s.NodeStatus != "alive" {
			return fmt.Sprintf("%s is %s", s.ID, s.NodeStatus)
		}
		if d, err := time.ParseDuration(s.LastContact); err == nil && d > 5*time.Second {
			return fmt.Sprintf("the leader last heard from %s %s ago", s.ID, s.LastContact)
		}
	}
	ldr, err := active.client.Sys().LeaderWithContext(sctx)
	if err != nil {
		return "sys/leader of " + active.ID + ": " + err.Error()
	}
	if *target == 0 {
		*target = ldr.RaftCommittedIndex
	}
	for _, n := range c.Nodes {
		if n == active {
			continue
		}
		h, err := n.client.Sys().HealthWithContext(sctx)
		if err != nil {
			return "health of " + n.ID + ": " + err.Error()
		}
		if h.Sealed {
			return n.ID + " is sealed"
		}
		l, err := n.client.Sys().LeaderWithContext(sctx)
		if err != nil {
			return "sys/leader of " + n.ID + ": " + err.Error()
		}
		if l.LeaderAddress != active.Addr {
			return fmt.Sprintf("%s follows %q, not the active %s", n.ID, l.LeaderAddress, active.ID)
		}
		if l.RaftAppliedIndex < *target {
			return fmt.Sprintf("%s has applied the Raft log to %d, the leader had committed %d", n.ID, l.RaftAppliedIndex, *target)
		}
	}
	return ""
}

// Leader returns the index of the active node.
func (c *Cluster) Leader() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.LeaderContext(ctx)
}

// LeaderContext returns the index of the active node: the one whose
// sys/health says initialized, unsealed and not a standby.
func (c *Cluster) LeaderContext(ctx context.Context) (int, error) {
	for _, n := range c.Nodes {
		if c.isActive(ctx, n) {
			return n.Index, nil
		}
	}
	return -1, errors.New("no active node")
}

// Client returns a client of node i, with the root token. It is shared:
// use NewClient for a client of one's own.
func (c *Cluster) Client(i int) *api.Client { return c.Nodes[i].client }

// Vault returns node i's running vault server as a *Vault, for code written
// against StartDev's server (internal/bench): its address, the root token, a
// client of its own (no timeout of its own beyond the API's default, unlike
// Client's), the version, pid, plugin processes and log. It is bound to the
// process running now: after a Restart, call it again. Stop the node with
// the Cluster's Stop, which also ends the plugin processes it left behind.
func (c *Cluster) Vault(i int) (*Vault, error) {
	n := c.Nodes[i]
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if !n.Running() {
		return nil, fmt.Errorf("%s is not running", n.ID)
	}
	conf := api.DefaultConfig()
	conf.Address = n.Addr
	conf.MaxRetries = 0
	client, err := api.NewClient(conf)
	if err != nil {
		return nil, err
	}
	client.SetToken(c.RootToken)
	return &Vault{Addr: n.Addr, Token: c.RootToken, Version: c.Version, Client: client, LogPath: n.LogPath, cmd: cmd, done: done}, nil
}

// NewClient returns a new client of node i, with the root token.
func (c *Cluster) NewClient(i int) (*api.Client, error) {
	return newNodeClient(c.Nodes[i].Addr, c.RootToken)
}

func (c *Cluster) registerAndMount(ctx context.Context) error {
	leader, err := c.LeaderContext(ctx)
	if err != nil {
		return err
	}
	client := c.Nodes[leader].client
	err = client.Sys().RegisterPluginWithContext(ctx, &api.RegisterPluginInput{
		Name:    PluginName,
		Type:    api.PluginTypeSecrets,
		Command: PluginName,
		SHA256:  c.opts.PluginSHA,
		Version: c.opts.PluginVersion,
	})
	if err != nil {
		return fmt.Errorf("registering the plugin: %w", err)
	}
	err = client.Sys().MountWithContext(ctx, c.opts.Mount, &api.MountInput{
		Type:   PluginName,
		Config: api.MountConfigInput{PluginVersion: c.opts.PluginVersion},
	})
	if err != nil {
		return fmt.Errorf("enabling the plugin at %s: %w", c.opts.Mount, err)
	}
	return nil
}

// Kill ends node i's vault server with SIGKILL, as a crash of the vault
// process would, and waits for it. Its plugin processes, which a killed vault
// cannot stop, are re-parented and keep running, as they would after such a
// crash; they are noted (listed just before the kill) and ended by Stop.
func (c *Cluster) Kill(i int) error {
	n := c.Nodes[i]
	if !n.Running() {
		return fmt.Errorf("%s is not running", n.ID)
	}
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	plugins := n.PluginPids()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-done
	n.mu.Lock()
	n.orphans = append(n.orphans, plugins...)
	n.mu.Unlock()
	return nil
}

// Crash is Kill followed by SIGKILL of the node's plugin processes: what a
// crash of the whole machine does.
func (c *Cluster) Crash(i int) error {
	if err := c.Kill(i); err != nil {
		return err
	}
	c.Nodes[i].killOrphans()
	if c.Net != nil {
		// With its vault dead, a plugin process in the node's namespace is
		// an orphan of it, listed before the kill or not.
		for _, pid := range c.Net.Pids(i) {
			killPluginProcess(pid)
		}
	}
	return nil
}

// killOrphans ends the plugin processes that a kill of this node's vault left
// behind, by pid.
func (n *Node) killOrphans() {
	n.mu.Lock()
	orphans := n.orphans
	n.orphans = nil
	n.mu.Unlock()
	for _, pid := range orphans {
		killPluginProcess(pid)
	}
}

// Restart starts node i again with the same config and data directory, and
// unseals it; it rejoins the cluster from its Raft data.
func (c *Cluster) Restart(i int) error {
	n := c.Nodes[i]
	if err := c.startProcess(n); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := n.waitAnswering(ctx); err != nil {
		return c.withLog(n, err)
	}
	return c.unseal(ctx, n)
}

// Stop ends every vault server of the cluster (SIGTERM, then SIGKILL after
// 15 s) and then every plugin process they left behind, each by its pid.
// A namespaced cluster's links are healed first (a node cut off from the
// others may otherwise take long to stop), and its network is removed last,
// with whatever process was still in a namespace of it.
func (c *Cluster) Stop() {
	if c == nil {
		return
	}
	if c.Net != nil {
		for i := range c.Net.Nodes {
			if c.Net.CutState(i) != "" {
				_ = c.Net.Heal(i)
			}
		}
	}
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Add(1)
		go func(n *Node) {
			defer wg.Done()
			n.stop()
			checkLockOrder(n.LogPath)
		}(n)
	}
	wg.Wait()
	if c.Net != nil {
		for i := range c.Net.Nodes {
			for _, pid := range c.Net.Pids(i) {
				p, _ := ReadProcess(pid)
				what := fmt.Sprintf("node%d: pid %d (%s, state %s)", i+1, pid, p.Comm, p.State)
				c.LeftInNamespaces = append(c.LeftInNamespaces, what)
				c.logf("a namespace still holds a process after Stop, ending it: %s", what)
			}
		}
		c.Net.Remove()
	}
}

// Partition cuts node i off from the other nodes' Raft and request
// forwarding (its cluster link down at both ends); its API and its way to
// Net.HostIP stay, so its plugin can still reach a fake Ermeo there. With
// full, its service link goes down too. Namespaced clusters only.
func (c *Cluster) Partition(i int, full bool) error {
	if c.Net == nil {
		return errors.New("Partition needs a namespaced cluster (ClusterOptions.Namespaced)")
	}
	return c.Net.Cut(i, full)
}

// Heal brings node i's links up again after a Partition.
func (c *Cluster) Heal(i int) error {
	if c.Net == nil {
		return errors.New("Heal needs a namespaced cluster (ClusterOptions.Namespaced)")
	}
	return c.Net.Heal(i)
}

func (n *Node) stop() {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		select {
		case <-done:
		default:
			plugins := n.PluginPids()
			n.mu.Lock()
			n.orphans = append(n.orphans, plugins...)
			n.mu.Unlock()
			StopProcess(cmd.Process, done, 15*time.Second)
		}
	}
	n.killOrphans()
}

// killPluginProcess sends SIGKILL to pid if it still is a process of ours
// named like the plugin (so that a pid reused since is left alone), and
// waits briefly for it to go.
func killPluginProcess(pid int) {
	if !isPluginProcess(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 50 && isPluginProcess(pid); i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// isPluginProcess reports whether pid is a running process named like the
// plugin (a zombie is not running: it is dead, waiting for its new parent).
func isPluginProcess(pid int) bool {
	p, err := ReadProcess(pid)
	return err == nil && p.State != "Z" && p.namedLikePlugin()
}

// Orphans returns the plugin processes left behind by Kill that are still
// running; in a namespaced cluster, also any plugin process in a node's
// namespace whose parent is not the node's running vault.
func (c *Cluster) Orphans() []int {
	var pids []int
	seen := map[int]bool{}
	for _, n := range c.Nodes {
		n.mu.Lock()
		for _, pid := range n.orphans {
			if isPluginProcess(pid) && !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
		n.mu.Unlock()
		if c.Net == nil {
			continue
		}
		vaultPid := n.Pid()
		for _, pid := range c.Net.Pids(n.Index) {
			p, err := ReadProcess(pid)
			if err == nil && p.State != "Z" && p.namedLikePlugin() && (vaultPid == 0 || p.PPid != vaultPid) && !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
