package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/bench"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/e2e"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// readTarget is one path of the read path and the null plugin's path in the
// same mode, its floor.
type readTarget struct {
	path, mode, floor string
}

// Null first, then what is compared with it, so that both see the same Vault
// (the leases of the runs before, a warm cache). null/static/y is the same
// read as null/static/x: its ratios show how far apart two identical
// targets come out on this machine, i.e. the noise.
var readTargets = []readTarget{
	{"null/creds/x", "lease", "null/creds/x"},
	{"ermeo/creds/app", "lease", "null/creds/x"},
	{"null/static/x", "lease-free", "null/static/x"},
	{"ermeo/creds/app-static", "lease-free", "null/static/x"},
	{"null/static/y", "control: null/static again", "null/static/x"},
	{"null/stored/x", "lease-free, 1 storage get", "null/static/x"},
	{"kv/data/x", "built-in KV v2", "null/static/x"},
}

// readRounds is how many turns the read targets take at each level.
const readRounds = 10

// readPath measures throughput and latency of each read target at 1, 8 and
// 64 workers sharing one client, with the storage writes per read and the
// growth of Vault's memory, and then the storage calls of one read.
func (e *env) readPath(ctx context.Context) error {
	e.table.Section(fmt.Sprintf("1. Read path: N workers share one HTTP client, %s per path in %d alternating rounds; ratios are to the null plugin in the same mode (lease: null/creds, lease-free: null/static); CPU per read from /proc; puts/read from Vault's vault_barrier_put counter and Vault RSS growth (VmRSS from /proc, which the Go runtime's heap growth and garbage also move) over the same runs", *flagDuration, readRounds),
		"clients", "path", "mode", "req/s", "p50", "p99", "p50 ratio", "req/s ratio", "errors", "Vault CPU/read", "plugin CPU/read", "puts/read", "Vault RSS/10k reads")
	e.note("Vault RSS/10k reads: each row sums the change of Vault's VmRSS over its own runs, so that Go's garbage collections and its returns of memory to the OS land in whichever row was running (hence rows below zero): a lease-free row's figure is that noise; a leased row's, consistently above it, is the leases Vault keeps in memory")
	vaultPid := e.v.Pid()
	pluginPid := map[string]int{"null": e.pidOf(bench.NullPluginName), "ermeo": e.pidOf(e2e.PluginName)}
	rssStart, err := e2e.ProcessRSS(vaultPid)
	if err != nil {
		return err
	}
	for _, workers := range []int{1, 8, 64} {
		c, err := e.client(workers)
		if err != nil {
			return err
		}
		e.progress("read path: %d client(s)", workers)
		for _, t := range readTargets {
			bench.Load(ctx, workers, 300*time.Millisecond, read(c, t.path)) // warm-up: connections, caches
		}
		// Each target's time is cut in rounds, and the targets take turns,
		// in an order reversed every round, so that a drift of the machine
		// or of Vault (its growing lease table) weighs on all of them alike.
		results := map[string]*bench.Result{}
		vaultCPU, pluginCPU := map[string]time.Duration{}, map[string]time.Duration{}
		puts, rss := map[string]float64{}, map[string]int64{}
		for round := range readRounds {
			for i := range readTargets {
				t := readTargets[i]
				if round%2 == 1 {
					t = readTargets[len(readTargets)-1-i]
				}
				plugin := pluginPid[t.path[:strings.IndexByte(t.path, '/')]]
				m0, err := bench.ScrapeMetrics(ctx, e.v.Client)
				if err != nil {
					return err
				}
				rss0, err := e2e.ProcessRSS(vaultPid)
				if err != nil {
					return err
				}
				v0, p0 := cpuTime(vaultPid), cpuTime(plugin)
				r := bench.Load(ctx, workers, *flagDuration/readRounds, read(c, t.path))
				vaultCPU[t.path] += cpuTime(vaultPid) - v0
				pluginCPU[t.path] += cpuTime(plugin) - p0
				rss1, err := e2e.ProcessRSS(vaultPid)
				if err != nil {
					return err
				}
				m1, err := bench.ScrapeMetrics(ctx, e.v.Client)
				if err != nil {
					return err
				}
				puts[t.path] += m0.Delta(m1, "vault_barrier_put_count")
				rss[t.path] += rss1 - rss0
				if results[t.path] == nil {
					results[t.path] = &bench.Result{}
				}
				results[t.path].Add(r)
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, t := range readTargets {
			r, floor := results[t.path], results[t.floor]
			if r.Ops == 0 {
				return fmt.Errorf("read %s: no read succeeded: %v", t.path, r.FirstErr)
			}
			if t.path == "ermeo/creds/app" {
				e.direct[workers] = *r
			}
			p50Ratio := float64(r.P(0.5)) / float64(floor.P(0.5))
			rpsRatio := r.PerSecond() / floor.PerSecond()
			e.table.Row(fmt.Sprint(workers), t.path, t.mode, fmt.Sprintf("%.0f", r.PerSecond()),
				bench.Ms(r.P(0.5)), bench.Ms(r.P(0.99)), bench.X(p50Ratio), bench.X(rpsRatio), fmt.Sprint(r.Errors),
				perOp(vaultCPU[t.path], r.Ops), perOp(pluginCPU[t.path], r.Ops),
				fmt.Sprintf("%.2f", puts[t.path]/float64(r.Ops)), signedMB(float64(rss[t.path])*10000/float64(r.Ops)))
			if t.path != t.floor && strings.HasPrefix(t.path, "ermeo/") {
				// Within 1.1x of the floor both ways: p50 at most 1.1x of
				// null's, req/s at least 1/1.1 (0.91x) of null's.
				e.target(fmt.Sprintf("%d clients, %s: creds p50 within 1.1x of null", workers, t.mode), bench.X(p50Ratio), p50Ratio <= 1.1)
				e.target(fmt.Sprintf("%d clients, %s: creds req/s within 1.1x of null (at least 0.91x)", workers, t.mode), bench.X(rpsRatio), rpsRatio >= 1/1.1)
			}
		}
	}

	// Memory per live lease over the whole read path, less noisy than a
	// row's: the leases are what stays.
	rssEnd, err := e2e.ProcessRSS(vaultPid)
	if err != nil {
		return err
	}
	leases := 0
	for _, p := range leasedPrefixes[:2] { // the read path's
		n, err := e.countLeases(ctx, p)
		if err != nil {
			return err
		}
		leases += n
	}
	if leases > 0 {
		e.note("Vault's RSS went from %s to %s over the timed reads above, which left %d leases live: about %.1f KB of Vault's memory per live lease (an upper bound: it also holds the lease-free reads' share of Go's heap growth)",
			bench.MB(rssStart), bench.MB(rssEnd), leases, float64(rssEnd-rssStart)/float64(leases)/1024)
	}

	e.table.Section("   Storage calls per read (Vault's vault_barrier_get/put counters over 200 reads in a row; null/static makes none, so its 1 get is Vault's own per request)", "path", "gets/read", "puts/read")
	c, err := e.client(1)
	if err != nil {
		return err
	}
	for _, t := range readTargets {
		if t.path == "null/static/y" {
			continue
		}
		get, put, err := e.storagePerOp(ctx, 200, read(c, t.path))
		if err != nil {
			return err
		}
		e.table.Row(t.path, fmt.Sprintf("%.2f", get), fmt.Sprintf("%.2f", put))
	}
	if *flagProfile != "" {
		if err := e.profile(ctx, *flagProfile); err != nil {
			return err
		}
	}
	e.note("a leased read (null/creds, ermeo/creds/app) makes Vault store a lease and index it by token (the puts above) and keep it in memory until it expires, when Vault revokes it; the leases the run left live are counted in the last section. That cost is part of the lease-mode figures.")
	return nil
}

// signedMB formats a change of a byte count in megabytes, with its sign.
func signedMB(b float64) string { return fmt.Sprintf("%+.1f MB", b/(1<<20)) }

// leasedPrefixes are the lease prefixes of the leased reads of the run, each
// under one path: sys/leases/lookup lists their leases.
var leasedPrefixes = []string{"null/creds/x/", "ermeo/creds/app/", "ermeo-short/creds/coal/", "ermeo-short/creds/" + proxyAccount + "/"}

// countLeases returns the number of live leases under prefix (which ends
// in "/" and holds leases, not further prefixes).
func (e *env) countLeases(ctx context.Context, prefix string) (int, error) {
	s, err := e.v.Client.Logical().ListWithContext(ctx, "sys/leases/lookup/"+prefix)
	if err != nil {
		return 0, fmt.Errorf("listing the leases of %s: %w", prefix, err)
	}
	if s == nil {
		return 0, nil
	}
	keys, _ := s.Data["keys"].([]any)
	return len(keys), nil
}

// leasesLeft counts the leases the run left live: those of each leased path
// of one account (LIST sys/leases/lookup/<prefix>), and all of them (Vault's
// vault_expire_num_leases gauge, which also counts the scale step's leases,
// one prefix per account).
func (e *env) leasesLeft(ctx context.Context) error {
	e.table.Section("6. Leases the run left live: Vault keeps each in storage and in memory until it expires (null's after 1 h; creds' after half of min_ttl unless renewed), then revokes it",
		"lease prefix", "live leases")
	for _, p := range leasedPrefixes {
		n, err := e.countLeases(ctx, p)
		if err != nil {
			return err
		}
		e.table.Row(p, fmt.Sprint(n))
	}
	m, err := bench.ScrapeMetrics(ctx, e.v.Client)
	if err != nil {
		return err
	}
	e.table.Row("all (Vault's vault_expire_num_leases gauge, as last emitted)", fmt.Sprintf("%.0f", m["vault_expire_num_leases"]))
	return nil
}

// profile writes a Vault CPU profile of 64 clients reading each creds path
// for -duration into dir, as vault-<path>.pprof.
func (e *env) profile(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	c, err := e.client(64)
	if err != nil {
		return err
	}
	secs := max(1, int(flagDuration.Seconds()))
	for _, t := range readTargets[:4] { // the creds paths
		e.progress("profiling Vault: 64 clients reading %s for %ds", t.path, secs)
		done := make(chan error, 1)
		go func() {
			resp, err := e.v.Client.Logical().ReadRawWithDataWithContext(ctx, "sys/pprof/profile", map[string][]string{"seconds": {fmt.Sprint(secs)}})
			if err == nil {
				defer resp.Body.Close()
				var f *os.File
				if f, err = os.Create(filepath.Join(dir, "vault-"+strings.ReplaceAll(t.path, "/", "-")+".pprof")); err == nil {
					_, err = f.ReadFrom(resp.Body)
					err = errors.Join(err, f.Close())
				}
			}
			done <- err
		}()
		bench.Load(ctx, 64, time.Duration(secs)*time.Second+500*time.Millisecond, read(c, t.path))
		if err := <-done; err != nil {
			return fmt.Errorf("profiling Vault: %w", err)
		}
	}
	e.note("Vault CPU profiles of 64 clients reading each creds path are in %s (go tool pprof -top <file>)", dir)
	return nil
}

// coalescing releases many readers at once at the moment the account's
// token needs a refresh, and counts the refreshes at the fake.
func (e *env) coalescing(ctx context.Context) error {
	n := *flagReaders
	e.progress("coalescing: %d readers at expiry", n)
	// The fake issues 12 s tokens; with min_ttl 5s the token needs a refresh
	// 7 s after it is issued (past half its life: reads never refresh a
	// younger token).
	if err := e.write(ctx, "ermeo-short/accounts/coal", account(map[string]any{"min_ttl": "5s"})); err != nil {
		return err
	}
	created := time.Now()
	c, err := e.client(n)
	if err != nil {
		return err
	}
	start := make(chan struct{})
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			errs[i] = read(c, "ermeo-short/creds/coal")(ctx, i)
			lat[i] = time.Since(t0)
		}()
	}
	if err := sleep(ctx, time.Until(created.Add(7100*time.Millisecond))); err != nil {
		close(start)
		wg.Wait()
		return err
	}
	before := e.short.Counters()
	close(start)
	wg.Wait()
	after := e.short.Counters()

	var ok []time.Duration
	var firstErr error
	for i, err := range errs {
		if err == nil {
			ok = append(ok, lat[i])
		} else if firstErr == nil {
			firstErr = err
		}
	}
	r := bench.Result{Ops: len(ok), Errors: n - len(ok), FirstErr: firstErr, Latencies: ok}
	slices.Sort(r.Latencies)
	refreshes := after.Grants["refresh_token"]["success"] - before.Grants["refresh_token"]["success"]
	e.table.Section("2. Coalescing: readers released at once when the token needs a refresh (fake's token lifetime 12 s, min_ttl 5s, 7.1 s after the account's creation)",
		"readers", "refreshes at the fake", "token requests", "failed", "p50", "p99", "max")
	e.table.Row(fmt.Sprint(n), fmt.Sprint(refreshes), fmt.Sprint(after.Requests-before.Requests), fmt.Sprint(r.Errors),
		bench.Ms(r.P(0.5)), bench.Ms(r.P(0.99)), bench.Ms(r.P(1)))
	e.target(fmt.Sprintf("%d readers at expiry: exactly 1 refresh", n), fmt.Sprint(refreshes), refreshes == 1)
	if r.Errors > 0 {
		e.note("coalescing: %d readers failed, the first with: %v", r.Errors, firstErr)
	}
	return nil
}

