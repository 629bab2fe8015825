//go:build lockorder

package lockorder

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

// Mutex records the order in which locks are taken (go-deadlock).
type Mutex = deadlock.Mutex

// Checked says whether this build checks the lock order.
const Checked = true

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

// Inversions is how many lock-order inversions this process saw.
func Inversions() int64 { return inversions.Load() }

// outerHeld is, per goroutine, the Outer lock it holds.
var outerHeld = struct {
	sync.Mutex
	by map[int64]*Outer
}{by: map[int64]*Outer{}}

// takingOuter reports a goroutine that takes an Outer lock while it holds
// one, as an inversion: the order forbids it whether or not another
// goroutine ever takes the two the other way round.
func takingOuter(l *Outer) {
	gid := goid.Get()
	outerHeld.Lock()
	held := outerHeld.by[gid]
	outerHeld.by[gid] = l
	outerHeld.Unlock()
	if held != nil {
		inversions.Add(1)
		buf := make([]byte, 64<<10)
		n := runtime.Stack(buf, false)
		inversionLines.Error("lock-order inversion: a second outer lock taken while one is held", "report", string(buf[:n]))
	}
}

func releasedOuter(*Outer) {
	gid := goid.Get()
	outerHeld.Lock()
	delete(outerHeld.by, gid)
	outerHeld.Unlock()
}
