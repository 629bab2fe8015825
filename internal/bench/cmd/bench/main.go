// Command bench measures the Ermeo plugin in a real Vault server and prints
// one table (issues 6 and 13). It starts one Vault server on 127.0.0.1 with
// the Ermeo plugin and the null plugin (internal/bench/nullplugin), the
// built-in KV v2 engine for context, and the fake Ermeo in-process. The
// server is, by default, a single-node Raft server (integrated storage, as in
// production: file storage in a temporary directory, initialised and unsealed
// by the bench); with -storage dev it is `vault server -dev` (in-memory
// storage). Then it measures:
//
//  1. the read path: creds reads at 1, 8 and 64 workers sharing one HTTP
//     client, against the null plugin in the same mode (lease, lease-free),
//     with the storage writes per read and Vault's memory growth;
//  2. coalescing: 1,000 readers at the moment the token needs a refresh;
//  3. the refresh path: a read that refreshes against a bare RefreshGrant,
//     with the fake answering at once and after 50 ms;
//  4. scale: 1, 1,000 and 10,000 accounts (creation, RSS, start-up, read
//     p50, CPU of a periodic tick);
//  5. Vault Proxy: a real `vault proxy` with examples/proxy/proxy.hcl,
//     throughput at 1, 8 and 64 readers beside the direct leased read, and
//     issue 13's goal: 50 readers over three lifetimes of 12 s tokens, the
//     plugin reads and leases per token generation (from an audit device)
//     and the life the tokens had left at the fake;
//
// and at the end counts the leases the run left live.
//
// Progress goes to stderr, the table to stdout. Everything it started is
// stopped on exit, Ctrl-C included. Run it with `make bench` or
// `go run ./internal/bench/cmd/bench -duration 3s`. Flags: -duration,
// -scale (e.g. 1,1000 to skip 10,000), -tick-window (0 skips the 2-minute idle
// window), -readers, -writers, -steps (read,coalescing,refresh,scale,proxy),
// -storage (raft or dev) and -profile DIR (Vault CPU profiles of 64-client
// creds reads). The default run takes about 6 minutes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/bench"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/e2e"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

var (
	flagDuration = flag.Duration("duration", 5*time.Second, "length of each timed run (read path, refresh path, scale reads)")
	flagScale    = flag.String("scale", "1,1000,10000", "account counts of the scale step, ascending")
	flagTick     = flag.Duration("tick-window", 125*time.Second, "idle window, at the largest account count, over which the plugin's CPU is measured; it must span at least two of Vault's 60 s periodic ticks (0 skips it)")
	flagReaders  = flag.Int("readers", 1000, "concurrent readers at expiry (coalescing)")
	flagWriters  = flag.Int("writers", 32, "concurrent account writers (scale)")
	flagProfile  = flag.String("profile", "", "if set, a directory where Vault CPU profiles (pprof) of 64-client creds reads are written")
	flagSteps    = flag.String("steps", "read,coalescing,refresh,scale,proxy", "the measurements to run")
	flagStorage  = flag.String("storage", "raft", "Vault's storage: raft (a single-node Raft server, file storage in a temporary directory, as in production) or dev (vault server -dev, in memory)")
)

// version is the version both plugins are built, registered and mounted with.
const version = "v0.1.0-bench"

