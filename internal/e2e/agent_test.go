package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// Short lifetimes, so that several tokens pass in about a minute and a half.
// With min_ttl = TTL/5 the plugin refreshes a token no earlier than 16 s
// after it was issued, so that over less than 96 s there are at most
// elapsed/TTL + 1 refreshes whatever Agent does.
const (
	agentTokenTTL = 20 * time.Second
	agentMinTTL   = 4 * time.Second
	// agentWindow is how long after the first token was issued the test
	// watches the file.
	agentWindow = 90 * time.Second
	agentPoll   = 200 * time.Millisecond
)

// TestAgentKeepsAValidTokenInAFile runs a real `vault agent` with the example
// configuration (examples/agent/agent.hcl and its template, with the test's
// addresses and paths): it logs in with AppRole under the example policy and
// renders <mount>/creds/app into a file. The fake Ermeo issues 20 s tokens;
// the test reads the file every 200 ms and checks that the token in it is
// accepted at every poll, that the file is rewritten before its token
// expires, and that the plugin refreshes at most about once per token
// lifetime. It prints what Agent did with each lease. With the account option
// lease=false (no lease, a ttl in the data), if the plugin has it, it does the
// same again.
func TestAgentKeepsAValidTokenInAFile(t *testing.T) {
	for _, mode := range []struct {
		name  string
		lease bool
	}{{"lease", true}, {"no-lease", false}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			runAgent(t, mode.lease)
		})
	}
}

// tokenSpan is one access token that the rendered file held.
type tokenSpan struct {
	n        int
	token    string
	issued   time.Time // the account write, or the Agent read that refreshed
	seen     time.Time // the first poll that saw it in the file
	replaced time.Time // the first poll that saw its successor; zero if none
	polls    int
	rejected int
}

// agentRead is one read of creds/<name> by Agent, from its trace log, with
// the lease Vault gave it (from sys/leases) when there was one.
type agentRead struct {
	at    time.Time
	sleep time.Duration // Agent's wait before the next read; 0 if not logged
	lease time.Duration // the lease of the answer; 0 if none found
}

