package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The Python application (examples/python/app.py) runs for about two token
// lifetimes of 8 s, calling Ermeo's profile every 250 ms. With min_ttl 3 s
// the plugin hands out a token for at most 5 s before it refreshes it, so the
// app sees at least 3 tokens, and must read creds again at least as often.
const (
	pyTokenTTL = 8 * time.Second
	pyMinTTL   = 3 * time.Second
	pyRun      = 18 * time.Second
	pyInterval = 250 * time.Millisecond
)

var (
	pythonOnce sync.Once
	pythonBin  string
	pythonWhy  string
)

// findPython returns a python3 that imports hvac, from scripts/python-hvac.sh
// (which, as root on Debian, installs python3-hvac), or "" and why not.
func findPython() (string, string) {
	pythonOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			pythonWhy = err.Error()
			return
		}
		cmd := exec.Command("bash", filepath.Join(root, "scripts", "python-hvac.sh"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			pythonWhy = fmt.Sprintf("scripts/python-hvac.sh: %v: %s", err, strings.TrimSpace(stderr.String()))
			return
		}
		pythonBin = strings.TrimSpace(string(out))
	})
	return pythonBin, pythonWhy
}

// requirePython skips the test without python/hvac, or fails it when the
// dependencies are required (ERMEO_E2E_REQUIRED, or CI=true).
func requirePython(t *testing.T) string {
	t.Helper()
	bin, why := findPython()
	if bin != "" {
		return bin
	}
	if os.Getenv("ERMEO_E2E_REQUIRED") != "" || os.Getenv("CI") == "true" {
		t.Fatalf("python with hvac required (ERMEO_E2E_REQUIRED or CI=true) but: %s", why)
	}
	t.Skip("no python3 with hvac: " + why)
	return ""
}

// profileCounter stands in front of the fake Ermeo and counts the calls to
// its profile route by HTTP status and by access token. The fake counts only
// its token endpoint.
type profileCounter struct {
	next     http.Handler
	mu       sync.Mutex
	byStatus map[int]int
	byToken  map[string]int
	calls    int
}

var bearerRe = regexp.MustCompile(`^Bearer (\S+)$`)

func (p *profileCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != fakeermeo.ProfilePath {
		p.next.ServeHTTP(w, r)
		return
	}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	p.next.ServeHTTP(rec, r)
	tok := ""
	if m := bearerRe.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		tok = m[1]
	}
	p.mu.Lock()
	p.calls++
	p.byStatus[rec.status]++
	p.byToken[tok]++
	p.mu.Unlock()
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// pyLine is one JSON line the app printed; the fields of every event.
type pyLine struct {
	Event  string  `json:"event"`
	Status *int    `json:"status"`
	Token  int     `json:"token"`
	Kind   string  `json:"kind"`
	Dur    float64 `json:"duration"`
	// summary
	Calls         int     `json:"calls"`
	Accepted      int     `json:"accepted"`
	Rejected      int     `json:"rejected"`
	Failed        int     `json:"failed"`
	CredsReads    int     `json:"creds_reads"`
	CredsFailures int     `json:"creds_failures"`
	Tokens        int     `json:"tokens"`
	Logins        int     `json:"logins"`
	Seconds       float64 `json:"seconds"`
}

// TestPythonAppKeepsAValidToken runs examples/python/app.py, an application
// that logs in with AppRole through hvac under the example policy, reads
// <mount>/creds/app and calls Ermeo's profile with the token, against the
// real Vault and a fake Ermeo that issues 8 s tokens, for about two token
// lifetimes. Every call must be accepted (by the app's lines and by the
// counts at the profile route), the app must have read creds more than once
// and used more than one token, and nothing it printed may hold a token or
// secret. Once with a lease, once with the account option lease=false (ttl).
func TestPythonAppKeepsAValidToken(t *testing.T) {
	t.Parallel() // beside the Agent test and the soak (see there)
	if vault == nil {
		t.Skip("e2e: " + skipReason)
	}
	py := requirePython(t)
	for _, mode := range []struct {
		name  string
		lease bool
	}{{"lease", true}, {"no-lease", false}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			runPythonApp(t, py, mode.lease)
		})
	}
}

