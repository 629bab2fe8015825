package ermeosecrets

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Metrics and events of the refresh protocol.
//
// An external plugin runs in its own process, and Vault does not collect its
// go-metrics (hashicorp/vault#7259), so the plugin keeps its own counters and
// serves them at the metrics path, as JSON or in Prometheus' text format.
// Events go through Vault's event bus (the SDK's event sender) where the
// Vault version has one.

// Event types sent on Vault's event bus.
const (
	eventRotated        = "ermeo/chain-rotated"
	eventRotationFailed = "ermeo/rotation-failed"
	eventChainLost      = "ermeo/chain-lost"
)

// refreshBuckets are the upper bounds, in seconds, of the refresh latency histogram.
var refreshBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

type metrics struct {
	mu sync.Mutex
	// refreshes counts refresh grants by outcome: success, rejected,
	// chain_gone, unknown.
	refreshes map[string]uint64
	// chainsLost counts chains found gone, by how: lost_in_flight (an
	// earlier answer never arrived) or refused (invalid_grant at once).
	chainsLost map[string]uint64
	// passwordGrants counts password grants (account writes and re-bootstraps
	// with a kept password) by outcome: success, rejected, unknown.
	passwordGrants map[string]uint64
	// chainsRecovered counts new chains started with a kept password.
	chainsRecovered uint64
	latencyCount    uint64
	latencySum      float64
	latencyBuckets  []uint64
}

func newMetrics() *metrics {
	// Every series exists from the start, at zero, so that a rate or an
	// alert on it has data before the first event.
	return &metrics{
		refreshes:      map[string]uint64{"success": 0, "rejected": 0, "chain_gone": 0, "unknown": 0},
		chainsLost:     map[string]uint64{"lost_in_flight": 0, "refused": 0},
		passwordGrants: map[string]uint64{"success": 0, "rejected": 0, "unknown": 0},
		latencyBuckets: make([]uint64, len(refreshBuckets)),
	}
}

func (m *metrics) refresh(outcome string, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refreshes[outcome]++
	s := took.Seconds()
	m.latencyCount++
	m.latencySum += s
	for i, le := range refreshBuckets {
		if s <= le {
			m.latencyBuckets[i]++
		}
	}
}

func (m *metrics) passwordGrant(outcome string) {
	m.mu.Lock()
	m.passwordGrants[outcome]++
	m.mu.Unlock()
}

func (m *metrics) chainLost(how string) {
	m.mu.Lock()
	m.chainsLost[how]++
	m.mu.Unlock()
}

func (m *metrics) chainRecovered() {
	m.mu.Lock()
	m.chainsRecovered++
	m.mu.Unlock()
}

// emit sends an event on Vault's bus; where there is none, nothing happens.
func (b *backend) emit(ctx context.Context, eventType, mount, name string, pairs ...string) {
	pairs = append(pairs, "account", name,
		logical.EventMetadataDataPath, mount+"creds/"+name,
		logical.EventMetadataModified, "true")
	if err := logical.SendEvent(context.WithoutCancel(ctx), b, eventType, pairs...); err != nil && err != framework.ErrNoEvents {
		b.Logger().Debug("could not send an event", "type", eventType, "error", err)
	}
}

func pathMetrics(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern: "metrics$",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
			OperationSuffix: "metrics",
		},
		Fields: map[string]*framework.FieldSchema{
			"format": {
				Type:          framework.TypeString,
				Description:   "json (the default) or prometheus (text exposition format).",
				AllowedValues: []any{"json", "prometheus"},
				Query:         true,
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:  b.pathMetricsRead,
				Summary:   "The engine's refresh counters, latency, and each account's refresh token expiry.",
				Responses: map[int][]framework.Response{http.StatusOK: {{Description: "OK", Fields: metricsResponseFields}}},
			},
		},
		HelpSynopsis:    pathMetricsHelpSyn,
		HelpDescription: pathMetricsHelpDesc,
	}}
}

var metricsResponseFields = map[string]*framework.FieldSchema{
	"refreshes":                           {Type: framework.TypeMap, Description: "Refresh grants by outcome."},
	"chains_lost":                         {Type: framework.TypeMap, Description: "Chains found gone, by how."},
	"chains_recovered":                    {Type: framework.TypeInt64, Description: "New chains started with a kept password."},
	"password_grants":                     {Type: framework.TypeMap, Description: "Password grants (account writes, re-bootstraps) by outcome."},
	"refresh_seconds_count":               {Type: framework.TypeInt64},
	"refresh_seconds_sum":                 {Type: framework.TypeFloat},
	"refresh_token_expires_in_seconds":    {Type: framework.TypeMap, Description: "Per account: seconds until its refresh token expires."},
	"accounts_by_state":                   {Type: framework.TypeMap},
	"refresh_seconds_bucket_upper_bounds": {Type: framework.TypeSlice},
	"refresh_seconds_buckets":             {Type: framework.TypeSlice},
}