func runAgent(t *testing.T, lease bool) {
	if vault == nil {
		t.Skip("e2e: " + skipReason)
	}
	bin, why := FindVault()
	if bin == "" {
		t.Skip("e2e: " + why)
	}
	e := newEnv(t, fakeermeo.Options{AccessTokenTTL: agentTokenTTL})
	e.configure()
	acct := map[string]any{"username": testUser, "password": testPassword, "min_ttl": int(agentMinTTL.Seconds())}
	if !lease {
		acct["lease"] = false
	}
	if _, err := e.write("accounts/app", acct); err != nil {
		if !lease && statusOf(err) == http.StatusBadRequest && strings.Contains(err.Error(), "lease") {
			t.Skipf("the plugin has no account option lease=false yet: %s", firstError(err))
		}
		t.Fatalf("write accounts/app: %v", err)
	}
	firstIssued := time.Now()

	// What the plugin answers, seen with the root token (a fresh token: this
	// read refreshes nothing).
	s := e.mustRead("creds/app")
	answer := fmt.Sprintf("lease_duration=%ds renewable=%v lease_id set=%v expires_in=%v",
		s.LeaseDuration, s.Renewable, s.LeaseID != "", s.Data["expires_in"])
	if v, ok := s.Data["ttl"]; ok {
		answer += fmt.Sprintf(" ttl=%v", v)
	}
	if v, ok := s.Data["rotation_period"]; ok {
		answer += fmt.Sprintf(" rotation_period=%v", v)
	}
	if lease && (s.LeaseID == "" || s.Renewable) {
		t.Fatalf("want a non-renewable lease: %s", answer)
	}
	if !lease && s.LeaseID != "" {
		t.Fatalf("lease=false: want no lease: %s", answer)
	}
	if !lease {
		// consul-template (dependency.leaseCheckWait) uses the ttl of a
		// secret without a lease only when the data also has a
		// rotation_period key, as database static roles do: it then reads
		// again after ttl + 1 s. Without it, it reads again after 85-95% of
		// static_secret_render_interval (default 5m), long after a short
		// token expired.
		_, hasTTL := s.Data["ttl"]
		_, hasPeriod := s.Data["rotation_period"]
		if !hasTTL || !hasPeriod {
			t.Errorf("lease=false: the answer needs both ttl and rotation_period for Vault Agent to use the ttl (%s); "+
				"without them Agent reads again only after 85-95%% of static_secret_render_interval (5m)", answer)
		}
	}

	// The example configuration, with this test's server, AppRole mount,
	// files and engine mount.
	role := newAppRole(t, e)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "role-id"), role.roleID)
	writeFile(t, filepath.Join(dir, "secret-id"), role.secretID)
	writeFile(t, filepath.Join(dir, "ermeo-token.ctmpl"), exampleFile(t, "examples/agent/ermeo-token.ctmpl",
		`"ermeo/creds/app"`, `"`+e.mount+`/creds/app"`))
	dest := filepath.Join(dir, "run", "token")
	cfgPath := filepath.Join(dir, "agent.hcl")
	writeFile(t, cfgPath, exampleFile(t, "examples/agent/agent.hcl",
		`"https://vault.example.com:8200"`, `"`+vault.Addr+`"`,
		`"auth/approle"`, `"auth/`+role.mount+`"`,
		`"/etc/vault-agent/role-id"`, `"`+filepath.Join(dir, "role-id")+`"`,
		`"/etc/vault-agent/secret-id"`, `"`+filepath.Join(dir, "secret-id")+`"`,
		`"/etc/vault-agent/ermeo-token.ctmpl"`, `"`+filepath.Join(dir, "ermeo-token.ctmpl")+`"`,
		`"/run/ermeo/token"`, `"`+dest+`"`))

	agent := startAgent(t, bin, dir, cfgPath)
	defer agent.stop()
	started := time.Now()
	defer func() {
		if t.Failed() {
			t.Logf("vault agent's reads and warnings:\n%s", agentLogExcerpt(agent.log(), e.mount+"/creds/app"))
		}
	}()

	leases := map[string]agentRead{} // by lease id
	var spans []*tokenSpan
	var cur *tokenSpan
	deadline := firstIssued.Add(agentWindow)
	for now := time.Now(); now.Before(deadline); now = time.Now() {
		if agent.exited() {
			t.Fatalf("vault agent exited:\n%s", tail(agent.log(), 40))
		}
		if lease {
			collectLeases(t, e.mount, leases, started)
		}
		b, err := os.ReadFile(dest)
		if errors.Is(err, os.ErrNotExist) && cur == nil {
			if now.Sub(started) > 30*time.Second {
				t.Fatalf("vault agent rendered nothing in 30 s:\n%s", tail(agent.log(), 40))
			}
			time.Sleep(agentPoll)
			continue
		}
		if err != nil {
			t.Fatalf("reading the rendered file: %v", err)
		}
		tok := strings.TrimSpace(string(b))
		if cur == nil || tok != cur.token {
			if cur != nil {
				cur.replaced = now
			}
			cur = &tokenSpan{n: len(spans) + 1, token: tok, seen: now}
			spans = append(spans, cur)
		}
		cur.polls++
		valid := e.fake.AccessTokenValid(tok)
		status := profileStatus(t, e.url, tok)
		if !valid || status != http.StatusOK {
			// One error per token; the report counts the rest.
			if cur.rejected == 0 {
				t.Errorf("%s: the file holds token #%d (age %s), which the fake rejects (valid %v, GET %s %d)",
					now.Format("15:04:05.000"), cur.n, now.Sub(cur.seen).Round(100*time.Millisecond), valid, fakeermeo.ProfilePath, status)
			}
			cur.rejected++
		}
		time.Sleep(time.Until(now.Add(agentPoll)))
	}
	end := time.Now()
	if lease {
		collectLeases(t, e.mount, leases, started)
	}
	agent.stop()
	refreshes := e.fake.Counters().Grants["refresh_token"]["success"]

	if len(spans) == 0 {
		t.Fatalf("vault agent rendered nothing")
	}
	reads := parseAgentReads(t, agent.log(), e.mount+"/creds/app")
	matchLeases(reads, leases)
	// Each token after the first was issued by the Agent read that refreshed
	// it: the last read before the file showed it.
	spans[0].issued = firstIssued
	for _, sp := range spans[1:] {
		for _, r := range reads {
			if !r.at.After(sp.seen) {
				sp.issued = r.at
			}
		}
		if sp.issued.IsZero() {
			sp.issued = sp.seen
		}
	}

	// The file never held a rejected token (checked at each poll above), and
	// each token left it before it expired.
	elapsed := end.Sub(firstIssued)
	for _, sp := range spans {
		if sp.replaced.IsZero() {
			continue
		}
		if left := sp.issued.Add(agentTokenTTL).Sub(sp.replaced); left <= 0 {
			t.Errorf("token #%d was replaced %s after it expired", sp.n, -left)
		}
		// The plugin keeps a token until it has less than min_ttl left.
		if age := sp.replaced.Sub(sp.issued); age < agentTokenTTL-agentMinTTL-agentPoll {
			t.Errorf("token #%d was replaced at age %s, before its min_ttl (%s of %s)", sp.n, age, agentMinTTL, agentTokenTTL)
		}
	}
	if len(spans) < int(elapsed/agentTokenTTL) {
		t.Errorf("the file held %d tokens in %s of %s tokens", len(spans), elapsed.Round(time.Second), agentTokenTTL)
	}
	limit := float64(elapsed)/float64(agentTokenTTL) + 1
	if float64(refreshes) > limit {
		t.Errorf("%d refreshes in %s: more than elapsed/TTL + 1 = %.2f", refreshes, elapsed.Round(time.Second), limit)
	}

	fmt.Print(agentReport(t.Name(), answer, spans, reads, refreshes, elapsed, lease))
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// agentProc is one `vault agent` process that the test started.
type agentProc struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
}