func runPythonApp(t *testing.T, py string, lease bool) {
	e := newEnv(t, fakeermeo.Options{AccessTokenTTL: pyTokenTTL})
	e.configure()
	acct := map[string]any{"username": testUser, "password": testPassword, "min_ttl": int(pyMinTTL.Seconds())}
	if !lease {
		acct["lease"] = false
	}
	e.mustWrite("accounts/app", acct)
	role := newAppRole(t, e)

	counter := &profileCounter{next: e.fake, byStatus: map[int]int{}, byToken: map[string]int{}}
	front := httptest.NewServer(counter)
	t.Cleanup(front.Close)

	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret-id")
	writeFile(t, secretFile, role.secretID+"\n")

	ctx, cancel := context.WithTimeout(context.Background(), pyRun+60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, filepath.Join(root, "examples", "python", "app.py"))
	// Ended by its pid only: SIGTERM (the app then prints its summary), and
	// SIGKILL 5 s later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	// HOME is the test's: hvac must not find a ~/.vault-token. No VAULT_*
	// but the address (cleanEnv).
	cmd.Env = append(cleanEnv(),
		"HOME="+dir,
		"NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost",
		"PYTHONDONTWRITEBYTECODE=1",
		"VAULT_ADDR="+vault.Addr,
		"VAULT_APPROLE_MOUNT="+role.mount,
		"ROLE_ID="+role.roleID,
		"SECRET_ID_FILE="+secretFile,
		"ERMEO_MOUNT="+e.mount,
		"ERMEO_ACCOUNT=app",
		"ERMEO_API_URL="+front.URL,
		fmt.Sprintf("APP_RUN_SECONDS=%g", pyRun.Seconds()),
		fmt.Sprintf("APP_INTERVAL_MS=%d", pyInterval.Milliseconds()),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	started := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(started)
	out := stdout.String()
	if runErr != nil {
		t.Errorf("app.py: %v (after %s)\nstderr:\n%s\nlast lines:\n%s", runErr, elapsed.Round(time.Millisecond), stderr.String(), tail(out, 20))
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Logf("app.py stderr:\n%s", s)
	}

	// The app's lines.
	var calls, creds []pyLine
	var summary *pyLine
	badStatus := 0
	for i, raw := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		var l pyLine
		if err := json.Unmarshal([]byte(raw), &l); err != nil || l.Event == "" {
			t.Errorf("line %d is not a JSON event: %q", i+1, raw)
			continue
		}
		switch l.Event {
		case "call":
			calls = append(calls, l)
			if l.Status == nil || *l.Status != http.StatusOK {
				if badStatus == 0 {
					t.Errorf("line %d: a call that was not accepted: %s", i+1, raw)
				}
				badStatus++
			}
		case "creds":
			creds = append(creds, l)
		case "summary":
			summary = &l
		case "error":
			t.Errorf("line %d: the app reports an error: %s", i+1, raw)
		}
	}
	if summary == nil {
		t.Fatalf("the app printed no summary:\n%s", tail(out, 20))
	}

	// What the profile route saw.
	counter.mu.Lock()
	seenCalls, seenOK, seenTokens := counter.calls, counter.byStatus[http.StatusOK], len(counter.byToken)
	byStatus := fmt.Sprint(counter.byStatus)
	counter.mu.Unlock()

	wantCalls := int(pyRun / pyInterval)
	if len(calls) < wantCalls*3/4 {
		t.Errorf("%d calls in %s, want about %d", len(calls), pyRun, wantCalls)
	}
	if summary.Calls != len(calls) || summary.Accepted != len(calls) || summary.Rejected != 0 || summary.Failed != 0 {
		t.Errorf("summary %+v, for %d call lines: want every call accepted", *summary, len(calls))
	}
	if seenCalls != len(calls) || seenOK != seenCalls {
		t.Errorf("the profile route saw %d calls (by status %s), the app printed %d: want the same, all 200", seenCalls, byStatus, len(calls))
	}
	if summary.CredsReads != len(creds) || summary.CredsReads < 2 {
		t.Errorf("creds reads: summary %d, %d creds lines: want the same, and more than 1 (the app renews)", summary.CredsReads, len(creds))
	}
	// Each token lives 8 s and is handed out at most 5 s: 18 s need 3.
	minTokens := int(pyRun / (pyTokenTTL - pyMinTTL))
	if summary.Tokens < minTokens || seenTokens != summary.Tokens {
		t.Errorf("tokens: the app used %d, the profile route saw %d: want the same, at least %d", summary.Tokens, seenTokens, minTokens)
	}
	wantKind := "lease"
	if !lease {
		wantKind = "ttl"
	}
	for _, c := range creds {
		if c.Kind != wantKind {
			t.Errorf("a creds read of kind %q (duration %gs), want %q", c.Kind, c.Dur, wantKind)
			break
		}
	}
	c := e.fake.Counters()
	if c.RefreshTokensUsedTwice != 0 {
		t.Errorf("refresh tokens used twice: %d", c.RefreshTokensUsedTwice)
	}

	// Nothing the app printed holds a token or a secret.
	secrets := append(e.fake.IssuedAccessTokens(), e.fake.IssuedRefreshTokens()...)
	secrets = append(secrets, role.secretID, testClientSecret, testPassword)
	leaks := 0
	for _, s := range secrets {
		if strings.Contains(out, s) || strings.Contains(stderr.String(), s) {
			leaks++
		}
	}
	if leaks > 0 {
		t.Errorf("the app's output holds %d of %d tokens and secrets", leaks, len(secrets))
	}

	fmt.Printf("python app (%s, %s tokens, min_ttl %s): %d calls in %.1fs, %d accepted (profile route: %d calls, %d accepted), %d creds reads, %d tokens seen, %d refreshes at Ermeo, %d login(s); output searched for %d tokens and secrets: %d found\n",
		map[bool]string{true: "lease", false: "lease=false"}[lease], pyTokenTTL, pyMinTTL,
		summary.Calls, summary.Seconds, summary.Accepted, seenCalls, seenOK,
		summary.CredsReads, summary.Tokens, c.Grants["refresh_token"]["success"], summary.Logins, len(secrets), leaks)
	if t.Failed() {
		t.Logf("app output:\n%s", out)
	}
}
