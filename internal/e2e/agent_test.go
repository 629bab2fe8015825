package e2e

import (
	"bufio"
	"encoding/json"
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
// The plugin refreshes a token no earlier than TTL - min_ttl (14 s) after it
// was issued, so that there are at most elapsed/(TTL - min_ttl) + 1
// refreshes whatever Agent does. (With a renewable lease Agent re-reads at
// about 15 s, once its renewer lets go after the usable end; without one, at
// about 16 s: elapsed/TTL + 1 is no bound for either, and a 90 s run made 6
// refreshes with the lease, one more than it allows.)
const (
	agentTokenTTL = 20 * time.Second
	agentMinTTL   = 6 * time.Second
	// agentWindow is how long after the first token was issued the test
	// watches the file.
	agentWindow = 90 * time.Second
	agentPoll   = 200 * time.Millisecond
	// agentMargin is the least life a token may have left when the file
	// stops holding it: an application that read the file just before the
	// switch still has that long to use the token.
	agentMargin = time.Second
)

// TestAgentKeepsAValidTokenInAFile runs a real `vault agent` with the example
// configuration (examples/agent/agent.hcl and its template, with the test's
// addresses and paths): it logs in with AppRole under the example policy and
// renders <mount>/creds/app into a file. The fake Ermeo issues 20 s tokens;
// the test reads the file every 200 ms and checks that the token in it is
// accepted at every poll, that every token Ermeo issued reached the file and
// left it at least agentMargin before it expired, and that the plugin
// refreshes at most about once per token lifetime. From Agent's trace log it
// prints what Agent (consul-template) did with each token: its reads, what
// its view kept of each answer, the renewals of each lease, and when it wrote
// the file. With the account option lease=false (no lease, a ttl in the
// data) it does the same again. ERMEO_AGENT_LOG_DIR=<dir> keeps Agent's log.
func TestAgentKeepsAValidTokenInAFile(t *testing.T) {
	// Mostly waiting for tokens to age: it runs beside the soak and the
	// Python test, after the other tests, so that make test stays within
	// 10 minutes.
	t.Parallel()
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
	issued   time.Time // when Ermeo issued it (its expiry less the TTL)
	expires  time.Time // when Ermeo stops accepting it
	seen     time.Time // the first poll that saw it in the file
	replaced time.Time // the first poll that saw its successor; zero if none
	polls    int
	rejected int
	// first is the index in the parsed log of Agent's read that got the
	// token (for the first token, Agent's first read); -1 if none.
	first int
}

// left is how much life the token had when the file stopped holding it.
func (sp *tokenSpan) left() time.Duration { return sp.expires.Sub(sp.replaced) }

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
	if lease {
		// Renewable, so that Vault Proxy caches it, and ending no later
		// than the token's usable end (min_ttl before it expires).
		if s.LeaseID == "" || !s.Renewable {
			t.Fatalf("want a renewable lease: %s", answer)
		}
		expiresIn, err := s.Data["expires_in"].(json.Number).Int64()
		if usable := expiresIn - int64(agentMinTTL.Seconds()); err != nil || int64(s.LeaseDuration) > usable {
			t.Errorf("the lease (%ds) ends after the token's usable end (expires_in - min_ttl %s): %s",
				s.LeaseDuration, agentMinTTL, answer)
		}
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

	path := e.mount + "/creds/app"
	agent := startAgent(t, bin, dir, cfgPath)
	defer agent.stop()
	started := time.Now()
	var window [2]time.Time // the part of Agent's log to show if the test fails
	defer func() {
		if d := os.Getenv("ERMEO_AGENT_LOG_DIR"); d != "" {
			name := filepath.Join(d, strings.ReplaceAll(t.Name(), "/", "_")+".agent.log")
			if err := os.WriteFile(name, []byte(agent.log()), 0o644); err == nil {
				t.Logf("vault agent's log kept in %s", name)
			}
		}
		if t.Failed() {
			t.Logf("vault agent's log about %s:\n%s", path, agentLogExcerpt(agent.log(), path, window))
		}
	}()

	leases := map[string]agentLease{} // by lease id
	var spans []*tokenSpan
	var cur *tokenSpan
	firstIssued := time.Now()
	deadline := firstIssued.Add(agentWindow)
	for now := time.Now(); now.Before(deadline); now = time.Now() {
		if agent.exited() {
			t.Fatalf("vault agent exited:\n%s", tail(agent.log(), 40))
		}
		if lease {
			collectLeases(path, leases, started)
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
			cur = &tokenSpan{n: len(spans) + 1, token: tok, seen: now, first: -1}
			if exp, ok := e.fake.AccessTokenExpiresAt(tok); ok {
				cur.expires, cur.issued = exp, exp.Add(-agentTokenTTL)
			}
			spans = append(spans, cur)
		}
		cur.polls++
		valid := e.fake.AccessTokenValid(tok)
		status := profileStatus(t, e.url, tok)
		if !valid || status != http.StatusOK {
			// One error per token; the report counts the rest.
			if cur.rejected == 0 {
				t.Errorf("%s: the file holds token #%d (in it for %s, %s after it expired), which the fake rejects (valid %v, GET %s %d)",
					clock(now), cur.n, now.Sub(cur.seen).Round(100*time.Millisecond), now.Sub(cur.expires).Round(100*time.Millisecond),
					valid, fakeermeo.ProfilePath, status)
			}
			cur.rejected++
		}
		time.Sleep(time.Until(now.Add(agentPoll)))
	}
	end := time.Now()
	if lease {
		collectLeases(path, leases, started)
	}
	agent.stop()
	refreshes := e.fake.Counters().Grants["refresh_token"]["success"]

	if len(spans) == 0 {
		t.Fatalf("vault agent rendered nothing")
	}
	al := parseAgentLog(agent.log(), path)
	if len(al.reads) == 0 {
		t.Errorf("no read of %s in the agent's log:\n%s", path, tail(agent.log(), 40))
	}
	al.matchLeases(leases)
	al.attribute(spans)

	// Every token Ermeo issued (but one issued in the last second, which
	// Agent may not have written yet) reached the file.
	inFile := map[string]bool{}
	for _, sp := range spans {
		inFile[sp.token] = true
		if sp.expires.IsZero() {
			t.Errorf("token #%d in the file was not issued by the fake Ermeo", sp.n)
		}
	}
	for _, tok := range e.fake.IssuedAccessTokens() {
		if exp, _ := e.fake.AccessTokenExpiresAt(tok); !inFile[tok] && exp.Add(-agentTokenTTL).Before(end.Add(-time.Second)) {
			t.Errorf("Ermeo issued a token at %s, %s before the test stopped watching, that never reached the file",
				clock(exp.Add(-agentTokenTTL)), end.Sub(exp.Add(-agentTokenTTL)).Round(100*time.Millisecond))
		}
	}

	// The file never held a rejected token (checked at each poll above), and
	// each token left it at least agentMargin before it expired.
	elapsed := end.Sub(firstIssued)
	for i, sp := range spans {
		if sp.replaced.IsZero() || sp.expires.IsZero() {
			continue
		}
		if left := sp.left(); left < agentMargin {
			what := fmt.Sprintf("replaced with only %s of life left", left.Round(10*time.Millisecond))
			if left <= 0 {
				what = fmt.Sprintf("still in the file %s after it expired", (-left).Round(10*time.Millisecond))
			}
			t.Errorf("token #%d was %s (it expired at %s; the file showed token #%d at %s). %s",
				sp.n, what, clock(sp.expires), sp.n+1, clock(sp.replaced), al.whyLate(spans[i+1]))
			if window[0].IsZero() {
				window = [2]time.Time{sp.expires.Add(-agentMinTTL - 2*time.Second), spans[i+1].seen.Add(time.Second)}
			}
		}
		// The plugin keeps a token until it has less than min_ttl left.
		if age := sp.replaced.Sub(sp.issued); age < agentTokenTTL-agentMinTTL-agentPoll {
			t.Errorf("token #%d was replaced at age %s, before its min_ttl (%s of %s)", sp.n, age, agentMinTTL, agentTokenTTL)
		}
	}
	if len(spans) < int(elapsed/agentTokenTTL) {
		t.Errorf("the file held %d tokens in %s of %s tokens", len(spans), elapsed.Round(time.Second), agentTokenTTL)
	}
	limit := float64(elapsed)/float64(agentTokenTTL-agentMinTTL) + 1
	if float64(refreshes) > limit {
		t.Errorf("%d refreshes in %s: more than elapsed/(TTL - min_ttl) + 1 = %.2f", refreshes, elapsed.Round(time.Second), limit)
	}

	serverFailed := strings.Count(vault.Log(), "lease renewal failed: lease_id="+path+"/")
	fmt.Print(agentReport(t.Name(), answer, spans, al, refreshes, elapsed, lease, serverFailed))
}

func clock(t time.Time) string { return t.Format("15:04:05.000") }

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
	return startVaultCommand(t, bin, "agent", dir, cfgPath)
}

