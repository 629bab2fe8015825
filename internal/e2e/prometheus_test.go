package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// TestPrometheusScrapesEveryDocumentedMetric runs a real Prometheus
// server with examples/prometheus/prometheus.yml and its alert rules against
// the real Vault with the plugin, scraping every second with a token of
// examples/policy/prometheus.hcl, and asks Prometheus's HTTP API what it got:
// every metric the table of docs/metrics.md's "Metrics" section names, and
// none it does not name; the values of what the test did; every alert rule
// evaluated without error on the real series. One account's chain is lost
// before a reload of the plugin, whose counters then start again from zero:
// ErmeoChainLost and ErmeoAccountNeedsReauth fire all the same, and no other
// rule does.
func TestPrometheusScrapesEveryDocumentedMetric(t *testing.T) {
	e := newEnv(t, fakeermeo.Options{})
	bin := findPrometheus(t)
	documented := documentedMetrics(t)

	e.configure()
	// Someone else spends the chain of "lost"; the plugin finds out at its
	// rotate, then the mount is reloaded: the counters that saw it are gone
	// before Prometheus's first scrape.
	e.mustWrite("accounts/lost", map[string]any{"username": testUser, "password": testPassword})
	client, _ := ermeo.New(ermeo.Config{APIURL: e.url, ClientID: testClientID, ClientSecret: testClientSecret})
	if _, err := client.RefreshGrant(context.Background(), e.fake.IssuedRefreshTokens()[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := e.write("accounts/lost/rotate", nil); err == nil {
		t.Fatal("the rotate of a spent chain succeeded")
	}
	if _, err := vault.Client.Logical().Write("sys/plugins/reload/backend", map[string]any{"mounts": []string{e.mount + "/"}}); err != nil {
		t.Fatalf("reloading %s/: %v", e.mount, err)
	}
	e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword})
	for range 3 {
		e.mustRead("creds/app")
	}
	e.mustWrite("accounts/app/rotate", nil)
	e.mustRead("creds/app")

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(metricsToken(t, e.mount)), 0o600); err != nil {
		t.Fatal(err)
	}
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	vaultHost := strings.TrimPrefix(vault.Addr, "http://")
	cfg := exampleFile(t, "examples/prometheus/prometheus.yml",
		"scrape_interval: 30s", "scrape_interval: 1s",
		"evaluation_interval: 30s", "evaluation_interval: 1s",
		"  - ermeo-alerts.yml", "  - "+filepath.Join(root, "examples/prometheus/ermeo-alerts.yml"),
		"metrics_path: /v1/ermeo/metrics", "metrics_path: /v1/"+e.mount+"/metrics",
		"scheme: https", "scheme: http",
		"credentials_file: /etc/prometheus/vault-token", "credentials_file: "+tokenFile,
		"targets: ['vault.example.internal:8200']", "targets: ['"+vaultHost+"']",
		"mount: ermeo", "mount: "+e.mount)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	started := time.Now()
	p := startPrometheus(t, bin, dir, cfgPath)
	t.Logf("%s, pid %d, at %s, ready after %.1fs, scraping %s/v1/%s/metrics?format=prometheus every 1s",
		p.version, p.cmd.Process.Pid, p.url, time.Since(started).Seconds(), vault.Addr, e.mount)
	ready := time.Now()
	var scrapedAt time.Duration

	// Until one scrape has been stored and every rule evaluated: one or two
	// scrape intervals once Prometheus has its target, which its discovery
	// hands to the scrape manager at most every 5 s (so about 5 s in all).
	var names []string
	var rules []promRule
	deadline := time.Now().Add(30 * time.Second)
	for {
		up := p.query(t, `up{job="ermeo"}`)
		names = nil
		p.get(t, "/api/v1/label/__name__/values", url.Values{"match[]": {`{job="ermeo"}`}}, &names)
		rules = p.rules(t)
		evaluated := len(rules) > 0
		for _, r := range rules {
			evaluated = evaluated && r.Health != "unknown"
		}
		scrapedOK := len(up) == 1 && up[0].value() == 1 && slices.Contains(names, "ermeo_accounts")
		if scrapedOK && scrapedAt == 0 {
			scrapedAt = time.Since(ready)
		}
		if scrapedOK && evaluated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s: up %v, names %v, rules %+v\n--- prometheus log ---\n%s", up, names, rules, tail(p.log(), 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("first scrape stored %.1fs after ready, %d rules evaluated %.1fs after ready", scrapedAt.Seconds(), len(rules), time.Since(ready).Seconds())

	// What Prometheus knows of each family: histograms have only _bucket,
	// _sum and _count series.
	var metadata map[string][]struct {
		Type string `json:"type"`
	}
	p.get(t, "/api/v1/metadata", nil, &metadata)
	family := func(series string) string {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			base, ok := strings.CutSuffix(series, suffix)
			if ok && len(metadata[base]) > 0 && metadata[base][0].Type == "histogram" {
				return base
			}
		}
		return series
	}
	scraped := map[string][]string{} // family -> its series names
	for _, n := range names {
		if strings.HasPrefix(n, "ermeo_") {
			scraped[family(n)] = append(scraped[family(n)], n)
		}
	}
	for _, name := range documented {
		if series, ok := scraped[name]; ok {
			t.Logf("docs/metrics.md names %s: scraped, as %s", name, strings.Join(series, ", "))
		} else {
			t.Errorf("docs/metrics.md names %s, which Prometheus did not scrape (scraped: %v)", name, names)
		}
	}
	for name := range scraped {
		if !slices.Contains(documented, name) {
			t.Errorf("Prometheus scraped %s, which the Metrics table of docs/metrics.md does not name", name)
		}
	}

	// The values of what the test did: one password grant, one refresh (the
	// rotate; the reads found a token with enough life), one account.
	for _, c := range []struct {
		query string
		want  float64 // -1: any value, the series must be there
	}{
		{`ermeo_password_grants_total{outcome="success"}`, 1},
		{`ermeo_refreshes_total{outcome="success"}`, 1},
		{`ermeo_refresh_duration_seconds_count`, 1},
		{`ermeo_accounts{state="active"}`, 1},
		{`ermeo_accounts{state="needs_reauth"}`, 1},
		{`ermeo_chains_lost_total{how="refused"}`, 0}, // the process that counted it was reloaded
		{`time() - ermeo_chain_lost_timestamp_seconds{account="lost", how="refused"} < 600`, -1},
		{`ermeo_rotation_period_seconds{account="app"}`, 7 * 86400},
		{`ermeo_refresh_token_expires_in_seconds{account="app"} > 13 * 86400`, -1},
		{`time() - ermeo_last_rotation_timestamp_seconds{account="app"} < 600`, -1},
		// The join of ErmeoAccountNotRotated matches the real labels.
		{`time() - ermeo_last_rotation_timestamp_seconds < ermeo_rotation_period_seconds`, -1},
	} {
		query, want := c.query, c.want
		v := p.query(t, query)
		switch {
		case len(v) != 1:
			t.Errorf("%s: %d series, want 1: %v", query, len(v), v)
		case want >= 0 && v[0].value() != want:
			t.Errorf("%s = %v, want %v", query, v[0].value(), want)
		default:
			t.Logf("%s = %v %v", query, v[0].value(), v[0].Metric)
		}
	}

	// Every rule of the example evaluated on the real series without error;
	// the lost chain's two firing (once an evaluation has followed the
	// first scrape), none other pending or firing.
	if n := strings.Count(exampleFile(t, "examples/prometheus/ermeo-alerts.yml"), "- alert: "); len(rules) != n {
		t.Errorf("Prometheus loaded %d alert rules, the example has %d: %v", len(rules), n, ruleNames(rules))
	}
	firing := map[string]bool{"ErmeoChainLost": true, "ErmeoAccountNeedsReauth": true}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		rules = p.rules(t)
		all := true
		for _, r := range rules {
			all = all && (r.State == "firing") == firing[r.Name]
		}
		if all || time.Now().After(deadline) {
			break
		}
	}
	for _, r := range rules {
		if r.Health != "ok" {
			t.Errorf("rule %s: health %s: %s", r.Name, r.Health, r.LastError)
		}
		want := map[bool]string{true: "firing", false: "inactive"}[firing[r.Name]]
		if r.State != want {
			t.Errorf("rule %s is %s, want %s: %v", r.Name, r.State, want, r.Alerts)
		}
	}
	t.Logf("alert rules evaluated by Prometheus, all ok; firing after the reload: ErmeoChainLost, ErmeoAccountNeedsReauth; inactive: the rest of %s", strings.Join(ruleNames(rules), ", "))
}

