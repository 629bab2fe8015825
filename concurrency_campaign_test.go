package ermeosecrets

import (
	"context"
	"fmt"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"go.uber.org/goleak"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/lockorder"
)

// The concurrency campaign: many goroutines drive every entry point of one
// backend at once, on the injected clock, against the fake Ermeo with random
// delays: creds reads, lease renewals, config writes (with and without a new
// connection, verify_connection on and off, each body_format), account
// writes, adoptions and deletes, rotations, periodic ticks, Invalidate, and
// initialize/clean cycles. A watchdog fails the run, with every goroutine's
// stack, when no request completes for 10 s of real time. After each
// schedule: no refresh token sent twice, no chain lost by the plugin (every
// stored account active, its refresh token live at Ermeo), no lock-order
// inversion (with -tags lockorder), and no goroutine of the backend left
// after clean (goleak).
//
// ERMEO_CONCURRENCY_SCHEDULES (default 30) and ERMEO_CONCURRENCY_SEED set
// its size and seed; `make chaos` runs a longer one.

const (
	concurrencyWorkers  = 6
	concurrencyOps      = 25 // per worker and schedule
	concurrencyStallFor = 10 * time.Second
)

var concurrencyAccounts = []string{"a", "b", "c"}

type concurrencyStats struct {
	schedules, requests, failed, refreshes int
	// failures by kind: "400 accounts/<name>", "502 creds/<name>", ...
	failures                map[string]int
	ops                     map[string]int
	longest                 time.Duration
	longestOp               string
	inversions              int64
	stalls                  int
	usedTwice, lostByPlugin int
}

func TestConcurrencyCampaign(t *testing.T) {
	schedules := int(envInt("ERMEO_CONCURRENCY_SCHEDULES", 30))
	seed := envInt("ERMEO_CONCURRENCY_SEED", time.Now().UnixNano())
	fmt.Printf("concurrency campaign: %d schedules of %d goroutines x %d requests, seed %d (ERMEO_CONCURRENCY_SEED=%d to replay)\n",
		schedules, concurrencyWorkers, concurrencyOps, seed, seed)
	total := concurrencyStats{ops: map[string]int{}, failures: map[string]int{}}
	start := time.Now()
	for i := 0; i < schedules; i++ {
		s := seed + int64(i)
		ok := t.Run(fmt.Sprintf("schedule-%d", i), func(t *testing.T) {
			runConcurrencySchedule(t, s, &total)
		})
		total.schedules++
		if !ok {
			printConcurrencyTable(seed, &total, time.Since(start))
			t.Fatalf("schedule %d failed: replay with ERMEO_CONCURRENCY_SEED=%d ERMEO_CONCURRENCY_SCHEDULES=1", i, s)
		}
	}
	printConcurrencyTable(seed, &total, time.Since(start))
}