// startVaultCommand starts `vault <command>` (agent or proxy) with the
// config at cfgPath, logging at trace level into dir/<command>.log; it is
// stopped by its pid when the test ends.
func startVaultCommand(t *testing.T, bin, command, dir, cfgPath string) *agentProc {
	t.Helper()
	logPath := filepath.Join(dir, command+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, command, "-config="+cfgPath, "-log-level=trace")
	cmd.Env = append(cleanEnv(), "HOME="+dir)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting vault %s: %v", command, err)
	}
	a := &agentProc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(a.done)
	}()
	t.Cleanup(a.stop)
	t.Logf("vault %s pid %d, config %s", command, cmd.Process.Pid, cfgPath)
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
	StopProcess(a.cmd.Process, a.done, 10*time.Second)
}

func (a *agentProc) log() string {
	b, _ := os.ReadFile(a.logPath)
	return string(b)
}

// agentLease is a lease of creds/app, from sys/leases.
type agentLease struct {
	issued time.Time
	ttl    time.Duration // its expiry less its issue time when first seen
}

// collectLeases adds the leases of path issued since since, by lease id: the
// test polls every 200 ms, and a lease lives at least 1 s. A lease renewed
// before the test saw it shows its renewed end, which for this plugin is its
// first end (renewals never extend past the token's usable end).
func collectLeases(path string, leases map[string]agentLease, since time.Time) {
	known := func(id string) bool { _, ok := leases[id]; return ok }
	for _, l := range lookupLeases(path+"/", known) {
		if !l.issued.Before(since) {
			leases[l.id] = agentLease{issued: l.issued, ttl: l.expires.Sub(l.issued).Round(100 * time.Millisecond)}
		}
	}
}

