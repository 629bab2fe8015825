package bench

import (
	"bufio"
	"context"
	"strconv"
	"strings"

	"github.com/hashicorp/vault/api"
)

// Metrics are Vault's telemetry values by name, summed over label sets, as
// GET /v1/sys/metrics?format=prometheus returns them (e.g.
// "vault_barrier_put_count": storage writes through the barrier so far).
type Metrics map[string]float64

// ScrapeMetrics reads Vault's Prometheus metrics.
func ScrapeMetrics(ctx context.Context, c *api.Client) (Metrics, error) {
	resp, err := c.Logical().ReadRawWithDataWithContext(ctx, "sys/metrics", map[string][]string{"format": {"prometheus"}})
	if resp != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		return nil, err
	}
	m := Metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			continue
		}
		name, f := line[:i], strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			m[name] += v
		}
	}
	return m, sc.Err()
}

// Delta is after[name] - m[name].
func (m Metrics) Delta(after Metrics, name string) float64 { return after[name] - m[name] }
