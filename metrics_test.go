package ermeosecrets

import (
	"context"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

type recordedEvents struct {
	mu     sync.Mutex
	events []string
}

func (r *recordedEvents) SendEvent(_ context.Context, t logical.EventType, e *logical.EventData) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, string(t)+" account="+e.Metadata.Fields["account"].GetStringValue()+
		" data_path="+e.Metadata.Fields[logical.EventMetadataDataPath].GetStringValue())
	return nil
}

func TestMetricsAndEventsOfTheRefreshProtocol(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	events := &recordedEvents{}
	conf := logical.TestBackendConfig()
	conf.System, conf.StorageView, conf.EventsSender = e.system, e.view, events
	e.b = newBackend(e.clock.Now, e.http)
	e.b.store.persistFor = 0
	if err := e.b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	e.configure()
	e.createAccount("app", nil)
	e.createAccount("kept", map[string]any{"store_password": true})

	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)                             // success
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: 503, Times: 1}) // unknown
	_, _ = e.request(logical.UpdateOperation, "accounts/app/rotate", nil)
	e.spendChainBehindThePluginsBack("kept") // chain gone, recovered with the password
	e.must(logical.UpdateOperation, "accounts/kept/rotate", nil)

	families, prom := readPrometheus(t, e)
	for _, want := range []string{
		`ermeo_refreshes_total{outcome="success"} 1`,
		`ermeo_refreshes_total{outcome="unknown"} 1`,
		`ermeo_refreshes_total{outcome="chain_gone"} 1`,
		`ermeo_chains_lost_total{how="refused"} 1`,
		`ermeo_chains_recovered_total 1`,
		`ermeo_refresh_duration_seconds_count 3`,
		`ermeo_accounts{state="active"} 2`,
	} {
		if !strings.Contains(prom, want) {
			t.Errorf("prometheus text lacks %q:\n%s", want, prom)
		}
	}

	// expfmt writes 1209600 as 1.2096e+06: compare the parsed value.
	if v := sampleValue(t, families[metricExpiresIn], "kept"); v != (14 * 24 * time.Hour).Seconds() {
		t.Errorf("prometheus expires in for kept: %v", v)
	}

	events.mu.Lock()
	got := strings.Join(events.events, "\n")
	events.mu.Unlock()
	for _, want := range []string{
		"ermeo/chain-rotated account=app data_path=ermeo/creds/app",
		"ermeo/rotation-failed account=app",
		"ermeo/chain-lost account=kept",
		"ermeo/chain-rotated account=kept",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("events lack %q; got:\n%s", want, got)
		}
	}
}

// parsePrometheus parses text in Prometheus' text exposition format, as a
// Prometheus server would, failing the test on any error.
func parsePrometheus(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parsing the prometheus text: %v\n%s", err, text)
	}
	return families
}

// sampleValue is the value of the counter or gauge of f whose only label has
// the value label ("" for a family without labels).
func sampleValue(t *testing.T, f *dto.MetricFamily, label string) float64 {
	t.Helper()
	if f == nil {
		t.Fatalf("no such family")
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) == 0 && label != "" || len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() != label {
			continue
		}
		if f.GetType() == dto.MetricType_COUNTER {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("%s has no series %q", f.GetName(), label)
	return 0
}

// readPrometheus reads the metrics as `vault read -format=raw` does: no
// format, the default.
func readPrometheus(t *testing.T, e *testEnv) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	resp := e.must(logical.ReadOperation, "metrics", nil)
	ct, _ := resp.Data[logical.HTTPContentType].(string)
	if !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("content type %q", ct)
	}
	text := resp.Data[logical.HTTPRawBody].(string)
	return parsePrometheus(t, text), text
}

// TestMetricsAreOnlyPrometheusText: format=prometheus, as scrape configs
// send it, gives the text of the default; format=json, dropped, is a 400
// that says how to read the text.
func TestMetricsAreOnlyPrometheusText(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	_, text := readPrometheus(t, e)
	resp := e.must(logical.ReadOperation, "metrics", map[string]any{"format": "prometheus"})
	if got := resp.Data[logical.HTTPRawBody]; got != text || resp.Data[logical.HTTPContentType] != string(prometheusFormat) {
		t.Errorf("format=prometheus: %v %q, want the default's text:\n%s", resp.Data[logical.HTTPContentType], got, text)
	}
	for _, format := range []string{"json", " JSON "} {
		resp, err := e.request(logical.ReadOperation, "metrics", map[string]any{"format": format})
		msg := errText(resp, err)
		for _, want := range []string{"format: json was dropped", "vault read -format=raw " + testMount + "metrics", "/v1/" + testMount + "metrics"} {
			if !strings.Contains(msg, want) {
				t.Errorf("format=%q: want a 400 saying %q, got %q", format, want, msg)
			}
		}
	}
	resp, err := e.request(logical.ReadOperation, "metrics", map[string]any{"format": "xml"})
	if msg := errText(resp, err); msg != `format: must be prometheus (got "xml")` {
		t.Errorf("format=xml: %q", msg)
	}
}