// leaseLookup is what sys/leases/lookup says of one lease.
type leaseLookup struct {
	id                       string
	issued, expires, renewed time.Time // renewed: zero before the first renewal
}

// lookupLeases lists the leases under prefix on the shared server and looks
// up each one that skip (if not nil) does not rule out; a lease gone between
// the list and its lookup is left out.
func lookupLeases(prefix string, skip func(id string) bool) []leaseLookup {
	l := vault.Client.Logical()
	s, err := l.List("sys/leases/lookup/" + prefix)
	if err != nil || s == nil {
		return nil
	}
	var out []leaseLookup
	keys, _ := s.Data["keys"].([]any)
	for _, k := range keys {
		id := prefix + fmt.Sprint(k)
		if skip != nil && skip(id) {
			continue
		}
		info, err := l.Write("sys/leases/lookup", map[string]any{"lease_id": id})
		if err != nil || info == nil {
			continue
		}
		issued, err1 := time.Parse(time.RFC3339Nano, fmt.Sprint(info.Data["issue_time"]))
		expires, err2 := time.Parse(time.RFC3339Nano, fmt.Sprint(info.Data["expire_time"]))
		if err1 != nil || err2 != nil {
			continue
		}
		lk := leaseLookup{id: id, issued: issued, expires: expires}
		if v, ok := info.Data["last_renewal"].(string); ok && v != "" {
			lk.renewed, _ = time.Parse(time.RFC3339Nano, v)
		}
		out = append(out, lk)
	}
	return out
}

