package ermeosecrets

import (
	"fmt"
	"strings"
	"time"
)

// humanDuration writes d in the largest whole units a person reads:
// "13 days", "2 hours 30 minutes", "90 seconds" is "1 minute 30 seconds".
func humanDuration(d time.Duration) string {
	if d <= 0 {
		return "0 seconds"
	}
	if d < time.Second {
		return d.String()
	}
	units := []struct {
		name string
		size time.Duration
	}{{"day", 24 * time.Hour}, {"hour", time.Hour}, {"minute", time.Minute}, {"second", time.Second}}
	var parts []string
	rest := d.Truncate(time.Second)
	for _, u := range units {
		n := rest / u.size
		if n == 0 {
			continue
		}
		rest -= n * u.size
		name := u.name
		if n != 1 {
			name += "s"
		}
		parts = append(parts, fmt.Sprintf("%d %s", n, name))
		if len(parts) == 2 {
			break
		}
	}
	return strings.Join(parts, " ")
}

// truncate cuts s to n bytes, and says so with "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
