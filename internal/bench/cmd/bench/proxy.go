package main

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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/auditlog"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/bench"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/e2e"
)

// The goal row's set-up (issue 13): short tokens from the fake (e.short's
// 12 s), an account min_ttl of 6 s (the least with which Vault Proxy keeps
// one cached answer per token: see internal/e2e/proxy_test.go), 50 readers
// for three token lifetimes, each pausing between two reads as an
// application reading creds on every request would.
const (
	proxyTokenTTL = 12 * time.Second // e.short's AccessTokenTTL
	proxyMinTTL   = 6 * time.Second
	proxyReaders  = 50
	proxyWindow   = 3 * proxyTokenTTL
	proxyPause    = 20 * time.Millisecond
	// proxyAccount is the goal row's account, on ermeo-short/.
	proxyAccount = "proxy"
)

// proxyStep measures reads of creds through a real `vault proxy` started
// with the example configuration (examples/proxy/proxy.hcl: AppRole
// auto-auth under the example policy, cache {}, api_proxy with the
// auto-auth token): throughput at 1, 8 and 64 readers beside the direct
// leased read, then the goal row of issue 13. What reached the plugin and
// the leases Vault created are counted from a file audit device of the
// bench's, enabled for this step only.
func (e *env) proxyStep(ctx context.Context) error {
	dir, err := os.MkdirTemp(e.work, "proxy-")
	if err != nil {
		return err
	}
	// The direct rows, unless the read step measured them already:
	// measured before the audit device exists, as the read step does.
	e.directFrom = "section 1's ermeo/creds/app"
	for _, workers := range []int{1, 8, 64} {
		if _, ok := e.direct[workers]; ok {
			continue
		}
		e.directFrom = fmt.Sprintf("ermeo/creds/app read directly for %s before the proxy started", *flagDuration)
		c, err := e.client(workers)
		if err != nil {
			return err
		}
		e.progress("proxy: direct reads of ermeo/creds/app, %d client(s)", workers)
		bench.Load(ctx, workers, 300*time.Millisecond, read(c, "ermeo/creds/app"))
		e.direct[workers] = bench.Load(ctx, workers, *flagDuration, read(c, "ermeo/creds/app"))
	}
	if err := e.write(ctx, "ermeo-short/accounts/"+proxyAccount, account(map[string]any{"min_ttl": int(proxyMinTTL.Seconds())})); err != nil {
		return err
	}

	// log_raw: the audit log holds the access tokens in the clear, so that
	// each plugin read is matched with the token the readers got. The
	// tokens are the fake's and the log is in the bench's temporary
	// directory.
	auditFile := filepath.Join(dir, "audit.log")
	err = e.v.Client.Sys().EnableAuditWithOptionsWithContext(ctx, "bench-proxy", &api.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": auditFile, "log_raw": "true"},
	})
	if err != nil {
		return fmt.Errorf("enabling the file audit device: %w", err)
	}
	defer func() { _ = e.v.Client.Sys().DisableAuditWithContext(context.WithoutCancel(ctx), "bench-proxy") }()
	audit, err := auditlog.OpenTail(auditFile)
	if err != nil {
		return err
	}
	defer audit.Close()

	p, err := e.startProxy(ctx, dir)
	if err != nil {
		return err
	}
	defer p.stop()
	if err := p.waitAuth(ctx); err != nil {
		return err
	}
	e.progress("proxy: vault proxy pid %d on %s", p.cmd.Process.Pid, p.url)
	if _, err := audit.Next(); err != nil { // the proxy's login
		return err
	}

	if err := e.proxyThroughput(ctx, p, audit); err != nil {
		return err
	}
	if err := e.proxyGoal(ctx, p, audit); err != nil {
		return err
	}
	p.stop()
	if p.exitedEarly() {
		e.note("vault proxy exited before the bench stopped it; its log's last lines:\n%s", p.tail(20))
	}
	// The account's chain is kept alive by the plugin for as long as the
	// account exists: gone, it refreshes nothing behind the later steps.
	_, err = e.v.Client.Logical().DeleteWithContext(ctx, "ermeo-short/accounts/"+proxyAccount)
	return err
}