// agentRead is one read of creds/<name> by Agent (consul-template's
// vault.read dependency), from its trace log: "vault.read(P): GET /v1/P".
type agentRead struct {
	at time.Time
	// fate is what consul-template's view did with the answer:
	// "kept" ("(view) vault.read(P) received data": the runner renders
	// it), "dropped" ("no new data (index was the same)": the view
	// discards an answer that comes in the same wall-clock second as the
	// one before, since a Vault answer's index is time.Now().Unix()), or
	// "same" ("no new data (contents were the same)").
	fate string
	// renewals are those of this read's lease, by the LifetimeWatcher that
	// consul-template starts on the next fetch of a renewable secret
	// ("starting renewer"): "successfully renewed", or "failed to renew:
	// <error>" followed by "renewer done (maybe the lease expired)" and a
	// new read.
	renewals []agentRenewal
	// rendered is when the runner wrote the file after this read and
	// before the next one ("(runner) rendered"); zero if it did not.
	rendered time.Time
	sleep    time.Duration // a non-renewable answer's wait before the next read; 0 if none
	lease    time.Duration // the answer's lease from sys/leases; 0 if none found
}

type agentRenewal struct {
	at     time.Time
	ok     bool
	reason string // why a renewal failed, from the error's "* " line
}

// agentLog is what Agent's trace log says about one dependency.
type agentLog struct {
	reads []*agentRead
}

var agentLogTime = regexp.MustCompile(`^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z)\s`)

// parseAgentLog reads Agent's trace log for its reads of path, what became
// of each answer, the renewals of each lease and the file's writes. The
// lines (consul-template v0.41, Vault Agent 1.21):
//
//	[TRACE] agent: vault.read(P): GET /v1/P
//	[TRACE] agent: (view) vault.read(P) received data
//	[TRACE] agent: (view) vault.read(P) no new data (index was the same)
//	[TRACE] agent: vault.read(P): starting renewer
//	[TRACE] agent: vault.read(P): successfully renewed
//	[WARN]  agent: vault.read(P): failed to renew: Error making API request. (then "* <error>")
//	[WARN]  agent: vault.read(P): renewer done (maybe the lease expired)
//	[TRACE] agent: vault.read(P): non-renewable secret, set sleep for 15s
//	[INFO]  agent: (runner) rendered "<template>" => "<file>"
func parseAgentLog(log, path string) *agentLog {
	dep := "vault.read(" + path + ")"
	get := dep + ": GET "
	sleep := dep + ": non-renewable secret, set sleep for "
	al := &agentLog{}
	last := func() *agentRead {
		if len(al.reads) == 0 {
			return nil
		}
		return al.reads[len(al.reads)-1]
	}
	var failing *agentRenewal // a failed renewal whose error lines follow
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m := agentLogTime.FindStringSubmatch(line)
		if m == nil {
			if failing != nil && strings.HasPrefix(line, "* ") && failing.reason == "" {
				failing.reason = renewalReason(line[2:])
			}
			continue
		}
		failing = nil
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			continue
		}
		r := last()
		switch {
		case strings.Contains(line, get):
			al.reads = append(al.reads, &agentRead{at: at})
		case r == nil:
		case strings.Contains(line, sleep):
			if d, err := time.ParseDuration(strings.TrimSpace(line[strings.Index(line, sleep)+len(sleep):])); err == nil {
				r.sleep = d
			}
		case strings.Contains(line, "(view) "+dep+" received data") && r.fate == "":
			r.fate = "kept"
		case strings.Contains(line, "(view) "+dep+" no new data (index was the same)") && r.fate == "":
			r.fate = "dropped"
		case strings.Contains(line, "(view) "+dep+" no new data (contents were the same)") && r.fate == "":
			r.fate = "same"
		case strings.Contains(line, dep+": successfully renewed"):
			r.renewals = append(r.renewals, agentRenewal{at: at, ok: true})
		case strings.Contains(line, dep+": failed to renew"):
			r.renewals = append(r.renewals, agentRenewal{at: at})
			failing = &r.renewals[len(r.renewals)-1]
		case strings.Contains(line, "(runner) rendered ") && r.rendered.IsZero():
			r.rendered = at
		}
	}
	return al
}

