package consumers

import (
	"math/rand"
	"testing"
	"time"
)

// VSO acts between renewalPercent and renewalPercent+10% of the lease, and at
// most at 100% with the cap of 90.
func TestVSOHorizonStaysInItsWindow(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	lease := 5 * time.Minute
	for _, c := range []struct{ percent, low, high int }{{67, 67, 77}, {90, 90, 100}, {120, 90, 100}, {0, 0, 10}} {
		for range 1000 {
			h := VSOHorizon(rng, lease, c.percent)
			if h <= lease*time.Duration(c.low)/100 || h > lease*time.Duration(c.high)/100 {
				t.Fatalf("renewalPercent %d: horizon %v of a %v lease, want in (%d%%, %d%%]", c.percent, h, lease, c.low, c.high)
			}
		}
	}
}