// proxyThroughput is the step's first table: readers at full speed through
// the proxy, each row beside the direct leased read.
func (e *env) proxyThroughput(ctx context.Context, p *proxyProc, audit *auditlog.Tail) error {
	e.table.Section(fmt.Sprintf("5. Vault Proxy (examples/proxy/proxy.hcl; started by the bench, stopped by pid): N readers with no Vault token share one HTTP client to the proxy, %s per row; direct rows are %s, every one of whose reads reaches the plugin and makes a lease; a proxy row's plugin reads and leases are the creds reads in Vault's audit log (a file device enabled for this section) and the lease ids of their answers, from the row's 300 ms warm-up to its end; renewals: the proxy's sys/leases/renew of those leases", *flagDuration, e.directFrom),
		"readers", "path", "req/s", "p50", "p99", "errors", "cache hits", "plugin reads", "leases", "renewals")
	const path = "ermeo/creds/app"
	hc := proxyHTTPClient(64)
	defer hc.CloseIdleConnections()
	for _, workers := range []int{1, 8, 64} {
		e.progress("proxy: %d reader(s) through the proxy", workers)
		var hits atomic.Int64
		op := func(ctx context.Context, _ int) error {
			a, err := p.read(ctx, hc, path)
			if err == nil && a.hit {
				hits.Add(1)
			}
			return err
		}
		bench.Load(ctx, workers, 300*time.Millisecond, op) // warm-up: connections, the cache
		hits.Store(0)
		r := bench.Load(ctx, workers, *flagDuration, op)
		if err := ctx.Err(); err != nil {
			return err
		}
		c, err := countNewAudit(audit, path)
		if err != nil {
			return err
		}
		d := e.direct[workers]
		e.table.Row(fmt.Sprint(workers), "direct", fmt.Sprintf("%.0f", d.PerSecond()), bench.Ms(d.P(0.5)), bench.Ms(d.P(0.99)),
			fmt.Sprint(d.Errors), "-", fmt.Sprintf("%d (every read)", d.Ops), fmt.Sprintf("%d (every read)", d.Ops), "-")
		e.table.Row("", "through vault proxy", fmt.Sprintf("%.0f", r.PerSecond()), bench.Ms(r.P(0.5)), bench.Ms(r.P(0.99)),
			fmt.Sprint(r.Errors), fmt.Sprintf("%.1f%%", 100*float64(hits.Load())/float64(max(r.Ops, 1))),
			fmt.Sprint(c.reads), fmt.Sprint(len(c.leases)), renewals(c))
		if r.Errors > 0 {
			e.note("proxy, %d readers: %d reads failed, the first with: %v", workers, r.Errors, r.FirstErr)
		}
	}
	return nil
}

func renewals(c auditCount) string {
	if c.renewFailed == 0 {
		return fmt.Sprint(c.renewals)
	}
	return fmt.Sprintf("%d (%d refused)", c.renewals, c.renewFailed)
}

// proxyRead is one reader's read in the goal row.
type proxyRead struct {
	at        time.Time // when the answer came
	token     string
	expiresAt time.Time // the answer's expires_at
	err       error
}

// proxyGen is one token generation: a token the readers got.
type proxyGen struct {
	token             string
	first, last       time.Time
	reads             int
	expires           time.Time // at the fake
	known             bool      // the fake issued it
	leastLeft         time.Duration
	leastLeftByAnswer time.Duration // by expires_at
	low, invalid      int
	pluginReads       int
	leases            map[string]bool
	renewals, refused int // the proxy's renewals of those leases
}