var pluginError = regexp.MustCompile(`"error":"([^"]*)"`)

// renewalReason shortens a failed renewal's error to its cause.
func renewalReason(s string) string {
	if m := pluginError.FindStringSubmatch(s); m != nil {
		s = m[1]
	}
	if i := strings.Index(s, ":"); i > 0 && i < len(s)-1 {
		s = s[:i]
	}
	return s
}

// matchLeases gives each read the lease issued closest to it, within 1 s.
func (al *agentLog) matchLeases(leases map[string]agentLease) {
	for _, r := range al.reads {
		best := time.Second
		for _, l := range leases {
			d := l.issued.Sub(r.at)
			if d < 0 {
				d = -d
			}
			if d < best {
				best, r.lease = d, l.ttl
			}
		}
	}
}

// attribute finds, for each token of the file, Agent's read that got it: the
// last read sent before Ermeo issued it (the read that made the plugin
// refresh). The first token was issued by the account write, before Agent
// started: its first read is Agent's first.
func (al *agentLog) attribute(spans []*tokenSpan) {
	for _, sp := range spans {
		sp.first = -1
		if sp.n == 1 && len(al.reads) > 0 {
			sp.first = 0
			continue
		}
		for i, r := range al.reads {
			if !r.at.After(sp.issued) {
				sp.first = i
			}
		}
	}
}

// readsOf returns the indexes of the reads that answered span i's token:
// from the read that got it up to the one that got the next token.
func (al *agentLog) readsOf(spans []*tokenSpan, i int) (from, to int) {
	from, to = spans[i].first, len(al.reads)
	if i+1 < len(spans) && spans[i+1].first >= 0 {
		to = spans[i+1].first
	}
	if from < 0 {
		return 0, 0
	}
	return from, to
}

// whyLate says, from Agent's log, why the file showed next's token only
// when it did: which read got it, what the view did with the answer, and
// what Agent did until it wrote the file.
func (al *agentLog) whyLate(next *tokenSpan) string {
	if next.first < 0 || next.first >= len(al.reads) {
		return "Agent's log shows no read that got the next token"
	}
	r := al.reads[next.first]
	var b strings.Builder
	fmt.Fprintf(&b, "Agent's read at %s got token #%d (Ermeo issued it at %s)", clock(r.at), next.n, clock(next.issued))
	switch r.fate {
	case "dropped":
		prev := time.Time{}
		for i := next.first - 1; i >= 0; i-- {
			if f := al.reads[i].fate; f == "kept" || f == "same" {
				prev = al.reads[i].at
				break
			}
		}
		fmt.Fprintf(&b, ", but consul-template's view dropped that answer (\"no new data (index was the same)\": the answer before, read at %s, came in the same second)", clock(prev))
	case "kept":
		b.WriteString(" and its view kept the answer")
	default:
		fmt.Fprintf(&b, " (view: %q)", r.fate)
	}
	var ok, failed int
	var written time.Time
	for _, x := range al.reads[next.first:] {
		if !x.rendered.IsZero() {
			written = x.rendered
			break
		}
		for _, rn := range x.renewals {
			if rn.ok {
				ok++
			} else {
				failed++
			}
		}
	}
	if len(r.renewals) > 0 && r.renewals[0].ok {
		fmt.Fprintf(&b, "; its LifetimeWatcher renewed the new lease at once (%s), slept about 2/3 of it", clock(r.renewals[0].at))
	}
	fmt.Fprintf(&b, "; %d more read(s), %d renewal(s) ok and %d failed before the runner wrote the file", countReadsUntil(al.reads[next.first+1:], written), ok, failed)
	if !written.IsZero() {
		fmt.Fprintf(&b, " (\"(runner) rendered\" at %s, %.1fs after the read that got the token)", clock(written), written.Sub(r.at).Seconds())
	}
	return b.String()
}

