package e2e

import (
	"testing"
	"time"
)

// The readers' verdict on a token: only a token that had less than the
// plugin's floor of life left when the read was sent, or that the fake never
// issued, is the plugin's fault. No vault needed.
func TestTokenVerdict(t *testing.T) {
	sent := time.Date(2026, 12, 1, 14, 51, 18, 800_000_000, time.UTC)
	ms := func(n int) time.Time { return sent.Add(time.Duration(n) * time.Millisecond) }
	for _, c := range []struct {
		name    string
		expires time.Time
		issued  bool
		got     time.Time
		want    verdict
	}{
		{"valid when the answer came", ms(1500), true, ms(20), tokenValid},
		{"expires the instant the answer came (accepted up to that instant)", ms(20), true, ms(20), tokenValid},
		{"the read took 1.6 s; the token had 1.1 s left when it was sent", ms(1100), true, ms(1600), tokenExpiredInTransit},
		{"exactly the floor left when sent", ms(1000), true, ms(1600), tokenExpiredInTransit},
		{"less than the floor left when sent", ms(999), true, ms(1600), tokenInvalid},
		{"already expired when sent", ms(-5), true, ms(3), tokenInvalid},
		{"never issued by the fake", time.Time{}, false, ms(3), tokenInvalid},
	} {
		if got := tokenVerdict(c.expires, c.issued, sent, c.got); got != c.want {
			t.Errorf("%s: verdict %d, want %d", c.name, got, c.want)
		}
	}
}