// refreshPath compares a forced rotation (the refresh protocol through Vault:
// lock, intent record, refresh, new pair) with a bare refresh call to the
// fake, and counts the storage calls of a refresh. A creds read cannot be
// made to refresh every time: reads never refresh a token younger than half
// its life.
func (e *env) refreshPath(ctx context.Context) error {
	extra := map[string]any{"lease": false, "min_ttl": "5s"} // below the fake's 12 s tokens
	if err := e.write(ctx, "ermeo-short/accounts/every", account(extra)); err != nil {
		return err
	}
	c, err := e.client(1)
	if err != nil {
		return err
	}
	ec, err := ermeo.New(ermeo.Config{APIURL: e.shortURL, ClientID: fakeermeo.DefaultClientID, ClientSecret: fakeermeo.DefaultClientSecret})
	if err != nil {
		return err
	}
	e.table.Section(fmt.Sprintf("3. Refresh path: a forced rotation (write accounts/<name>/rotate, the refresh protocol through Vault) against a bare ermeo.Client.RefreshGrant to the fake; 1 client, %s per run", *flagDuration),
		"fake's delay", "rotation p50", "p99", "req/s", "refreshes/rotation", "bare refresh p50", "p99", "p50 ratio", "p50 overhead")
	for _, delay := range []time.Duration{0, 50 * time.Millisecond} {
		if delay > 0 {
			e.short.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultDelay, Grant: "refresh_token", Delay: delay})
		}
		e.progress("refresh path: fake's delay %s", delay)
		before := e.short.Counters()
		rd := bench.Load(ctx, 1, *flagDuration, rotate(c, "ermeo-short/accounts/every/rotate"))
		after := e.short.Counters()
		// Each bare chain starts from a password grant.
		tok, err := ec.PasswordGrant(ctx, fakeermeo.DefaultUsername, fakeermeo.DefaultPassword)
		if err != nil {
			return err
		}
		rt := tok.RefreshToken
		bare := bench.Load(ctx, 1, *flagDuration, func(ctx context.Context, _ int) error {
			t, err := ec.RefreshGrant(ctx, rt)
			if err == nil {
				rt = t.RefreshToken
			}
			return err
		})
		e.short.ClearFaults()
		if err := ctx.Err(); err != nil {
			return err
		}
		if rd.Ops == 0 || bare.Ops == 0 {
			return fmt.Errorf("refresh path: read: %v; bare refresh: %v", rd.FirstErr, bare.FirstErr)
		}
		refreshes := after.Grants["refresh_token"]["success"] - before.Grants["refresh_token"]["success"]
		e.table.Row(bench.Ms(delay), bench.Ms(rd.P(0.5)), bench.Ms(rd.P(0.99)), fmt.Sprintf("%.0f", rd.PerSecond()),
			fmt.Sprintf("%.2f", float64(refreshes)/float64(rd.Ops)), bench.Ms(bare.P(0.5)), bench.Ms(bare.P(0.99)),
			bench.X(float64(rd.P(0.5))/float64(bare.P(0.5))), "+"+bench.Ms(rd.P(0.5)-bare.P(0.5)))
	}

	// Storage calls of a refresh: those of a forced rotation less those of a
	// cached read in the same mode.
	cached := "ermeo/creds/app-static" // lease-free: no lease writes to subtract
	getR, putR, err := e.storagePerOp(ctx, 100, rotate(c, "ermeo-short/accounts/every/rotate"))
	if err != nil {
		return err
	}
	getC, putC, err := e.storagePerOp(ctx, 100, read(c, cached))
	if err != nil {
		return err
	}
	e.table.Section("   Storage calls of one refresh (Vault's barrier counters: a forced rotation less a cached lease-free read, 100 of each; the design says 2 writes: the intent record, then the new pair)",
		"", "gets", "puts")
	e.table.Row("forced rotation", fmt.Sprintf("%.2f", getR), fmt.Sprintf("%.2f", putR))
	e.table.Row("cached read ("+cached+")", fmt.Sprintf("%.2f", getC), fmt.Sprintf("%.2f", putC))
	e.table.Row("one refresh", fmt.Sprintf("%.2f", getR-getC), fmt.Sprintf("%.2f", putR-putC))
	return nil
}