// documentedMetrics returns the metric names in the first column of the
// table of docs/metrics.md's "Metrics" section.
func documentedMetrics(t *testing.T) []string {
	t.Helper()
	section := exampleFile(t, "docs/metrics.md")
	_, section, ok := strings.Cut(section, "\n## Metrics\n")
	if !ok {
		t.Fatal(`docs/metrics.md has no "## Metrics" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var names []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(ermeo_[a-z_]+)[{`]").FindAllStringSubmatch(section, -1) {
		names = append(names, m[1])
	}
	if len(names) < 5 {
		t.Fatalf("found only %v in the Metrics table of docs/metrics.md", names)
	}
	return names
}

// metricsToken is a token of examples/policy/prometheus.hcl for the mount,
// as the example's credentials_file holds one; policy and token go when the
// test ends.
func metricsToken(t *testing.T, mount string) string {
	t.Helper()
	sys := vault.Client.Sys()
	name := "prometheus-" + randomHex(4)
	policy := exampleFile(t, "examples/policy/prometheus.hcl", `path "ermeo/metrics"`, `path "`+mount+`/metrics"`)
	if err := sys.PutPolicy(name, policy); err != nil {
		t.Fatalf("writing policy %s: %v", name, err)
	}
	t.Cleanup(func() { _ = sys.DeletePolicy(name) })
	s, err := vault.Client.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{name}, TTL: "1h", NoDefaultPolicy: true})
	if err != nil {
		t.Fatalf("creating the scrape token: %v", err)
	}
	t.Cleanup(func() { _ = vault.Client.Auth().Token().RevokeOrphan(s.Auth.ClientToken) })
	return s.Auth.ClientToken
}

