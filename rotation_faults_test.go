package ermeosecrets

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

type upstreamFault struct {
	name      string
	fault     *fakeermeo.Fault
	timeout   bool // the client gives up before the fake answers
	committed bool // Ermeo spends the refresh token
	answered  bool // and the plugin receives the new pair
}

var upstreamFaults = []upstreamFault{
	{name: "none", committed: true, answered: true},
	{name: "timeout", fault: &fakeermeo.Fault{Kind: fakeermeo.FaultDelay, Delay: 2 * time.Second}, timeout: true},
	{name: "reset", fault: &fakeermeo.Fault{Kind: fakeermeo.FaultReset}},
	{name: "5xx", fault: &fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: 502}},
	{name: "429", fault: &fakeermeo.Fault{Kind: fakeermeo.FaultTooManyRequests, RetryAfter: "120"}},
	{name: "non-JSON", fault: &fakeermeo.Fault{Kind: fakeermeo.FaultNonJSON}},
	{name: "answer lost after commit", fault: &fakeermeo.Fault{Kind: fakeermeo.FaultLostAfterCommit}, committed: true},
}

// The crash points. "After the upstream call" covers both "Ermeo committed
// but the answer never arrived" and "the answer arrived but was not yet
// written": in both, the plugin dies without having acted on the answer.
var crashPoints = []struct {
	name  string
	point crashPoint
}{
	{"no crash", 0},
	{"after the intent record", crashAfterIntent},
	{"after the upstream call, before the write", crashAfterUpstream},
	{"after the write", crashAfterWrite},
}

type storageFault int

const (
	storageOK storageFault = iota
	storageIntentWriteFails
	storageFinalWriteFails
)

func (s storageFault) String() string {
	return [...]string{"storage ok", "intent write fails", "new pair's write fails"}[s]
}

// fails reports whether the fault makes write w fail: the write of an
// account's entry with its intent record, or the one without (the new pair).
func (s storageFault) fails(w storageWrite) bool {
	switch s {
	case storageIntentWriteFails:
		return w.intentWrite()
	case storageFinalWriteFails:
		return w.pairWrite()
	}
	return false
}

// matrixCase is one cell of the fault matrix.
type matrixCase struct {
	crash    crashPoint
	upstream upstreamFault
	storage  storageFault
	kept     bool
}

// expectChainLost says whether the case loses the chain in flight: Ermeo
// spent the token and the new pair never reached storage. Only the network
// or a crash can do that, never the plugin alone.
func (c matrixCase) expectChainLost() bool {
	if c.storage == storageIntentWriteFails || c.crash == crashAfterIntent || !c.upstream.committed {
		return false // nothing was sent, or nothing was spent
	}
	return !c.upstream.answered || // answer lost after commit
		c.crash == crashAfterUpstream || // died holding the answer
		(c.crash == crashAfterWrite && c.storage == storageFinalWriteFails) // died with the pair only in memory
}