func main() {
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		if ctx.Err() != nil {
			err = errors.New("interrupted; stopped everything it started")
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

// env is the running set-up.
type env struct {
	v         *e2e.Vault
	stop      func() // stops the server v is, once started
	storage   string // what the server stores in, for the table's header
	pluginDir string
	long      *fakeermeo.Server // 2 h tokens: ermeo/ and scale/
	short     *fakeermeo.Server // 12 s tokens: ermeo-short/ (coalescing, refresh path)
	shortURL  string
	leaseFree bool   // the plugin knows the account option lease=false
	work      string // the run's temporary directory
	vaultBin  string
	// direct is the read path's leased ermeo/creds/app rows, by workers,
	// which the proxy step prints beside its own.
	direct     map[int]bench.Result
	directFrom string // what the direct rows are, for the proxy's table

	table   bench.Table
	targets [][]string
	notes   []string
	started time.Time
	load    string // /proc/loadavg before the run: what other processes put on the machine
}

func run(ctx context.Context) error {
	e := &env{started: time.Now(), direct: map[int]bench.Result{}}
	if load, err := e2e.LoadAverage(); err == nil {
		e.load = load
	}
	vaultBin, err := findVault(ctx)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "ermeo-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	e.work, e.vaultBin = work, vaultBin
	defer e.stopVault()
	sha, nullSHA, err := e.startVault(vaultBin, work)
	if err != nil {
		return err
	}

	e.long = fakeermeo.New(fakeermeo.Options{})
	longSrv := httptest.NewServer(e.long)
	defer longSrv.Close()
	e.short = fakeermeo.New(fakeermeo.Options{AccessTokenTTL: 12 * time.Second})
	shortSrv := httptest.NewServer(e.short)
	defer shortSrv.Close()
	e.shortURL = shortSrv.URL

	if err := e.setup(ctx, sha, nullSHA, longSrv.URL); err != nil {
		return err
	}
	steps := map[string]func(context.Context) error{"read": e.readPath, "coalescing": e.coalescing, "refresh": e.refreshPath, "scale": e.scale, "proxy": e.proxyStep}
	for _, name := range strings.Split(*flagSteps, ",") {
		step, ok := steps[strings.TrimSpace(name)]
		if !ok {
			return fmt.Errorf("-steps: unknown step %q", name)
		}
		if err := step(ctx); err != nil {
			return err
		}
	}
	if err := e.leasesLeft(ctx); err != nil {
		return err
	}
	e.print()
	return nil
}

// findVault returns a vault binary 1.15+, obtaining one with
// scripts/vault-bin.sh (which may build it once) if there is none.
func findVault(ctx context.Context) (string, error) {
	if bin, _ := e2e.FindVault(); bin != "" {
		return bin, nil
	}
	root, err := e2e.ModuleRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "vault-bin.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("scripts/vault-bin.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// startVault starts the Vault server -storage says, with a plugin directory
// holding both plugins (built with version), and returns the plugins'
// sha256s. Whatever it started is stopped by stopVault, even if it fails.
func (e *env) startVault(vaultBin, work string) (sha, nullSHA string, err error) {
	build := func() error {
		e.progress("building the Ermeo plugin and the null plugin")
		if _, sha, err = e2e.BuildPlugin(e.pluginDir, version); err != nil {
			return err
		}
		_, nullSHA, err = bench.BuildNullPlugin(e.pluginDir, version)
		return err
	}
	switch *flagStorage {
	case "dev":
		e.storage = "in memory (vault server -dev)"
		e.pluginDir = filepath.Join(work, "plugins")
		if err := os.Mkdir(e.pluginDir, 0o755); err != nil {
			return "", "", err
		}
		if err := build(); err != nil {
			return "", "", err
		}
		e.progress("starting %s -dev", vaultBin)
		e.v, err = e2e.StartDev(e2e.DevOptions{VaultBin: vaultBin, PluginDir: e.pluginDir, WorkDir: work, LogLevel: "warn"})
		if err != nil {
			return "", "", err
		}
		e.stop = e.v.Stop
	case "raft":
		e.progress("starting %s: a single-node Raft server in %s", vaultBin, work)
		// Nothing mounted by StartCluster: the plugins are built into the
		// node's plugin directory once it exists, and registered by setup.
		c, err := e2e.StartCluster(e2e.ClusterOptions{
			VaultBin: vaultBin, Mount: "-", WorkDir: work, Nodes: 1, LogLevel: "warn",
			RaftPerformanceMultiplier: 1, Telemetry: true, Timeout: time.Minute,
		})
		if err != nil {
			return "", "", err
		}
		e.stop = c.Stop
		node := c.Nodes[0]
		raftDir := filepath.Join(node.Dir, "raft")
		e.storage = fmt.Sprintf("a single-node Raft server (integrated storage), its data in a temporary directory on %s", fsType(raftDir))
		e.pluginDir = node.PluginDir
		if e.v, err = c.Vault(0); err != nil {
			return "", "", err
		}
		if err := build(); err != nil {
			return "", "", err
		}
	default:
		return "", "", fmt.Errorf("-storage: want raft or dev, not %q", *flagStorage)
	}
	return sha, nullSHA, nil
}

// fsType names the kind of file system dir is on: an fsync on tmpfs costs
// nothing, on a disk it waits for the disk.
func fsType(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "an unknown file system"
	}
	switch st.Type {
	case 0x01021994:
		return "tmpfs (in memory: an fsync costs nothing)"
	case 0xEF53:
		return "ext4 (a disk)"
	case 0x58465342:
		return "xfs (a disk)"
	case 0x9123683E:
		return "btrfs (a disk)"
	case 0x794c7630:
		return "overlayfs"
	}
	return fmt.Sprintf("a file system of type %#x", st.Type)
}

// stopVault stops the vault server and then any plugin process it started
// that outlived it (by pid, only if its executable is in our plugin dir).
func (e *env) stopVault() {
	if e.stop == nil {
		return
	}
	var pids []int
	if e.v != nil {
		pids = e2e.ChildrenIn(e.v.Pid(), e.pluginDir)
	}
	e.stop()
	for _, pid := range pids {
		if e2e.InDir(pid, e.pluginDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (e *env) setup(ctx context.Context, sha, nullSHA, longURL string) error {
	e.progress("mounting ermeo/, ermeo-short/, scale/, null/ and kv/ in %s", e.v.Version)
	sys := e.v.Client.Sys()
	if err := e.v.RegisterAndMount(ctx, sha, version, "ermeo"); err != nil {
		return err
	}
	for _, m := range []string{"ermeo-short", "scale"} {
		err := sys.MountWithContext(ctx, m, &api.MountInput{Type: e2e.PluginName, Config: api.MountConfigInput{PluginVersion: version}})
		if err != nil {
			return fmt.Errorf("enabling %s: %w", m, err)
		}
	}
	err := sys.RegisterPluginWithContext(ctx, &api.RegisterPluginInput{
		Name: bench.NullPluginName, Type: api.PluginTypeSecrets, Command: bench.NullPluginName, SHA256: nullSHA, Version: version,
	})
	if err != nil {
		return fmt.Errorf("registering the null plugin: %w", err)
	}
	err = sys.MountWithContext(ctx, "null", &api.MountInput{Type: bench.NullPluginName, Config: api.MountConfigInput{PluginVersion: version}})
	if err != nil {
		return fmt.Errorf("enabling the null plugin: %w", err)
	}
	if err := sys.MountWithContext(ctx, "kv", &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		return fmt.Errorf("enabling kv: %w", err)
	}

	for mount, url := range map[string]string{"ermeo": longURL, "scale": longURL, "ermeo-short": e.shortURL} {
		if err := e.write(ctx, mount+"/config", map[string]any{
			"api_url": url, "client_id": fakeermeo.DefaultClientID, "client_secret": fakeermeo.DefaultClientSecret,
		}); err != nil {
			return err
		}
	}
	if err := e.write(ctx, "ermeo/accounts/app", account(nil)); err != nil {
		return err
	}
	if err := e.write(ctx, "ermeo/accounts/app-static", account(map[string]any{"lease": false})); err != nil {
		return err
	}
	static, err := e.v.Client.Logical().ReadWithContext(ctx, "ermeo/creds/app-static")
	if err != nil {
		return err
	}
	e.leaseFree = static.LeaseID == ""
	if !e.leaseFree {
		e.note("the plugin does not know lease=false yet: ermeo/creds/app-static is a leased read")
	}

	// A KV secret the size of a creds response: the same fields.
	creds, err := e.v.Client.Logical().ReadWithContext(ctx, "ermeo/creds/app")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second) // KV v2 needs a moment after it is enabled
	for {
		_, err = e.v.Client.Logical().WriteWithContext(ctx, "kv/data/x", map[string]any{"data": creds.Data})
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// account is the fields of an account write: the fake's user, and extra.
func account(extra map[string]any) map[string]any {
	a := map[string]any{"username": fakeermeo.DefaultUsername, "password": fakeermeo.DefaultPassword}
	for k, v := range extra {
		a[k] = v
	}
	return a
}

func (e *env) write(ctx context.Context, path string, data map[string]any) error {
	if _, err := e.v.Client.Logical().WriteWithContext(ctx, path, data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// client is a new Vault API client on its own HTTP client, keeping up to
// conns idle connections, as N workers sharing one client need.
func (e *env) client(conns int) (*api.Client, error) {
	conf := api.DefaultConfig()
	conf.Address = e.v.Addr
	conf.MaxRetries = 0
	if tr, ok := conf.HttpClient.Transport.(*http.Transport); ok {
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = conns+8, conns+8
	}
	c, err := api.NewClient(conf)
	if err != nil {
		return nil, err
	}
	c.SetToken(e.v.Token)
	c.ClearNamespace()
	return c, nil
}

// read is a load operation: one read of path that must return data.
func read(c *api.Client, path string) func(context.Context, int) error {
	return func(ctx context.Context, _ int) error {
		s, err := c.Logical().ReadWithContext(ctx, path)
		if err == nil && (s == nil || s.Data == nil) {
			err = fmt.Errorf("read %s: no data", path)
		}
		return err
	}
}

// rotate is a load operation: one forced rotation of an account (a write of
// accounts/<name>/rotate), which must return the account's status.
func rotate(c *api.Client, path string) func(context.Context, int) error {
	return func(ctx context.Context, _ int) error {
		s, err := c.Logical().WriteWithContext(ctx, path, nil)
		if err == nil && (s == nil || s.Data == nil) {
			err = fmt.Errorf("write %s: no data", path)
		}
		return err
	}
}

// storagePerOp runs op n times in a row and returns the storage reads and
// writes (barrier gets and puts, from Vault's metrics) per op. A run during
// which a periodic tick ended is done again, so that the tick's storage calls
// are not counted.
func (e *env) storagePerOp(ctx context.Context, n int, op func(context.Context, int) error) (get, put float64, err error) {
	for attempt := 0; ; attempt++ {
		before, err := bench.ScrapeMetrics(ctx, e.v.Client)
		if err != nil {
			return 0, 0, err
		}
		for i := range n {
			if err := op(ctx, i); err != nil {
				return 0, 0, err
			}
		}
		after, err := bench.ScrapeMetrics(ctx, e.v.Client)
		if err != nil {
			return 0, 0, err
		}
		if before.Delta(after, "vault_rollback_attempt_count") == 0 || attempt == 2 {
			return before.Delta(after, "vault_barrier_get_count") / float64(n),
				before.Delta(after, "vault_barrier_put_count") / float64(n), nil
		}
	}
}

func (e *env) target(what, measured string, ok bool) {
	e.targets = append(e.targets, []string{what, measured, bench.Verdict(ok)})
}

func (e *env) note(format string, args ...any) {
	e.notes = append(e.notes, fmt.Sprintf(format, args...))
}

func (e *env) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %5.0fs: %s\n", time.Since(e.started).Seconds(), fmt.Sprintf(format, args...))
}

func (e *env) print() {
	fmt.Printf("\nErmeo secrets plugin benchmarks, %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	vaultVersion := e.v.Version
	if m := regexp.MustCompile(`Vault v\S+`).FindString(vaultVersion); m != "" {
		vaultVersion = strings.TrimSuffix(m, ",")
	}
	fmt.Printf("machine: %d cores (%s/%s); %s; %s; plugin at %s; Vault, plugins, fake Ermeo and load generator all on this machine, over 127.0.0.1\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, vaultVersion, runtime.Version(), commit())
	fmt.Printf("storage: %s\n", e.storage)
	fmt.Printf("runs: %s each; total time %s; load average before the run (other processes): %s\n\n",
		*flagDuration, time.Since(e.started).Round(time.Second), e.load)
	e.table.Section("Targets (issues 6 and 13; goals the run is compared with, not asserted)", "target", "measured", "")
	for _, t := range e.targets {
		e.table.Row(t...)
	}
	e.table.Print(os.Stdout)
	if len(e.notes) > 0 {
		fmt.Println("\nNotes")
		for _, n := range e.notes {
			fmt.Println("  - " + n)
		}
	}
}

// commit names the source measured: the git commit, and whether the tree had
// changes.
func commit() string {
	root, err := e2e.ModuleRoot()
	if err != nil {
		return "an unknown commit"
	}
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "an unknown commit"
	}
	c := "commit " + strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += " with uncommitted changes"
	}
	return c
}

// scaleCounts parses -scale.
func scaleCounts() ([]int, error) {
	var counts []int
	for _, f := range strings.Split(*flagScale, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, errors.New("-scale: want ascending positive counts, e.g. 1,1000,10000")
		}
		counts = append(counts, n)
	}
	if !slices.IsSorted(counts) {
		return nil, errors.New("-scale: want ascending counts")
	}
	return counts, nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