// scale creates accounts up to each count of -scale, and measures creation,
// the plugin's RSS, reads, and start-up; at the largest count, the CPU of
// the periodic tick.
func (e *env) scale(ctx context.Context) error {
	counts, err := scaleCounts()
	if err != nil {
		return err
	}
	writers := *flagWriters
	c, err := e.client(writers)
	if err != nil {
		return err
	}
	e.table.Section(fmt.Sprintf("4. Scale: accounts of mount scale/ (all of one Ermeo user), created by %d concurrent writers; read p50 of random accounts, 1 client, %s; RSS of the Ermeo plugin process (all its mounts); start-up = plugin reload to the first served creds read", writers, *flagDuration),
		"accounts", "create time", "creates/s", "read p50", "vs 1st row", "plugin RSS", "start-up")
	have := 0
	var firstP50 time.Duration
	var last struct {
		n       int
		rss     int64
		startup time.Duration
	}
	for _, n := range counts {
		e.progress("scale: creating accounts %d to %d", have, n-1)
		var next atomic.Int64
		next.Store(int64(have))
		t0 := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= int64(n) || ctx.Err() != nil {
						return
					}
					if _, err := c.Logical().WriteWithContext(ctx, fmt.Sprintf("scale/accounts/a%d", i), account(nil)); err != nil {
						errs[w] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		took := time.Since(t0)
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		created := n - have
		have = n

		e.progress("scale: reads of %d accounts", n)
		r := bench.Load(ctx, 1, *flagDuration, func(ctx context.Context, _ int) error {
			return read(c, fmt.Sprintf("scale/creds/a%d", rand.IntN(n)))(ctx, 0)
		})
		if r.Ops == 0 {
			return fmt.Errorf("scale reads: %v", r.FirstErr)
		}
		if firstP50 == 0 {
			firstP50 = r.P(0.5)
		}
		rss, err := e.pluginRSS()
		if err != nil {
			return err
		}
		e.progress("scale: plugin restart with %d accounts", n)
		startup, err := e.restart(ctx, c)
		if err != nil {
			return err
		}
		e.table.Row(fmt.Sprint(n), bench.Ms(took), fmt.Sprintf("%.0f", float64(created)/took.Seconds()),
			bench.Ms(r.P(0.5)), bench.X(float64(r.P(0.5))/float64(firstP50)), bench.MB(rss), bench.Ms(startup))
		last.n, last.rss, last.startup = n, rss, startup
	}
	e.target(fmt.Sprintf("%d accounts: plugin RSS under 100 MB", last.n), bench.MB(last.rss), last.rss < 100<<20)
	e.target(fmt.Sprintf("%d accounts: start-up under 5 s", last.n), bench.Ms(last.startup), last.startup < 5*time.Second)
	if last.n < 10000 {
		e.note("the scale step stopped at %d accounts (-scale); the targets are for 10,000", last.n)
	}

	if *flagTick <= 0 {
		e.note("the periodic tick's CPU was not measured (-tick-window 0); it is measured in-process by BenchmarkPeriodicTick")
		return nil
	}
	w, err := e.tickCPU(ctx, *flagTick)
	if err != nil {
		return err
	}
	e.table.Section(fmt.Sprintf("   After the restart above, at %d accounts, through an idle %s: Ermeo plugin process CPU (utime+stime from /proc, 10 ms resolution, sampled every %s); a tick's CPU runs from the sample before Vault's rollback counter moves to its last move, so it includes up to %s of idle CPU",
		last.n, *flagTick, tickSample, tickSample), "", "plugin CPU", "wall")
	e.table.Row("process start to the first served read", cpuMs(w.start), bench.Ms(last.startup))
	e.table.Row("then background start-up work, outside ticks (e.g. loading the keep-alive schedule)", cpuMs(w.settle), bench.Ms(w.busy))
	var worst time.Duration
	for i, t := range w.ticks {
		e.table.Row(fmt.Sprintf("periodic tick %d", i+1), cpuMs(t.cpu), "< "+bench.Ms(t.wall))
		worst = max(worst, t.cpu)
	}
	e.table.Row("idle, outside ticks, after that", fmt.Sprintf("%s/s", bench.Ms(w.idle)), "")
	e.target(fmt.Sprintf("%d accounts: periodic tick under 50 ms", last.n), cpuMs(worst)+" CPU", worst < 50*time.Millisecond)
	return nil
}

// cpuMs formats a CPU time read from /proc, whose resolution is 10 ms.
func cpuMs(d time.Duration) string {
	if d < 10*time.Millisecond {
		return "< 10 ms"
	}
	return bench.Ms(d)
}

// pidOf returns the pid of the running plugin process of our plugin
// directory whose executable is named name, or 0.
func (e *env) pidOf(name string) int {
	for _, pid := range e2e.ChildrenIn(e.v.Pid(), e.pluginDir) {
		if exe, err := e2e.ProcessExe(pid); err == nil && filepath.Base(exe) == name {
			return pid
		}
	}
	return 0
}

// cpuTime is the CPU time of process pid so far, 0 if pid is 0 or gone.
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	p, _ := e2e.ReadProcess(pid)
	return p.CPU
}