func countReadsUntil(reads []*agentRead, until time.Time) int {
	n := 0
	for _, r := range reads {
		if !until.IsZero() && r.at.After(until) {
			break
		}
		n++
	}
	return n
}

// agentLogNoise are lines of Agent's log about a dependency that say
// nothing about its reads, renewals or writes.
var agentLogNoise = []string{"marking successful data response", "successful contact, resetting retries",
	"starting fetch", "(runner) receiving dependency", "is still needed"}

// agentLogExcerpt is the lines of Agent's log about path (and the runner's
// writes, warnings, errors and the errors' detail lines) within window, or
// the last 60 of them when window is empty, for a failed test.
func agentLogExcerpt(log, path string, window [2]time.Time) string {
	var keep []string
	in := false
	for _, line := range strings.Split(log, "\n") {
		m := agentLogTime.FindStringSubmatch(line)
		if m == nil {
			if in && strings.HasPrefix(line, "* ") {
				if len(line) > 200 {
					line = line[:200] + "..."
				}
				keep = append(keep, "    "+line)
			}
			continue
		}
		at, _ := time.Parse(time.RFC3339Nano, m[1])
		in = window[0].IsZero() || (!at.Before(window[0]) && !at.After(window[1]))
		noise := false
		for _, n := range agentLogNoise {
			noise = noise || strings.Contains(line, n)
		}
		if in && !noise && (strings.Contains(line, "vault.read("+path+")") || strings.Contains(line, "(runner) rendered ") ||
			strings.Contains(line, "[WARN]") || strings.Contains(line, "[ERROR]")) {
			keep = append(keep, line)
		}
	}
	if window[0].IsZero() {
		return tail(strings.Join(keep, "\n"), 60)
	}
	return fmt.Sprintf("(%s to %s)\n%s", clock(window[0]), clock(window[1]), strings.Join(keep, "\n"))
}

// spread is the count, mean, min and max of some figures.
type spread struct{ v []float64 }

func (s *spread) add(x float64) { s.v = append(s.v, x) }

func (s spread) String() string {
	if len(s.v) == 0 {
		return "none"
	}
	v := append([]float64(nil), s.v...)
	sort.Float64s(v)
	sum := 0.0
	for _, x := range v {
		sum += x
	}
	return fmt.Sprintf("%.1f (%.1f to %.1f)", sum/float64(len(v)), v[0], v[len(v)-1])
}