// TestPrometheusTextParsesWithEveryFamily: what a Prometheus server would
// read of the text format, family by family, with its type, help and
// series.
func TestPrometheusTextParsesWithEveryFamily(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.createAccount("app", nil)
	e.createAccount("kept", map[string]any{"store_password": true})
	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: 503, Times: 1})
	_, _ = e.request(logical.UpdateOperation, "accounts/app/rotate", nil)
	e.clock.Advance(time.Hour)

	families, text := readPrometheus(t, e)
	want := map[string]struct {
		typ    dto.MetricType
		help   string
		labels []string // the label's values, sorted; nil for none
	}{
		metricRefreshes:       {dto.MetricType_COUNTER, "Refreshes, by outcome: of the grant sent to Ermeo, or storage_refused when storage refused a write and nothing was sent.", []string{"chain_gone", "rejected", "storage_refused", "success", "unknown"}},
		metricPasswordGrants:  {dto.MetricType_COUNTER, "Password grants sent to Ermeo (account writes, re-bootstraps with a kept password), by outcome.", []string{"rejected", "success", "unknown"}},
		metricChainsLost:      {dto.MetricType_COUNTER, "Refresh chains found gone, by how.", []string{"lost_in_flight", "refused"}},
		metricChainsRecovered: {dto.MetricType_COUNTER, "New chains started with a kept password.", nil},
		metricRefreshDuration: {dto.MetricType_HISTOGRAM, "Time of one refresh grant.", nil},
		metricExpiresIn:       {dto.MetricType_GAUGE, "Seconds until each account's refresh token expires.", []string{"app", "kept"}},
		metricLastRotation:    {dto.MetricType_GAUGE, "Unix time of each account's last successful grant (refresh or password).", []string{"app", "kept"}},
		metricRotationPeriod:  {dto.MetricType_GAUGE, "Each account's rotation period, in seconds; none for an account in needs_reauth, which the keep-alive does not rotate.", []string{"app", "kept"}},
		metricAccounts:        {dto.MetricType_GAUGE, "Accounts known to this node, by state.", []string{"active"}},
	}
	if got := slices.Sorted(maps.Keys(families)); !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
		t.Errorf("families %v, want %v", got, slices.Sorted(maps.Keys(want)))
	}
	labelName := map[string]string{metricRefreshes: "outcome", metricPasswordGrants: "outcome", metricChainsLost: "how", metricExpiresIn: "account",
		metricLastRotation: "account", metricRotationPeriod: "account", metricAccounts: "state"}
	for name, w := range want {
		f := families[name]
		if f == nil {
			continue
		}
		if f.GetType() != w.typ || f.GetHelp() != w.help {
			t.Errorf("%s: type %v help %q, want %v %q", name, f.GetType(), f.GetHelp(), w.typ, w.help)
		}
		var values []string
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != labelName[name] {
					t.Errorf("%s: label %s", name, l.GetName())
				}
				values = append(values, l.GetValue())
			}
		}
		slices.Sort(values)
		if !slices.Equal(values, w.labels) {
			t.Errorf("%s: series %v, want %v", name, values, w.labels)
		}
	}

	h := families[metricRefreshDuration].GetMetric()[0].GetHistogram()
	// The parser keeps the +Inf bucket that the text has; the registry's
	// buckets are the finite ones.
	buckets := h.GetBucket()
	if n := len(buckets); n == 0 || !math.IsInf(buckets[n-1].GetUpperBound(), 1) || buckets[n-1].GetCumulativeCount() != h.GetSampleCount() {
		t.Fatalf("histogram: no +Inf bucket of every sample: %v", buckets)
	}
	buckets = buckets[:len(buckets)-1]
	var bounds []float64
	for _, b := range buckets {
		bounds = append(bounds, b.GetUpperBound())
	}
	if !slices.Equal(bounds, refreshBuckets) || h.GetSampleCount() != 2 {
		t.Errorf("histogram: bounds %v count %d", bounds, h.GetSampleCount())
	}
	for _, w := range []string{`ermeo_refreshes_total{outcome="success"} 1`, `ermeo_refreshes_total{outcome="unknown"} 1`, `ermeo_accounts{state="active"} 2`} {
		if !strings.Contains(text, w) {
			t.Errorf("text lacks %q", w)
		}
	}
	if v := sampleValue(t, families[metricExpiresIn], "kept"); v != (14*24*time.Hour - time.Hour).Seconds() {
		t.Errorf("kept expires in %v", v)
	}
}