func printConcurrencyTable(seed int64, s *concurrencyStats, took time.Duration) {
	var ops []string
	for _, op := range concurrencyOpNames {
		ops = append(ops, fmt.Sprintf("%s %d", op, s.ops[op]))
	}
	var failures []string
	for k, v := range s.failures {
		failures = append(failures, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(failures)
	checked := "checked (-tags lockorder)"
	if !lockorder.Checked {
		checked = "NOT checked (built without -tags lockorder)"
	}
	fmt.Printf(`concurrency campaign (seed %d, %s)
  schedules                      %d
  requests (failed)              %d (%d)
    by entry point               %s
    failed, by answer            %s
  refreshes at the fake          %d
  longest wait for one request   %s (%s)
  lock-order inversions          %d   (%s)
  stalls (10 s without progress) %d
  tokens used twice              %d
  chains lost by the plugin      %d
`, seed, took.Round(time.Millisecond), s.schedules, s.requests, s.failed, strings.Join(ops, ", "), strings.Join(failures, ", "), s.refreshes,
		s.longest.Round(time.Millisecond), s.longestOp, s.inversions, checked, s.stalls, s.usedTwice, s.lostByPlugin)
}

var concurrencyOpNames = []string{"creds", "renew", "config", "account", "adopt", "delete", "rotate", "tick", "invalidate", "init/clean", "clock"}

// concurrencyOpWeights: how often each entry point is drawn (same order).
var concurrencyOpWeights = []int{28, 8, 8, 7, 4, 3, 8, 10, 6, 5, 8}

// slowErmeo delays each request to the fake by a random real time: mostly
// short, sometimes long enough for every other entry point to run meanwhile.
type slowErmeo struct {
	fake *fakeermeo.Server
	mu   sync.Mutex
	rng  *rand.Rand
}

func (s *slowErmeo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	var d time.Duration
	switch p := s.rng.Intn(100); {
	case p < 70:
		d = time.Duration(s.rng.Intn(5)) * time.Millisecond
	case p < 95:
		d = time.Duration(5+s.rng.Intn(45)) * time.Millisecond
	default:
		d = time.Duration(200+s.rng.Intn(300)) * time.Millisecond
	}
	s.mu.Unlock()
	time.Sleep(d)
	s.fake.ServeHTTP(w, r)
}

type concurrencyRun struct {
	t     *testing.T
	e     *testEnv
	urls  []string // the fake, directly and behind slowErmeo: two connections
	stats *concurrencyStats

	mu       sync.Mutex
	lastDone time.Time
	leases   []*logical.Secret
}

// do runs one request as Vault would (existence check, then the request),
// and records its time.
func (r *concurrencyRun) do(op logical.Operation, path string, data map[string]any, secret *logical.Secret) {
	ctx := context.Background()
	req := &logical.Request{Operation: op, Path: path, Data: data, Storage: r.e.view, MountPoint: testMount, Secret: secret}
	start := time.Now()
	if op == logical.UpdateOperation {
		if found, exists, err := r.e.b.HandleExistenceCheck(ctx, req); err == nil && found && !exists {
			req.Operation = logical.CreateOperation
		}
	}
	resp, err := r.e.b.HandleRequest(ctx, req)
	failure := ""
	switch code := rawErrorCode(resp); {
	case err != nil:
		failure = "error"
	case code >= 400:
		failure = fmt.Sprint(code)
	case resp.IsError():
		failure = "400"
	}
	if failure != "" {
		failure += " " + concurrencyPathKind(path, op)
	}
	r.finish(path, start, failure, resp)
}

func rawErrorCode(resp *logical.Response) int {
	code, _, _ := rawError(resp)
	return code
}

// concurrencyPathKind names a request without its account: "creds read".
func concurrencyPathKind(path string, op logical.Operation) string {
	for _, name := range concurrencyAccounts {
		path = strings.Replace(path, "/"+name, "/<name>", 1)
	}
	return string(op) + " " + path
}

func (r *concurrencyRun) finish(what string, start time.Time, failure string, resp *logical.Response) {
	took := time.Since(start)
	failed := failure != ""
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastDone = time.Now()
	r.stats.requests++
	if failed {
		r.stats.failed++
		r.stats.failures[failure]++
	}
	if took > r.stats.longest {
		r.stats.longest, r.stats.longestOp = took, what
	}
	if !failed && resp != nil && resp.Secret != nil && strings.HasPrefix(what, "creds/") {
		s := *resp.Secret
		s.IssueTime = r.e.clock.Now()
		r.leases = append(r.leases, &s)
	}
}

func (r *concurrencyRun) lease(rng *rand.Rand) *logical.Secret {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.leases) == 0 {
		return nil
	}
	s := *r.leases[rng.Intn(len(r.leases))]
	return &s
}

// freshRefreshToken is a chain an operator started outside Vault.
func (r *concurrencyRun) freshRefreshToken() string {
	c, err := ermeo.New(ermeo.Config{APIURL: r.urls[0], ClientID: testClientID, ClientSecret: testClientSecret, HTTPClient: r.e.http})
	if err != nil {
		return ""
	}
	tok, err := c.PasswordGrant(context.Background(), testUser, testPassword)
	if err != nil {
		return ""
	}
	return tok.RefreshToken
}

func (r *concurrencyRun) step(rng *rand.Rand, op string) {
	name := concurrencyAccounts[rng.Intn(len(concurrencyAccounts))]
	switch op {
	case "creds":
		r.do(logical.ReadOperation, "creds/"+name, nil, nil)
	case "renew":
		if s := r.lease(rng); s != nil {
			r.do(logical.RenewOperation, "creds/"+name, nil, s)
		}
	case "config":
		data := map[string]any{"verify_connection": rng.Intn(2) == 0}
		if rng.Intn(2) == 0 {
			data["api_url"] = r.urls[rng.Intn(len(r.urls))]
		}
		if rng.Intn(3) == 0 {
			data["body_format"] = []string{"auto", "json", "form"}[rng.Intn(3)]
		}
		if rng.Intn(3) == 0 {
			data["default_rotation_period"] = []string{"24h", "72h", "168h"}[rng.Intn(3)]
		}
		r.do(logical.UpdateOperation, "config", data, nil)
	case "account":
		r.do(logical.UpdateOperation, "accounts/"+name, map[string]any{"username": testUser, "password": testPassword,
			"store_password": rng.Intn(2) == 0}, nil)
	case "adopt":
		if tok := r.freshRefreshToken(); tok != "" {
			r.do(logical.UpdateOperation, "accounts/"+name, map[string]any{"username": testUser, "refresh_token": tok}, nil)
		}
	case "delete":
		r.do(logical.DeleteOperation, "accounts/"+name, nil, nil)
	case "rotate":
		r.do(logical.UpdateOperation, "accounts/"+name+"/rotate", nil, nil)
	case "tick":
		start := time.Now()
		err := r.e.b.periodic(context.Background(), &logical.Request{Storage: r.e.view, MountPoint: testMount})
		r.finish("periodic tick", start, failureOf(err, "periodic tick"), nil)
	case "invalidate":
		key := "config"
		if rng.Intn(2) == 0 {
			key = accountPrefix + name
		}
		start := time.Now()
		r.e.b.invalidate(context.Background(), key)
		r.finish("Invalidate", start, "", nil)
	case "init/clean":
		start := time.Now()
		err := r.e.b.initialize(context.Background(), &logical.InitializationRequest{Storage: r.e.view})
		time.Sleep(time.Duration(rng.Intn(3)) * time.Millisecond)
		r.e.b.clean(context.Background())
		r.finish("initialize/clean", start, failureOf(err, "initialize"), nil)
	case "clock":
		r.e.clock.Advance(time.Duration(rng.Intn(25)) * time.Minute)
	}
}

func runConcurrencySchedule(t *testing.T, seed int64, total *concurrencyStats) {
	rng := rand.New(rand.NewSource(seed))
	inversionsBefore := lockorder.Inversions()
	e := newTestEnv(t, fakeermeo.Options{})
	slow := httptest.NewServer(&slowErmeo{fake: e.fake, rng: rand.New(rand.NewSource(seed))})
	leaks := goleak.IgnoreCurrent() // the test servers' own; the backend has none yet
	run := &concurrencyRun{t: t, e: e, urls: []string{e.url, slow.URL}, stats: &concurrencyStats{ops: map[string]int{}, failures: map[string]int{}}, lastDone: time.Now()}
	e.must(logical.UpdateOperation, "config", map[string]any{"api_url": slow.URL, "client_id": testClientID, "client_secret": testClientSecret})
	for _, name := range concurrencyAccounts {
		e.createAccount(name, map[string]any{"store_password": rng.Intn(2) == 0})
	}
	if err := e.b.initialize(context.Background(), &logical.InitializationRequest{Storage: e.view}); err != nil {
		t.Fatal(err)
	}

	// Each worker's requests are drawn up front from the schedule's seed.
	plans := make([][]string, concurrencyWorkers)
	weightSum := 0
	for _, w := range concurrencyOpWeights {
		weightSum += w
	}
	for w := range plans {
		for i := 0; i < concurrencyOps; i++ {
			n := rng.Intn(weightSum)
			for k, wt := range concurrencyOpWeights {
				if n < wt {
					plans[w] = append(plans[w], concurrencyOpNames[k])
					run.stats.ops[concurrencyOpNames[k]]++
					break
				}
				n -= wt
			}
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var finished atomic.Int64
	for w, plan := range plans {
		wg.Add(1)
		go func(wrng *rand.Rand, plan []string) {
			defer wg.Done()
			defer finished.Add(1)
			for _, op := range plan {
				run.step(wrng, op)
			}
		}(rand.New(rand.NewSource(seed*31+int64(w))), plan)
	}
	go func() { wg.Wait(); close(done) }()

	watch := time.NewTicker(100 * time.Millisecond)
	defer watch.Stop()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-watch.C:
			run.mu.Lock()
			idle := time.Since(run.lastDone)
			run.mu.Unlock()
			if idle > concurrencyStallFor {
				total.stalls++
				t.Fatalf("stall: no request completed for %s, %d of %d goroutines still running (seed %d)\n%s",
					idle.Round(time.Second), concurrencyWorkers-int(finished.Load()), concurrencyWorkers, seed, allStacks())
			}
		}
	}
	e.b.clean(context.Background())

	// The chain invariants.
	c := e.fake.Counters()
	run.stats.refreshes = c.Grants["refresh_token"]["success"]
	run.stats.usedTwice = c.RefreshTokensUsedTwice + c.ReplaysAfterLostAnswer + c.ConcurrentRefreshesOfOneToken
	if run.stats.usedTwice != 0 {
		t.Errorf("refresh tokens sent twice: %d used twice, %d after a lost answer, %d concurrently (seed %d)",
			c.RefreshTokensUsedTwice, c.ReplaysAfterLostAnswer, c.ConcurrentRefreshesOfOneToken, seed)
	}
	for _, name := range concurrencyAccounts {
		a, err := loadAccount(context.Background(), e.storage, name)
		if err != nil {
			t.Fatal(err)
		}
		if a == nil {
			continue // deleted
		}
		if a.State != stateActive || a.RotationIntent != nil || !e.fake.RefreshTokenLive(a.RefreshToken) {
			run.stats.lostByPlugin++
			t.Errorf("account %s: the plugin lost its chain (state %s, intent %v, refresh token live %v, last error %q; seed %d)",
				name, a.State, a.RotationIntent != nil, e.fake.RefreshTokenLive(a.RefreshToken), a.LastError, seed)
		}
	}
	run.stats.inversions = lockorder.Inversions() - inversionsBefore
	if run.stats.inversions != 0 {
		t.Errorf("%d lock-order inversions (reports on stderr; seed %d)", run.stats.inversions, seed)
	}
	slow.Close()
	e.http.CloseIdleConnections()
	if err := goleak.Find(leaks); err != nil {
		t.Errorf("goroutines left after clean (seed %d): %v", seed, err)
	}

	total.requests += run.stats.requests
	total.failed += run.stats.failed
	total.refreshes += run.stats.refreshes
	total.usedTwice += run.stats.usedTwice
	total.lostByPlugin += run.stats.lostByPlugin
	total.inversions += run.stats.inversions
	for k, v := range run.stats.ops {
		total.ops[k] += v
	}
	for k, v := range run.stats.failures {
		total.failures[k] += v
	}
	if run.stats.longest > total.longest {
		total.longest, total.longestOp = run.stats.longest, run.stats.longestOp
	}
}

// failureOf is err's failure kind for the table, or "".
func failureOf(err error, what string) string {
	if err == nil {
		return ""
	}
	return "error " + what
}