func agentReport(name, answer string, spans []*tokenSpan, al *agentLog, refreshes int, elapsed time.Duration, lease bool, serverFailed int) string {
	var b strings.Builder
	sec := func(d time.Duration) string {
		if d < 0 && d > -50*time.Millisecond { // a read logged just before Ermeo issued the token it got
			d = 0
		}
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	fmt.Fprintf(&b, "\n=== %s: what vault agent did (token TTL %s, min_ttl %s)\n", name, agentTokenTTL, agentMinTTL)
	fmt.Fprintf(&b, "plugin's answer to creds/app: %s\n", answer)
	var reads, renewedOK, renewedFailed, left, lag spread
	var dropped, droppedNew, expiredInFile, failedTotal int
	for i, sp := range spans {
		fmt.Fprintf(&b, "token #%d: issued %s", sp.n, clock(sp.issued))
		if sp.n == 1 {
			b.WriteString(" (account write)")
		}
		fmt.Fprintf(&b, ", in the file from age %s", sec(sp.seen.Sub(sp.issued)))
		if !sp.replaced.IsZero() {
			fmt.Fprintf(&b, " to age %s (replaced with %s of life left)", sec(sp.replaced.Sub(sp.issued)), sec(sp.left()))
			left.add(sp.left().Seconds())
			if sp.left() <= 0 {
				expiredInFile++
			}
		} else {
			b.WriteString(" to the end")
		}
		fmt.Fprintf(&b, "; %d polls, %d rejected\n", sp.polls, sp.rejected)
		from, to := al.readsOf(spans, i)
		if from < to && sp.n > 1 {
			lag.add(sp.seen.Sub(al.reads[from].at).Seconds())
			if al.reads[from].fate == "dropped" {
				droppedNew++
			}
		}
		ok, failed := 0, 0
		for j := from; j < to; j++ {
			r := al.reads[j]
			what := "same token"
			if j == from && sp.n > 1 {
				what = "refreshed: got this token"
			}
			fmt.Fprintf(&b, "    read at age %5s (%5s left): %s", sec(r.at.Sub(sp.issued)), sec(sp.expires.Sub(r.at)), what)
			switch {
			case r.lease > 0:
				fmt.Fprintf(&b, ", lease %s", sec(r.lease))
			case lease:
				b.WriteString(", lease not seen")
			default:
				b.WriteString(", no lease")
			}
			switch r.fate {
			case "dropped":
				dropped++
				b.WriteString(", answer DROPPED by the view (index was the same)")
			case "same":
				b.WriteString(", answer dropped (contents were the same)")
			case "":
				b.WriteString(", view's decision not logged")
			}
			if r.sleep > 0 {
				fmt.Fprintf(&b, ", agent waits %s", sec(r.sleep))
				if r.lease > 0 {
					fmt.Fprintf(&b, " = %.0f%% of the lease", 100*float64(r.sleep)/float64(r.lease))
				}
			}
			if len(r.renewals) > 0 {
				b.WriteString("; renewals:")
				for _, rn := range r.renewals {
					if rn.ok {
						fmt.Fprintf(&b, " ok +%s", sec(rn.at.Sub(r.at)))
						ok++
					} else {
						fmt.Fprintf(&b, " FAILED +%s (%s)", sec(rn.at.Sub(r.at)), rn.reason)
						failed++
						failedTotal++
					}
				}
			}
			if !r.rendered.IsZero() {
				fmt.Fprintf(&b, "; file written at age %s", sec(r.rendered.Sub(sp.issued)))
			}
			b.WriteString("\n")
		}
		// Figures per token: only for tokens whose whole life Agent saw
		// (a successor's read ends the list).
		if i+1 < len(spans) && from < to {
			reads.add(float64(to - from))
			renewedOK.add(float64(ok))
			renewedFailed.add(float64(failed))
		}
	}
	fmt.Fprintf(&b, "summary: %d agent reads, %d tokens in the file, %d refreshes at Ermeo in %s = %.2f token lifetimes (bound elapsed/(TTL - min_ttl) + 1 = %.2f)\n",
		len(al.reads), len(spans), refreshes, elapsed.Round(100*time.Millisecond),
		float64(elapsed)/float64(agentTokenTTL), float64(elapsed)/float64(agentTokenTTL-agentMinTTL)+1)
	fmt.Fprintf(&b, "figures: reads per token %s; renewals per token ok %s, failed %s; life left when replaced (s) %s; "+
		"new token in the file after the read that got it (s) %s; refreshes per token lifetime %.2f\n",
		reads, renewedOK, renewedFailed, left, lag, float64(refreshes)/(float64(elapsed)/float64(agentTokenTTL)))
	if lease {
		fmt.Fprintf(&b, "figures: %d answers dropped by consul-template's view (index was the same), %d of them the read that got a new token; "+
			"%d of %d replaced tokens were still in the file after they expired; %d failed renewals in Agent's log, %d in Vault's server log (\"lease renewal failed\")\n",
			dropped, droppedNew, expiredInFile, len(left.v), failedTotal, serverFailed)
	}
	return b.String()
}
