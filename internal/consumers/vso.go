// Package consumers holds the schedules of the programs that read creds for
// others, as their code computes them, for the tests that model them against
// the plugin's leases (the root package's, on the injected clock) and run
// them against a real Vault (internal/e2e).
package consumers

import (
	"math/rand"
	"time"
)

// VSOHorizon is Vault Secrets Operator's computeDynamicHorizonWithJitter
// (v1.4.1, controllers/common.go): when it acts on a lease of the given
// duration, renewalPercent (capped at 90) of it, plus 10% of it less a random
// jitter below that 10%: 67-77% of the lease at the default.
func VSOHorizon(rng *rand.Rand, lease time.Duration, renewalPercent int) time.Duration {
	rp := min(max(renewalPercent, 0), 90)
	maxJitter := 0.1 * float64(lease.Nanoseconds())
	var jitter uint64
	if u := uint64(maxJitter); u != 0 {
		jitter = uint64(rng.Int63()) % u
	}
	start := time.Duration(float64(lease.Nanoseconds()) * float64(rp) / 100)
	return start + time.Duration(maxJitter) - time.Duration(jitter)
}
