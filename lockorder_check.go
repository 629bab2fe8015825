//go:build lockorder

package ermeosecrets

import (
	"bytes"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"github.com/petermattis/goid"
	"github.com/sasha-s/go-deadlock"
)

// Built with -tags lockorder (make test, the campaigns, the e2e tests' plugin
// binary): every mutex of the backend is go-deadlock's, which records, per
// goroutine, the order in which locks are taken and reports the first time
// two locks are taken in both orders, on that schedule, whether or not it
// deadlocks. A report is counted (tests fail on any), and written to stderr
// as one error line of the plugin's JSON log, which Vault puts in its own
// log (the e2e tests fail on any).

type mutex = deadlock.Mutex

// lockOrderChecked says whether this build checks the lock order.
const lockOrderChecked = true

var (
	inversions     atomic.Int64
	inversionMu    sync.Mutex
	inversionText  bytes.Buffer
	inversionLines = hclog.New(&hclog.LoggerOptions{Name: "lockorder", Output: os.Stderr, JSONFormat: true})
)

// inversionLog is where go-deadlock writes a report before it calls
// OnPotentialDeadlock.
type inversionLog struct{}

func (inversionLog) Write(p []byte) (int, error) {
	inversionMu.Lock()
	defer inversionMu.Unlock()
	return inversionText.Write(p)
}

func init() {
	// A wait is never a report: an account's lock may be held for a whole
	// refresh (request_timeout) and a pair's storage retries. Stalls are
	// the concurrency campaign's watchdog's to find.
	deadlock.Opts.DeadlockTimeout = 0
	deadlock.Opts.LogBuf = inversionLog{}
	deadlock.Opts.OnPotentialDeadlock = func() {
		inversions.Add(1)
		inversionMu.Lock()
		report := inversionText.String()
		inversionText.Reset()
		inversionMu.Unlock()
		inversionLines.Error("lock-order inversion: two locks were taken in both orders", "report", report)
	}
}

// lockOrderInversions is how many lock-order inversions this process saw.
func lockOrderInversions() int64 { return inversions.Load() }

// outerHeld is, per goroutine, the outer lock it holds (locks.go).
var outerHeld = struct {
	sync.Mutex
	by map[int64]*outerLock
}{by: map[int64]*outerLock{}}

// takingOuter reports a goroutine that takes an outer lock while it holds
// one (two account locks, or an account lock and the config lock), as an
// inversion: the order forbids it whether or not another goroutine ever
// takes the two the other way round.
func takingOuter(l *outerLock) {
	gid := goid.Get()
	outerHeld.Lock()
	held := outerHeld.by[gid]
	outerHeld.by[gid] = l
	outerHeld.Unlock()
	if held != nil {
		inversions.Add(1)
		buf := make([]byte, 64<<10)
		n := runtime.Stack(buf, false)
		inversionLines.Error("lock-order inversion: a second account or config lock taken while one is held", "report", string(buf[:n]))
	}
}

func releasedOuter(*outerLock) {
	gid := goid.Get()
	outerHeld.Lock()
	delete(outerHeld.by, gid)
	outerHeld.Unlock()
}