// findPrometheus returns the path of a prometheus server: $PROMETHEUS_BIN,
// the one on PATH, or the one scripts/prometheus-bin.sh cached. With none,
// the test is skipped, unless ERMEO_E2E_REQUIRED (make e2e) or CI=true is
// set: then the script obtains one (Debian's package or a build), and a
// failure fails the test.
func findPrometheus(t *testing.T) string {
	t.Helper()
	for _, c := range toolCandidates("PROMETHEUS_BIN", "prometheus", "ERMEO_TOOLS_CACHE") {
		if exec.Command(c, "--version").Run() == nil {
			return c
		}
	}
	if os.Getenv("ERMEO_E2E_REQUIRED") == "" && os.Getenv("CI") != "true" {
		t.Skip("no prometheus binary ($PROMETHEUS_BIN, PATH, or " + toolCache("ERMEO_TOOLS_CACHE") + "): make e2e obtains one with scripts/prometheus-bin.sh")
	}
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(root, "scripts/prometheus-bin.sh"), "prometheus")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("prometheus is required (ERMEO_E2E_REQUIRED or CI) and scripts/prometheus-bin.sh failed: %v\n%s", err, tail(stderr.String(), 30))
	}
	return strings.TrimSpace(string(out))
}

// promProc is one prometheus server that the test started.
type promProc struct {
	cmd     *exec.Cmd
	url     string
	version string
	logPath string
	done    chan struct{}
}

// startPrometheus starts prometheus on a free 127.0.0.1 port with its
// storage in dir, waits until it is ready, and stops it by its pid when the
// test ends.
func startPrometheus(t *testing.T, bin, dir, cfgPath string) *promProc {
	t.Helper()
	version, _ := exec.Command(bin, "--version").Output()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "prometheus.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), "HOME="+dir)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting prometheus: %v", err)
	}
	p := &promProc{cmd: cmd, url: "http://" + addr, version: firstLine(string(version)), logPath: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() { StopProcess(cmd.Process, p.done, 10*time.Second) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.done:
			t.Fatalf("prometheus exited during start-up:\n%s", tail(p.log(), 40))
		default:
		}
		resp, err := http.Get(p.url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 30 s:\n%s", tail(p.log(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *promProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// get calls Prometheus's HTTP API and decodes the data of a success into out.
func (p *promProc) get(t *testing.T, path string, query url.Values, out any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+path+"?"+query.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET %s: %d, %v", path, resp.StatusCode, err)
	}
	if body.Status != "success" {
		t.Fatalf("GET %s?%s: %s %s", path, query.Encode(), body.Status, body.Error)
	}
	if err := json.Unmarshal(body.Data, out); err != nil {
		t.Fatalf("GET %s: data %s: %v", path, body.Data, err)
	}
}

// query runs an instant query whose result is a vector.
func (p *promProc) query(t *testing.T, q string) promVector {
	t.Helper()
	var data struct {
		ResultType string     `json:"resultType"`
		Result     promVector `json:"result"`
	}
	p.get(t, "/api/v1/query", url.Values{"query": {q}}, &data)
	if data.ResultType != "vector" {
		t.Fatalf("%s: a %s, not a vector", q, data.ResultType)
	}
	return data.Result
}

// promVector is the result of an instant query with a vector result.
type promVector []promSample

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"` // [time, "value"]
}

func (v promVector) String() string {
	var parts []string
	for _, s := range v {
		parts = append(parts, fmt.Sprintf("%v=%v", s.Metric, s.Value[1]))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// value is the sample's value, or NaN if it is not a number.
func (s promSample) value() float64 {
	str, _ := s.Value[1].(string)
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return math.NaN()
	}
	return f
}

type promRule struct {
	Name      string `json:"name"`
	Health    string `json:"health"`
	LastError string `json:"lastError"`
	State     string `json:"state"`
	Alerts    []any  `json:"alerts"`
}

func (p *promProc) rules(t *testing.T) []promRule {
	t.Helper()
	var data struct {
		Groups []struct {
			Rules []promRule `json:"rules"`
		} `json:"groups"`
	}
	p.get(t, "/api/v1/rules", url.Values{"type": {"alert"}}, &data)
	var rules []promRule
	for _, g := range data.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

func ruleNames(rules []promRule) []string {
	var names []string
	for _, r := range rules {
		names = append(names, r.Name)
	}
	return names
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}