// perOp formats the CPU time per operation in microseconds, "-" for none.
func perOp(cpu time.Duration, ops int) string {
	if cpu == 0 || ops == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f µs", float64(cpu)/float64(ops)/float64(time.Microsecond))
}

// pluginRSS is the resident memory of the Ermeo plugin's processes.
func (e *env) pluginRSS() (int64, error) {
	pids, err := e.v.PluginPids()
	if err != nil || len(pids) == 0 {
		return 0, fmt.Errorf("no Ermeo plugin process found: %v", err)
	}
	var sum int64
	for _, pid := range pids {
		rss, err := e2e.ProcessRSS(pid)
		if err != nil {
			return 0, err
		}
		sum += rss
	}
	return sum, nil
}

// restart reloads the Ermeo plugin (every mount of it) and returns the time
// from the reload request to the first creds read served.
func (e *env) restart(ctx context.Context, c *api.Client) (time.Duration, error) {
	t0 := time.Now()
	if _, err := c.Sys().ReloadPluginWithContext(ctx, &api.ReloadPluginInput{Plugin: e2e.PluginName}); err != nil {
		return 0, fmt.Errorf("reloading the plugin: %w", err)
	}
	for {
		err := read(c, "scale/creds/a0")(ctx, 0)
		if err == nil {
			return time.Since(t0), nil
		}
		if time.Since(t0) > time.Minute || ctx.Err() != nil {
			return 0, fmt.Errorf("no creds read served within a minute of the reload: %w", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tickSample is how often tickCPU samples the plugin's CPU and Vault's metrics.
const tickSample = 250 * time.Millisecond

// tick is one periodic tick as tickCPU saw it.
type tick struct {
	cpu  time.Duration // plugin CPU from the sample before the tick to its end
	wall time.Duration // from the sample before the tick to its end
}

// idleWindow is what tickCPU saw.
type idleWindow struct {
	start  time.Duration // CPU of the process before the window: its start-up
	settle time.Duration // CPU of the background start-up work, outside ticks
	busy   time.Duration // how long that work went on
	ticks  []tick
	idle   time.Duration // CPU per second after it, outside ticks
}

// tickCPU samples, for window, the Ermeo plugin process's CPU time and
// Vault's count of finished rollback attempts (Vault calls each mount's
// periodic function in a rollback, every 60 s). Each burst of finished
// attempts is a tick; its CPU is the plugin's CPU from the sample before the
// burst to the burst's last sample.
func (e *env) tickCPU(ctx context.Context, window time.Duration) (idleWindow, error) {
	var w idleWindow
	pids, err := e.v.PluginPids()
	if err != nil || len(pids) != 1 {
		return w, fmt.Errorf("want one Ermeo plugin process, found %v (%v)", pids, err)
	}
	e.progress("scale: plugin CPU over an idle %s window (periodic ticks every 60 s)", window)
	type sample struct {
		at       time.Time
		cpu      time.Duration
		attempts float64
		inTick   bool
	}
	var s []sample
	for end := time.Now().Add(window); time.Now().Before(end); {
		m, err := bench.ScrapeMetrics(ctx, e.v.Client)
		if err != nil {
			return w, err
		}
		p, err := e2e.ReadProcess(pids[0])
		if err != nil {
			return w, fmt.Errorf("the plugin process went away during the window: %w", err)
		}
		s = append(s, sample{at: time.Now(), cpu: p.CPU, attempts: m["vault_rollback_attempt_count"]})
		if err := sleep(ctx, tickSample); err != nil {
			return w, err
		}
	}
	// Bursts of finished rollback attempts, each from the sample before it.
	var bursts [][2]int
	for i := 1; i < len(s); i++ {
		if s[i].attempts == s[i-1].attempts {
			continue
		}
		if n := len(bursts); n > 0 && s[i].at.Sub(s[bursts[n-1][1]].at) <= 5*time.Second {
			bursts[n-1][1] = i
		} else {
			bursts = append(bursts, [2]int{i - 1, i})
		}
	}
	for _, b := range bursts {
		w.ticks = append(w.ticks, tick{cpu: s[b[1]].cpu - s[b[0]].cpu, wall: s[b[1]].at.Sub(s[b[0]].at)})
		for i := b[0] + 1; i <= b[1]; i++ {
			s[i].inTick = true
		}
	}
	if len(w.ticks) == 0 {
		return w, fmt.Errorf("no periodic tick in %s", window)
	}
	// Start-up work in the background: outside ticks, until the last
	// sample in the first minute that used at least 20 ms (8% of a core).
	w.start = s[0].cpu
	busy := 0
	for i := 1; i < len(s) && s[i].at.Sub(s[0].at) < time.Minute; i++ {
		if !s[i].inTick && s[i].cpu-s[i-1].cpu >= 20*time.Millisecond {
			busy = i
		}
	}
	w.busy = s[busy].at.Sub(s[0].at)
	var after, afterTime time.Duration
	for i := 1; i < len(s); i++ {
		switch {
		case s[i].inTick:
		case i <= busy:
			w.settle += s[i].cpu - s[i-1].cpu
		default:
			after += s[i].cpu - s[i-1].cpu
			afterTime += s[i].at.Sub(s[i-1].at)
		}
	}
	if afterTime > 0 {
		w.idle = time.Duration(float64(after) / afterTime.Seconds())
	}
	return w, nil
}