// runMatrixCase runs one case and returns how it ended: "usable" or
// "needs_reauth".
func runMatrixCase(t *testing.T, c matrixCase) string {
	e := newTestEnv(t, fakeermeo.Options{})
	faulty := e.wrapStorage()
	e.configure()
	e.createAccount("app", map[string]any{"store_password": c.kept})
	first := e.creds("app").Data["access_token"].(string)
	e.clock.Advance(2*time.Hour - 5*time.Minute) // 5 minutes left; min_ttl is 10

	if c.upstream.timeout {
		e.b.httpClient = &http.Client{Timeout: 100 * time.Millisecond}
	}
	if c.upstream.fault != nil {
		f := *c.upstream.fault
		f.Grant, f.Times = "refresh_token", 1
		e.fake.InjectFault(f)
	}
	if c.storage != storageOK {
		faulty.failPuts(func(w storageWrite) bool { return w.account == "app" && c.storage.fails(w) })
	}
	fired := false
	if c.crash != 0 {
		e.b.crashHook = func(p crashPoint) bool {
			if p == c.crash && !fired {
				fired = true
				return true
			}
			return false
		}
	}

	// Phase 1: the read that needs a refresh, under the faults.
	resp, err := e.request(logical.ReadOperation, "creds/app", nil)
	if fired {
		e.restart() // the plugin process died; Vault starts a new one
	} else if err == nil && !resp.IsError() {
		if tok := resp.Data["access_token"].(string); !e.fake.AccessTokenValid(tok) {
			t.Fatalf("phase 1 served a token the fake refuses")
		}
	}

	// Phase 2: the faults are gone; readers keep coming until the account
	// settles (usable, or needs_reauth with the command to run).
	faulty.failPuts(nil)
	e.fake.ClearFaults()
	e.b.httpClient = e.http
	e.b.crashHook = nil
	outcome := ""
	for i := 0; i < 10 && outcome == ""; i++ {
		e.clock.Advance(3 * time.Minute) // past any backoff, and past the old token's end
		resp, err := e.request(logical.ReadOperation, "creds/app", nil)
		switch {
		case err != nil:
			t.Logf("read %d: %v", i, err)
		case resp.IsError() && strings.Contains(resp.Error().Error(), "vault write ermeo/accounts/app password="):
			outcome = stateNeedsReauth
		case resp.IsError():
			t.Logf("read %d: %v", i, resp.Error())
		case len(resp.Warnings) == 0:
			tok := resp.Data["access_token"].(string)
			if tok == first || !e.fake.AccessTokenValid(tok) {
				t.Fatalf("settled on a stale or invalid token")
			}
			outcome = "usable"
		}
	}
	if outcome == "" {
		t.Fatalf("the account did not settle: %+v", e.stored("app"))
	}

	// A spent token is sent again only to find out that a chain was lost in
	// flight, and then exactly once. (The fake counts a replay after its own
	// dropped answer apart; after a crash that dropped a delivered answer, it
	// cannot tell, and counts the probe as a token used twice.)
	counters := e.fake.Counters()
	a := e.stored("app")
	lost := c.expectChainLost()
	replays := counters.RefreshTokensUsedTwice + counters.ReplaysAfterLostAnswer
	if (lost && replays != 1) || (!lost && replays != 0) {
		t.Errorf("spent tokens sent again: %d used twice + %d after a lost answer; want %d (counters %+v)",
			counters.RefreshTokensUsedTwice, counters.ReplaysAfterLostAnswer, map[bool]int{true: 1, false: 0}[lost], counters)
	}
	switch {
	case lost && !c.kept:
		if outcome != stateNeedsReauth || a.State != stateNeedsReauth {
			t.Errorf("chain lost in flight without a kept password: want needs_reauth, got %s", outcome)
		}
	case lost && c.kept:
		if outcome != "usable" || counters.Grants["password"]["success"] != 2 {
			t.Errorf("chain lost in flight with a kept password: want a re-bootstrap, got %s, grants %v", outcome, counters.Grants)
		}
	default:
		if outcome != "usable" || counters.Grants["password"]["success"] != 1 {
			t.Errorf("the chain must survive: got %s, grants %v", outcome, counters.Grants)
		}
	}
	if a.RotationIntent != nil && outcome == "usable" {
		t.Errorf("a settled account kept its intent record")
	}
	return outcome
}

func TestFaultMatrix(t *testing.T) {
	type tally struct{ cases, usable, reauth, rebootstrapped int }
	summary := map[string]*tally{}
	var mu sync.Mutex
	n := 0
	for _, cp := range crashPoints {
		for _, up := range upstreamFaults {
			for _, sf := range []storageFault{storageOK, storageIntentWriteFails, storageFinalWriteFails} {
				for _, kept := range []bool{false, true} {
					c := matrixCase{crash: cp.point, upstream: up, storage: sf, kept: kept}
					name := fmt.Sprintf("%s/%s/%s/kept=%v", cp.name, up.name, sf, kept)
					n++
					t.Run(name, func(t *testing.T) {
						outcome := runMatrixCase(t, c)
						mu.Lock()
						defer mu.Unlock()
						row := cp.name
						if summary[row] == nil {
							summary[row] = &tally{}
						}
						tl := summary[row]
						tl.cases++
						switch {
						case outcome == stateNeedsReauth:
							tl.reauth++
						case c.expectChainLost():
							tl.rebootstrapped++
						default:
							tl.usable++
						}
					})
				}
			}
		}
	}
	rows := make([]string, 0, len(summary))
	for k := range summary {
		rows = append(rows, k)
	}
	sort.Strings(rows)
	var b strings.Builder
	fmt.Fprintf(&b, "fault matrix: %d cases (crash point x upstream fault x storage fault x kept password)\n", n)
	fmt.Fprintf(&b, "%-45s %6s %14s %16s %13s\n", "crash point", "cases", "chain intact", "re-bootstrapped", "needs_reauth")
	for _, r := range rows {
		tl := summary[r]
		fmt.Fprintf(&b, "%-45s %6d %14d %16d %13d\n", r, tl.cases, tl.usable, tl.rebootstrapped, tl.reauth)
	}
	t.Log("\n" + b.String())
}