func startAgent(t *testing.T, bin, dir, cfgPath string) *agentProc {
	t.Helper()
	logPath := filepath.Join(dir, "agent.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "agent", "-config="+cfgPath, "-log-level=trace")
	cmd.Env = append(cleanEnv(), "HOME="+dir)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting vault agent: %v", err)
	}
	a := &agentProc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(a.done)
	}()
	t.Cleanup(a.stop)
	t.Logf("vault agent pid %d, config %s", cmd.Process.Pid, cfgPath)
	return a
}

func (a *agentProc) exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// stop ends the agent process by its pid: SIGTERM, then SIGKILL after 10 s.
func (a *agentProc) stop() {
	stopProcess(a.cmd.Process, a.done, 10*time.Second)
}

func (a *agentProc) log() string {
	b, _ := os.ReadFile(a.logPath)
	return string(b)
}

// collectLeases adds the leases of mount/creds/app issued since since, by
// lease id: a lease lives at least 1 s, and the test polls every 200 ms.
func collectLeases(t *testing.T, mount string, leases map[string]agentRead, since time.Time) {
	t.Helper()
	prefix := mount + "/creds/app/"
	l := vault.Client.Logical()
	s, err := l.List("sys/leases/lookup/" + prefix)
	if err != nil || s == nil {
		return
	}
	keys, _ := s.Data["keys"].([]any)
	for _, k := range keys {
		id := prefix + fmt.Sprint(k)
		if _, ok := leases[id]; ok {
			continue
		}
		info, err := l.Write("sys/leases/lookup", map[string]any{"lease_id": id})
		if err != nil || info == nil {
			continue
		}
		issued, err1 := time.Parse(time.RFC3339Nano, fmt.Sprint(info.Data["issue_time"]))
		expires, err2 := time.Parse(time.RFC3339Nano, fmt.Sprint(info.Data["expire_time"]))
		if err1 != nil || err2 != nil || issued.Before(since) {
			continue
		}
		leases[id] = agentRead{at: issued, lease: expires.Sub(issued).Round(100 * time.Millisecond)}
	}
}

var agentLogTime = regexp.MustCompile(`^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z)\s`)

// parseAgentReads reads Agent's trace log for its reads of path and the wait
// it chose after each one.
func parseAgentReads(t *testing.T, log, path string) []agentRead {
	get := "vault.read(" + path + "): GET "
	sleep := "vault.read(" + path + "): non-renewable secret, set sleep for "
	var reads []agentRead
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m := agentLogTime.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			continue
		}
		switch {
		case strings.Contains(line, get):
			reads = append(reads, agentRead{at: at})
		case strings.Contains(line, sleep) && len(reads) > 0:
			d, err := time.ParseDuration(strings.TrimSpace(line[strings.Index(line, sleep)+len(sleep):]))
			if err == nil {
				reads[len(reads)-1].sleep = d
			}
		}
	}
	if len(reads) == 0 {
		t.Errorf("no read of %s in the agent's log:\n%s", path, tail(log, 40))
	}
	return reads
}

