// Package bench measures the Ermeo plugin inside a real Vault server against
// a null plugin (internal/bench/nullplugin) and the built-in KV v2 engine.
// cmd/bench runs the measurements and prints one table; this package holds
// the load generator, the percentiles, what is read from Vault's metrics, and
// the table. What is read from /proc is read by internal/e2e (proc.go).
package bench

import (
	"context"
	"math"
	"slices"
	"sync"
	"time"
)

// Result is what a load run saw.
type Result struct {
	Ops       int             // operations that succeeded
	Errors    int             // operations that failed
	FirstErr  error           // the first failure, if any
	Elapsed   time.Duration   // wall time of the run
	Latencies []time.Duration // of the successful operations, sorted
}

// PerSecond is the throughput of successful operations.
func (r Result) PerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// P is the q-quantile (0 < q <= 1) of the latencies.
func (r Result) P(q float64) time.Duration { return Percentile(r.Latencies, q) }

// Percentile returns the q-quantile of sorted by the nearest-rank method, or
// 0 for an empty slice.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Add merges o into r: the runs' counts, times and latencies add up.
func (r *Result) Add(o Result) {
	r.Ops += o.Ops
	r.Errors += o.Errors
	if r.FirstErr == nil {
		r.FirstErr = o.FirstErr
	}
	r.Elapsed += o.Elapsed
	r.Latencies = append(r.Latencies, o.Latencies...)
	slices.Sort(r.Latencies)
}

// Load runs op in a loop on each of workers goroutines for d, and returns
// the count and the latencies. An op in flight at the end of d is let finish
// and counted (so that no request is cut short); ctx ending stops the run.
// op gets its worker's index.
func Load(ctx context.Context, workers int, d time.Duration, op func(ctx context.Context, worker int) error) Result {
	type tally struct {
		lat      []time.Duration
		errs     int
		firstErr error
	}
	tallies := make([]tally, workers)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := &tallies[w]
			for ctx.Err() == nil && time.Now().Before(deadline) {
				t0 := time.Now()
				if err := op(ctx, w); err != nil {
					t.errs++
					if t.firstErr == nil {
						t.firstErr = err
					}
					continue
				}
				t.lat = append(t.lat, time.Since(t0))
			}
		}()
	}
	wg.Wait()
	r := Result{Elapsed: time.Since(start)}
	for _, t := range tallies {
		r.Latencies = append(r.Latencies, t.lat...)
		r.Errors += t.errs
		if r.FirstErr == nil {
			r.FirstErr = t.firstErr
		}
	}
	r.Ops = len(r.Latencies)
	slices.Sort(r.Latencies)
	return r
}