// proxyGoal is issue 13's goal row: 50 readers through the proxy over three
// lifetimes of the fake's short tokens.
func (e *env) proxyGoal(ctx context.Context, p *proxyProc, audit *auditlog.Tail) error {
	path := "ermeo-short/creds/" + proxyAccount
	e.progress("proxy: %d readers through the proxy reading %s for %s (tokens of %s, min_ttl %s)", proxyReaders, path, proxyWindow, proxyTokenTTL, proxyMinTTL)
	hc := proxyHTTPClient(proxyReaders)
	defer hc.CloseIdleConnections()
	perReader := make([][]proxyRead, proxyReaders)
	started := time.Now()
	deadline := started.Add(proxyWindow)
	var wg sync.WaitGroup
	for i := range perReader {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(deadline) {
				a, err := p.read(ctx, hc, path)
				perReader[i] = append(perReader[i], proxyRead{at: time.Now(), token: a.token, expiresAt: a.expiresAt, err: err})
				time.Sleep(proxyPause)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(started)
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := countNewAudit(audit, path)
	if err != nil {
		return err
	}

	var reads []proxyRead
	for _, rs := range perReader {
		reads = append(reads, rs...)
	}
	slices.SortFunc(reads, func(a, b proxyRead) int { return a.at.Compare(b.at) })
	var gens []*proxyGen
	byToken := map[string]*proxyGen{}
	failed, low, invalid := 0, 0, 0
	var firstErr error
	for _, r := range reads {
		if r.err != nil {
			failed++
			if firstErr == nil {
				firstErr = r.err
			}
			continue
		}
		g := byToken[r.token]
		if g == nil {
			g = &proxyGen{token: r.token, first: r.at, leastLeft: time.Hour, leastLeftByAnswer: time.Hour, leases: map[string]bool{}}
			g.expires, g.known = e.short.AccessTokenExpiresAt(r.token)
			gens = append(gens, g)
			byToken[r.token] = g
		}
		g.last = r.at
		g.reads++
		left := g.expires.Sub(r.at)
		g.leastLeft = min(g.leastLeft, left)
		g.leastLeftByAnswer = min(g.leastLeftByAnswer, r.expiresAt.Sub(r.at))
		if !g.known || left <= 0 {
			g.invalid++
			invalid++
		}
		if left < proxyMinTTL/2 {
			g.low++
			low++
		}
	}
	// Each plugin read to the generation of the token it answered.
	unmatched := 0
	for _, cr := range c.creds {
		if g := byToken[cr.AccessToken]; g != nil {
			g.pluginReads++
			if cr.LeaseID != "" {
				g.leases[cr.LeaseID] = true
			}
		} else {
			unmatched++
		}
	}
	for _, r := range c.renewalsOf {
		for _, g := range gens {
			if g.leases[r.RenewOf] {
				g.renewals++
				if r.Error != "" {
					g.refused++
				}
			}
		}
	}

	e.table.Section(fmt.Sprintf("   Issue 13's goal: %d readers (a read every %s each) through the proxy reading %s for %s, three lifetimes of the fake's %s tokens, min_ttl %s; by token generation (a token the readers got, in order): plugin reads are the creds reads in the audit log that answered that token, leases the lease ids of those answers, renewals the proxy's sys/leases/renew of them; life left is the fake's expiry of the token minus when the reader got it (and, in brackets, by the answer's expires_at)",
		proxyReaders, proxyPause, path, elapsed.Round(time.Second), proxyTokenTTL, proxyMinTTL),
		"generation", "readers got it from", "to", "reads", "plugin reads", "leases", "renewals", "least life left", "under min_ttl/2", "invalid at the fake")
	maxReads, maxLeases := 0, 0
	for i, g := range gens {
		maxReads, maxLeases = max(maxReads, g.pluginReads), max(maxLeases, len(g.leases))
		issued := g.expires.Add(-proxyTokenTTL)
		e.table.Row(fmt.Sprint(i+1), fmt.Sprintf("age %.1fs", g.first.Sub(issued).Seconds()), fmt.Sprintf("age %.1fs", g.last.Sub(issued).Seconds()),
			fmt.Sprint(g.reads), fmt.Sprint(g.pluginReads), fmt.Sprint(len(g.leases)), renewals(auditCount{renewals: g.renewals, renewFailed: g.refused}),
			fmt.Sprintf("%.1fs (%.1fs)", g.leastLeft.Seconds(), g.leastLeftByAnswer.Seconds()), fmt.Sprint(g.low), fmt.Sprint(g.invalid))
	}
	n := max(len(gens), 1)
	served := len(reads) - failed
	e.table.Row("all", "", "", fmt.Sprintf("%d (%.0f/s), %d failed", served, float64(served)/elapsed.Seconds(), failed),
		fmt.Sprintf("%d (%.1f/gen.)", len(c.creds), float64(len(c.creds))/float64(n)),
		fmt.Sprintf("%d (%.1f/gen.)", len(c.leases), float64(len(c.leases))/float64(n)),
		renewals(c), "", fmt.Sprint(low), fmt.Sprint(invalid))
	if unmatched > 0 {
		e.note("proxy goal: %d creds reads at the plugin answered a token no reader got (counted in the row 'all')", unmatched)
	}
	if failed > 0 {
		e.note("proxy goal: %d reads failed, the first with: %v", failed, firstErr)
	}
	if len(gens) < int(proxyWindow/proxyTokenTTL) {
		e.note("proxy goal: the readers saw %d token generations in %s of %s tokens; expected at least %d", len(gens), elapsed.Round(time.Second), proxyTokenTTL, int(proxyWindow/proxyTokenTTL))
	}
	ok := len(gens) > 0 && failed == 0 && maxReads <= 2 && maxLeases <= 2 &&
		len(c.creds) <= 2*len(gens) && len(c.leases) <= 2*len(gens) && low == 0 && invalid == 0
	e.target(fmt.Sprintf("%d readers through Vault Proxy over three token lifetimes: at most 2 plugin reads and 2 leases per generation; 0 tokens with less than min_ttl/2 left", proxyReaders),
		fmt.Sprintf("%d generations; per generation at most %d plugin read(s) and %d lease(s) (%.1f and %.1f on average); %d reads under min_ttl/2, %d invalid, %d failed",
			len(gens), maxReads, maxLeases, float64(len(c.creds))/float64(n), float64(len(c.leases))/float64(n), low, invalid, failed), ok)
	return nil
}

// proxyProc is a running `vault proxy`.
type proxyProc struct {
	cmd     *exec.Cmd
	url     string // http://127.0.0.1:<port>
	logPath string
	done    chan struct{}
	stopped bool
	once    sync.Once
}

// startProxy sets up an AppRole login under the example policy, writes the
// example proxy configuration with the bench's addresses and paths into
// dir, and starts `vault proxy` with it on a free port of 127.0.0.1.
func (e *env) startProxy(ctx context.Context, dir string) (*proxyProc, error) {
	root, err := e2e.ModuleRoot()
	if err != nil {
		return nil, err
	}
	example := func(rel string, replace ...string) (string, error) {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return "", err
		}
		s := string(b)
		for i := 0; i+1 < len(replace); i += 2 {
			if n := strings.Count(s, replace[i]); n != 1 {
				return "", fmt.Errorf("%s holds %q %d times, want once", rel, replace[i], n)
			}
			s = strings.Replace(s, replace[i], replace[i+1], 1)
		}
		return s, nil
	}

	// The example policy, for ermeo/creds/app and for the goal row's
	// account on ermeo-short/.
	policy, err := example("examples/policy/app.hcl")
	if err != nil {
		return nil, err
	}
	short, err := example("examples/policy/app.hcl", `"ermeo/creds/app"`, `"ermeo-short/creds/`+proxyAccount+`"`)
	if err != nil {
		return nil, err
	}
	sys, l := e.v.Client.Sys(), e.v.Client.Logical()
	if err := sys.PutPolicyWithContext(ctx, "ermeo-app", policy+"\n"+short); err != nil {
		return nil, fmt.Errorf("writing the policy: %w", err)
	}
	if err := sys.EnableAuthWithOptionsWithContext(ctx, "approle", &api.EnableAuthOptions{Type: "approle"}); err != nil {
		return nil, fmt.Errorf("enabling AppRole: %w", err)
	}
	const role = "auth/approle/role/app"
	if _, err := l.WriteWithContext(ctx, role, map[string]any{"token_policies": "ermeo-app", "token_ttl": "1h", "token_max_ttl": "4h"}); err != nil {
		return nil, fmt.Errorf("creating the AppRole role: %w", err)
	}
	s, err := l.ReadWithContext(ctx, role+"/role-id")
	if err != nil || s == nil {
		return nil, fmt.Errorf("reading the role_id: %v", err)
	}
	roleID, _ := s.Data["role_id"].(string)
	if s, err = l.WriteWithContext(ctx, role+"/secret-id", nil); err != nil || s == nil {
		return nil, fmt.Errorf("creating a secret_id: %v", err)
	}
	secretID, _ := s.Data["secret_id"].(string)
	roleIDFile, secretIDFile := filepath.Join(dir, "role-id"), filepath.Join(dir, "secret-id")
	if err := errors.Join(os.WriteFile(roleIDFile, []byte(roleID), 0o600), os.WriteFile(secretIDFile, []byte(secretID), 0o600)); err != nil {
		return nil, err
	}

	port, err := e2e.FreePort()
	if err != nil {
		return nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	cfg, err := example("examples/proxy/proxy.hcl",
		`"https://vault.example.com:8200"`, `"`+e.v.Addr+`"`,
		`"/etc/vault-proxy/role-id"`, `"`+roleIDFile+`"`,
		`"/etc/vault-proxy/secret-id"`, `"`+secretIDFile+`"`,
		`"127.0.0.1:8100"`, `"`+listen+`"`)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "proxy.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	p := &proxyProc{url: "http://" + listen, logPath: filepath.Join(dir, "proxy.log"), done: make(chan struct{})}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(e.vaultBin, "proxy", "-config="+cfgPath, "-log-level=info")
	for _, kv := range os.Environ() { // none of the caller's VAULT_*
		if !strings.HasPrefix(kv, "VAULT_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, "HOME="+dir)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting vault proxy: %w", err)
	}
	go func() {
		_ = p.cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// waitAuth waits until the proxy answers a request without a token with its
// auto-auth token (token/lookup-self, which it passes through).
func (p *proxyProc) waitAuth(ctx context.Context) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("vault proxy exited:\n%s", p.tail(20))
		default:
		}
		resp, err := hc.Get(p.url + "/v1/auth/token/lookup-self")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vault proxy did not answer with its auto-auth token in 30 s:\n%s", p.tail(20))
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// stop stops the proxy by its pid: SIGTERM, then SIGKILL after 5 s.
func (p *proxyProc) stop() {
	p.once.Do(func() {
		select {
		case <-p.done:
			return // it had exited on its own
		default:
		}
		p.stopped = true
		e2e.StopProcess(p.cmd.Process, p.done, 5*time.Second)
	})
}

// exitedEarly reports whether the proxy had exited before stop.
func (p *proxyProc) exitedEarly() bool {
	select {
	case <-p.done:
		return !p.stopped
	default:
		return false
	}
}

// tail is the last n lines of the proxy's log.
func (p *proxyProc) tail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func proxyHTTPClient(conns int) *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConns: conns + 8, MaxIdleConnsPerHost: conns + 8},
	}
}