// agentLogExcerpt is the lines of Agent's log about path, and its warnings
// and errors, for a failed test.
func agentLogExcerpt(log, path string) string {
	var keep []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "vault.read("+path+"): ") || strings.Contains(line, "[WARN]") || strings.Contains(line, "[ERROR]") {
			keep = append(keep, line)
		}
	}
	return tail(strings.Join(keep, "\n"), 60)
}

// matchLeases gives each read the lease issued closest to it, within 1 s.
func matchLeases(reads []agentRead, leases map[string]agentRead) {
	for i := range reads {
		best := time.Second
		for _, l := range leases {
			d := l.at.Sub(reads[i].at)
			if d < 0 {
				d = -d
			}
			if d < best {
				best, reads[i].lease = d, l.lease
			}
		}
	}
}

func agentReport(name, answer string, spans []*tokenSpan, reads []agentRead, refreshes int, elapsed time.Duration, lease bool) string {
	var b strings.Builder
	sec := func(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }
	fmt.Fprintf(&b, "\n=== %s: what vault agent did (token TTL %s, min_ttl %s)\n", name, agentTokenTTL, agentMinTTL)
	fmt.Fprintf(&b, "plugin's answer to creds/app: %s\n", answer)
	var fractions []float64
	for i, sp := range spans {
		fmt.Fprintf(&b, "token #%d: issued %s", sp.n, sp.issued.Format("15:04:05.000"))
		if sp.n == 1 {
			b.WriteString(" (account write)")
		}
		fmt.Fprintf(&b, ", in the file from age %s", sec(sp.seen.Sub(sp.issued)))
		if !sp.replaced.IsZero() {
			fmt.Fprintf(&b, " to age %s (replaced with %s of life left)", sec(sp.replaced.Sub(sp.issued)),
				sec(sp.issued.Add(agentTokenTTL).Sub(sp.replaced)))
		} else {
			b.WriteString(" to the end")
		}
		fmt.Fprintf(&b, "; %d polls, %d rejected\n", sp.polls, sp.rejected)
		// The reads after it was issued, up to the one that refreshed it.
		var next time.Time
		if i+1 < len(spans) {
			next = spans[i+1].issued
		}
		for _, r := range reads {
			if !r.at.After(sp.issued) || (!next.IsZero() && r.at.After(next)) {
				continue
			}
			what := "same token"
			if r.at.Equal(next) {
				what = fmt.Sprintf("refreshed, got token #%d", sp.n+1)
			}
			fmt.Fprintf(&b, "    agent read at age %5s (%5s left): %s", sec(r.at.Sub(sp.issued)), sec(sp.issued.Add(agentTokenTTL).Sub(r.at)), what)
			if r.lease > 0 {
				fmt.Fprintf(&b, ", lease %s", sec(r.lease))
			} else if lease {
				b.WriteString(", lease not seen")
			} else {
				b.WriteString(", no lease")
			}
			if r.sleep > 0 {
				fmt.Fprintf(&b, ", agent waits %s", sec(r.sleep))
				if r.lease > 0 {
					f := float64(r.sleep) / float64(r.lease)
					fractions = append(fractions, f)
					fmt.Fprintf(&b, " = %.0f%% of the lease", 100*f)
				}
			}
			b.WriteString("\n")
		}
	}
	perToken := float64(len(reads)) / float64(len(spans))
	fmt.Fprintf(&b, "summary: %d agent reads, %d tokens in the file (%.1f reads per token), %d refreshes at Ermeo in %s = %.2f token lifetimes (bound elapsed/TTL + 1 = %.2f; elapsed/(TTL - min_ttl) + 1 = %.2f)\n",
		len(reads), len(spans), perToken, refreshes, elapsed.Round(100*time.Millisecond),
		float64(elapsed)/float64(agentTokenTTL), float64(elapsed)/float64(agentTokenTTL)+1,
		float64(elapsed)/float64(agentTokenTTL-agentMinTTL)+1)
	if len(fractions) > 0 {
		sort.Float64s(fractions)
		lo, hi := fractions[0], fractions[len(fractions)-1]
		verdict := "matches"
		if lo < 0.85-0.02 || hi > 0.95+0.02 {
			verdict = "does NOT match"
		}
		fmt.Fprintf(&b, "agent waited %.0f%% to %.0f%% of each non-renewable lease: %s consul-template's rule (lease_renewal_threshold 0.90 +/- 0.05)\n",
			100*lo, 100*hi, verdict)
	}
	return b.String()
}