func (b *backend) pathMetricsRead(_ context.Context, _ *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if err := unknownFields(d); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	format := d.Get("format").(string)
	if format != "" && format != "json" && format != "prometheus" {
		return logical.ErrorResponse("format: must be json or prometheus"), nil
	}
	now := b.now()
	expiresIn := map[string]any{}
	byState := map[string]any{}
	b.store.each(func(name string, a *accountEntry) {
		byState[a.State] = toInt(byState[a.State]) + 1
		if a.RefreshToken != "" && !a.RefreshTokenIssuedAt.IsZero() {
			expiresIn[name] = int64(a.RefreshTokenIssuedAt.Add(refreshTokenLifetime).Sub(now).Seconds())
		}
	})

	m := b.metrics
	m.mu.Lock()
	refreshes, lost, grants := map[string]any{}, map[string]any{}, map[string]any{}
	for k, v := range m.refreshes {
		refreshes[k] = int64(v)
	}
	for k, v := range m.passwordGrants {
		grants[k] = int64(v)
	}
	for k, v := range m.chainsLost {
		lost[k] = int64(v)
	}
	buckets := make([]any, len(m.latencyBuckets))
	bounds := make([]any, len(refreshBuckets))
	for i := range m.latencyBuckets {
		buckets[i], bounds[i] = int64(m.latencyBuckets[i]), refreshBuckets[i]
	}
	data := map[string]any{
		"refreshes":                           refreshes,
		"chains_lost":                         lost,
		"chains_recovered":                    int64(m.chainsRecovered),
		"password_grants":                     grants,
		"refresh_seconds_count":               int64(m.latencyCount),
		"refresh_seconds_sum":                 m.latencySum,
		"refresh_seconds_bucket_upper_bounds": bounds,
		"refresh_seconds_buckets":             buckets,
		"refresh_token_expires_in_seconds":    expiresIn,
		"accounts_by_state":                   byState,
	}
	m.mu.Unlock()

	if format != "prometheus" {
		return &logical.Response{Data: data}, nil
	}
	return &logical.Response{Data: map[string]any{
		logical.HTTPContentType: "text/plain; version=0.0.4",
		logical.HTTPRawBody:     prometheusText(data),
		logical.HTTPStatusCode:  http.StatusOK,
	}}, nil
}

func toInt(v any) int64 {
	n, _ := v.(int64)
	return n
}

// prometheusText renders the metrics in Prometheus' text exposition format.
func prometheusText(data map[string]any) string {
	var sb strings.Builder
	labeled := func(name, help, typ, label string, values map[string]any) {
		fmt.Fprintf(&sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		keys := make([]string, 0, len(values))
		for k := range values {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&sb, "%s{%s=%q} %v\n", name, label, k, values[k])
		}
	}
	labeled("ermeo_refreshes_total", "Refresh grants sent to Ermeo, by outcome.", "counter", "outcome", data["refreshes"].(map[string]any))
	labeled("ermeo_password_grants_total", "Password grants sent to Ermeo (account writes, re-bootstraps with a kept password), by outcome.", "counter", "outcome", data["password_grants"].(map[string]any))
	labeled("ermeo_chains_lost_total", "Refresh chains found gone, by how.", "counter", "how", data["chains_lost"].(map[string]any))
	fmt.Fprintf(&sb, "# HELP ermeo_chains_recovered_total New chains started with a kept password.\n# TYPE ermeo_chains_recovered_total counter\nermeo_chains_recovered_total %v\n", data["chains_recovered"])
	fmt.Fprintf(&sb, "# HELP ermeo_refresh_duration_seconds Time of one refresh grant.\n# TYPE ermeo_refresh_duration_seconds histogram\n")
	bounds, buckets := data["refresh_seconds_bucket_upper_bounds"].([]any), data["refresh_seconds_buckets"].([]any)
	for i := range bounds {
		fmt.Fprintf(&sb, "ermeo_refresh_duration_seconds_bucket{le=\"%v\"} %v\n", bounds[i], buckets[i])
	}
	fmt.Fprintf(&sb, "ermeo_refresh_duration_seconds_bucket{le=\"+Inf\"} %v\n", data["refresh_seconds_count"])
	fmt.Fprintf(&sb, "ermeo_refresh_duration_seconds_sum %v\nermeo_refresh_duration_seconds_count %v\n", data["refresh_seconds_sum"], data["refresh_seconds_count"])
	labeled("ermeo_refresh_token_expires_in_seconds", "Seconds until each account's refresh token expires.", "gauge", "account", data["refresh_token_expires_in_seconds"].(map[string]any))
	labeled("ermeo_accounts", "Accounts known to this node, by state.", "gauge", "state", data["accounts_by_state"].(map[string]any))
	return sb.String()
}

const pathMetricsHelpSyn = `The engine's own metrics: refreshes by outcome, chains lost and recovered, refresh latency, refresh token expiry.`

const pathMetricsHelpDesc = `
Vault does not collect the metrics of external plugins, so the engine serves
its own here, for the node that answers (the active node, for anything that
refreshes). Read with format=prometheus for Prometheus' text format:

  vault read ermeo/metrics
  curl -H "X-Vault-Token: $VAULT_TOKEN" "$VAULT_ADDR/v1/ermeo/metrics?format=prometheus"

ermeo_refreshes_total{outcome}: refresh grants by outcome (success, rejected,
chain_gone, unknown). ermeo_chains_lost_total{how}: chains found gone
(lost_in_flight: an earlier answer never arrived; refused: Ermeo refused the
token at once). ermeo_chains_recovered_total: new chains started with a kept
password. ermeo_password_grants_total{outcome}: password grants (account
writes, re-bootstraps) by outcome (success, rejected, unknown). Every series
exists from the start, at zero. ermeo_refresh_duration_seconds: histogram of refresh grants.
ermeo_refresh_token_expires_in_seconds{account}: seconds until each account's
refresh token expires (alert well before 0). ermeo_accounts{state}.

Counters start at zero when the plugin process starts. Events are also sent on
Vault's event bus: ermeo/chain-rotated, ermeo/rotation-failed, ermeo/chain-lost.
`