// proxyAnswer is what a read through the proxy returned.
type proxyAnswer struct {
	token     string
	expiresAt time.Time
	hit       bool // X-Cache: HIT
}

// read reads path through the proxy without a Vault token: the proxy adds
// its own.
func (p *proxyProc) read(ctx context.Context, hc *http.Client, path string) (proxyAnswer, error) {
	var a proxyAnswer
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/v1/"+path, nil)
	if err != nil {
		return a, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return a, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return a, err
	}
	var answer struct {
		Errors []string `json:"errors"`
		Data   struct {
			AccessToken string `json:"access_token"`
			ExpiresAt   string `json:"expires_at"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		return a, fmt.Errorf("read %s through the proxy: status %d: %w", path, resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || answer.Data.AccessToken == "" {
		return a, fmt.Errorf("read %s through the proxy: status %d: %s", path, resp.StatusCode, strings.Join(answer.Errors, "; "))
	}
	a.token, a.hit = answer.Data.AccessToken, resp.Header.Get("X-Cache") == "HIT"
	a.expiresAt, _ = time.Parse(time.RFC3339, answer.Data.ExpiresAt)
	return a, nil
}

// auditCount is what the audit log says reached Vault about one creds path.
type auditCount struct {
	reads                 int // creds reads that reached the plugin
	creds                 []auditlog.Entry
	leases                map[string]bool // lease ids of their answers
	renewals, renewFailed int             // renewals of leases of the path
	renewalsOf            []auditlog.Entry
}

// countNewAudit counts the response entries about path that the audit
// device appended since the last read of audit.
func countNewAudit(audit *auditlog.Tail, path string) (auditCount, error) {
	entries, err := audit.Next()
	c := auditCount{leases: map[string]bool{}}
	for _, e := range entries {
		if e.Type != "response" {
			continue
		}
		switch {
		case e.Path == path && e.Operation == "read":
			c.reads++
			c.creds = append(c.creds, e)
			if e.LeaseID != "" {
				c.leases[e.LeaseID] = true
			}
		case strings.HasPrefix(e.Path, "sys/leases/renew") || strings.HasPrefix(e.Path, "sys/renew"):
			if !strings.HasPrefix(e.RenewOf, path+"/") && !strings.Contains(e.Path, "/"+path+"/") {
				continue
			}
			c.renewals++
			c.renewalsOf = append(c.renewalsOf, e)
			if e.Error != "" {
				c.renewFailed++
			}
		}
	}
	return c, err
}