// TestRotationGauges: each account's last successful grant and its rotation
// period, computed at each scrape from the entry and the cached config; an
// account in needs_reauth keeps its last grant and has no period (the
// keep-alive does not rotate it), so an alert on time() - last > period
// leaves it to the needs_reauth alert.
func TestRotationGauges(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	config := map[string]any{"api_url": e.url, "client_id": testClientID, "client_secret": testClientSecret, "default_rotation_period": "72h"}
	e.must(logical.UpdateOperation, "config", config)
	t0 := e.clock.Now()
	e.createAccount("app", map[string]any{"rotation_period": "24h"})
	e.createAccount("idle", nil)
	e.createAccount("lost", nil)
	e.clock.Advance(time.Hour)
	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	e.spendChainBehindThePluginsBack("lost")
	if _, err := e.request(logical.UpdateOperation, "accounts/lost/rotate", nil); err == nil {
		t.Fatal("rotating a spent chain without a kept password succeeded")
	}
	if a := e.stored("lost"); a.State != stateNeedsReauth {
		t.Fatalf("lost: state %s", a.State)
	}

	check := func(family string, want map[string]float64) {
		t.Helper()
		families, _ := readPrometheus(t, e)
		got := map[string]float64{}
		for _, m := range families[family].GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: %v, want %v", family, got, want)
		}
	}
	start, rotated := float64(t0.Unix()), float64(t0.Add(time.Hour).Unix())
	check(metricLastRotation, map[string]float64{"app": rotated, "idle": start, "lost": start})
	check(metricRotationPeriod, map[string]float64{"app": 86400, "idle": 72 * 3600})

	// A new default reaches the accounts without one of their own at the
	// next scrape; nothing is stored per account.
	config["default_rotation_period"] = "48h"
	e.must(logical.UpdateOperation, "config", config)
	check(metricRotationPeriod, map[string]float64{"app": 86400, "idle": 48 * 3600})
	check(metricLastRotation, map[string]float64{"app": rotated, "idle": start, "lost": start})
}

// TestMetricsRegistriesArePerBackend: one plugin process serves every mount,
// so each backend counts in a registry of its own, and none in the default one.
func TestMetricsRegistriesArePerBackend(t *testing.T) {
	one, two := newTestEnv(t, fakeermeo.Options{}), newTestEnv(t, fakeermeo.Options{})
	if one.b.metrics.registry == two.b.metrics.registry || prometheus.DefaultGatherer == prometheus.Gatherer(one.b.metrics.registry) {
		t.Fatal("backends share a registry")
	}
	one.configure()
	one.createAccount("app", nil)
	one.must(logical.UpdateOperation, "accounts/app/rotate", nil)
	two.b.metrics.chainsLost.WithLabelValues("refused").Inc()

	f1, _ := readPrometheus(t, one)
	f2, _ := readPrometheus(t, two)
	if v := sampleValue(t, f1[metricRefreshes], "success"); v != 1 {
		t.Errorf("one: refreshes success %v", v)
	}
	if v := sampleValue(t, f1[metricChainsLost], "refused"); v != 0 {
		t.Errorf("one: chains lost %v", v)
	}
	if v := sampleValue(t, f2[metricRefreshes], "success"); v != 0 {
		t.Errorf("two: refreshes success %v", v)
	}
	if v := sampleValue(t, f2[metricChainsLost], "refused"); v != 1 {
		t.Errorf("two: chains lost %v", v)
	}
	if v := sampleValue(t, f1[metricPasswordGrants], "success"); v != 1 {
		t.Errorf("one: password grants %v", v)
	}
	if v := sampleValue(t, f2[metricPasswordGrants], "success"); v != 0 {
		t.Errorf("two: password grants %v", v)
	}
	// The gauges of accounts walk each backend's own accounts.
	if f1[metricAccounts] == nil || f1[metricExpiresIn] == nil {
		t.Errorf("one lacks its account's gauges")
	}
	if f2[metricAccounts] != nil || f2[metricExpiresIn] != nil {
		t.Errorf("two has gauges of accounts it does not hold: %v %v", f2[metricAccounts], f2[metricExpiresIn])
	}

	defaults, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range defaults {
		if strings.HasPrefix(f.GetName(), "ermeo_") {
			t.Errorf("the default registry has %s", f.GetName())
		}
	}
}
