package ermeosecrets

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the refresh protocol (its events are sent by rotation.go). An
// external plugin runs in its own process, and Vault does not collect its
// go-metrics (hashicorp/vault#7259), so the plugin keeps its own counters and
// serves them at the metrics path in Prometheus' text format.

// refreshBuckets are the refresh latency histogram's upper bounds, in seconds.
var refreshBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

const (
	metricRefreshes       = "ermeo_refreshes_total"
	metricPasswordGrants  = "ermeo_password_grants_total"
	metricChainsLost      = "ermeo_chains_lost_total"
	metricChainsRecovered = "ermeo_chains_recovered_total"
	metricRefreshDuration = "ermeo_refresh_duration_seconds"
	metricExpiresIn       = "ermeo_refresh_token_expires_in_seconds"
	metricLastRotation    = "ermeo_last_rotation_timestamp_seconds"
	metricRotationPeriod  = "ermeo_rotation_period_seconds"
	metricChainLostAt     = "ermeo_chain_lost_timestamp_seconds"
	metricAccounts        = "ermeo_accounts"
)

// metrics holds a backend's collectors, in a registry of its own: one plugin
// process serves every mount of the engine, and the default registry would
// add up (or refuse) the series of all of them.
type metrics struct {
	registry       *prometheus.Registry
	refreshes      *prometheus.CounterVec // by outcome (rotation.go's outcomes)
	passwordGrants *prometheus.CounterVec // by outcome (rotation.go's outcomes)
	// chainsLost, by how: lost_in_flight (an earlier answer never arrived)
	// or refused (invalid_grant at once).
	chainsLost      *prometheus.CounterVec
	chainsRecovered prometheus.Counter
	refreshDuration prometheus.Histogram
	accounts        *accountsCollector // bound to the backend by pathMetrics
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricRefreshes,
			Help: "Refreshes, by outcome: of the grant sent to Ermeo, or storage_refused when storage refused a write and nothing was sent.",
		}, []string{"outcome"}),
		passwordGrants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPasswordGrants,
			Help: "Password grants sent to Ermeo (account writes, re-bootstraps with a kept password), by outcome.",
		}, []string{"outcome"}),
		chainsLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricChainsLost,
			Help: "Refresh chains found gone, by how.",
		}, []string{"how"}),
		chainsRecovered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricChainsRecovered,
			Help: "New chains started with a kept password.",
		}),
		refreshDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    metricRefreshDuration,
			Help:    "Time of one refresh grant.",
			Buckets: refreshBuckets,
		}),
		accounts: &accountsCollector{},
	}
	m.registry.MustRegister(m.refreshes, m.passwordGrants, m.chainsLost, m.chainsRecovered, m.refreshDuration, m.accounts)
	// Every series exists from the start, at zero, so that a rate or an alert
	// on it has data before the first event.
	for _, rule := range outcomes {
		m.refreshes.WithLabelValues(rule.refreshes)
		if rule.passwords != "" {
			m.passwordGrants.WithLabelValues(rule.passwords)
		}
	}
	for _, h := range []string{"lost_in_flight", "refused"} {
		m.chainsLost.WithLabelValues(h)
	}
	return m
}

var (
	expiresInDesc = prometheus.NewDesc(metricExpiresIn,
		"Seconds until each account's refresh token expires.", []string{"account"}, nil)
	// With rotationPeriodDesc, an alert on a chain that is not kept alive:
	// time() - last > period.
	lastRotationDesc = prometheus.NewDesc(metricLastRotation,
		"Unix time of each account's last successful grant (refresh or password).", []string{"account"}, nil)
	rotationPeriodDesc = prometheus.NewDesc(metricRotationPeriod,
		"Each account's rotation period, in seconds; none for an account in needs_reauth, which the keep-alive does not rotate.", []string{"account"}, nil)
	chainLostDesc = prometheus.NewDesc(metricChainLostAt,
		"When each account's chain was last found gone, by how (lost_in_flight, refused), in seconds since the epoch; from the stored account, so that it survives a reload of the plugin.", []string{"account", "how"}, nil)
	accountsDesc = prometheus.NewDesc(metricAccounts,
		"Accounts known to this node, by state.", []string{"state"}, nil)
)

// accountsCollector computes the accounts' gauges at each scrape from the
// backend's cache: nothing to keep up to date at each write, and an account
// deleted or moved is gone from the next scrape.
type accountsCollector struct {
	b atomic.Pointer[backend]
}

func (c *accountsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- expiresInDesc
	ch <- lastRotationDesc
	ch <- rotationPeriodDesc
	ch <- chainLostDesc
	ch <- accountsDesc
}

func (c *accountsCollector) Collect(ch chan<- prometheus.Metric) {
	b := c.b.Load()
	if b == nil {
		return
	}
	now := b.now()
	cfg := b.peekConfig()
	byState := map[string]int{}
	b.store.each(func(name string, a *accountEntry) {
		byState[a.State]++
		if a.RefreshToken != "" && !a.RefreshTokenIssuedAt.IsZero() {
			// Whole seconds, as the dropped JSON format gave them.
			left := int64(a.RefreshTokenIssuedAt.Add(refreshTokenLifetime).Sub(now).Seconds())
			ch <- prometheus.MustNewConstMetric(expiresInDesc, prometheus.GaugeValue, float64(left), name)
		}
		if !a.LastRotation.IsZero() {
			ch <- prometheus.MustNewConstMetric(lastRotationDesc, prometheus.GaugeValue, float64(a.LastRotation.Unix()), name)
		}
		if !a.ChainLostAt.IsZero() {
			ch <- prometheus.MustNewConstMetric(chainLostDesc, prometheus.GaugeValue, float64(a.ChainLostAt.Unix()), name, a.ChainLostHow)
		}
		if a.State != stateNeedsReauth {
			ch <- prometheus.MustNewConstMetric(rotationPeriodDesc, prometheus.GaugeValue, effectiveRotationPeriod(a, cfg).Seconds(), name)
		}
	})
	for state, n := range byState {
		ch <- prometheus.MustNewConstMetric(accountsDesc, prometheus.GaugeValue, float64(n), state)
	}
}
