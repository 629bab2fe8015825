package ermeosecrets

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

func pathMetrics(b *backend) []*framework.Path {
	// The gauges of accounts read b's accounts at each scrape. newMetrics
	// cannot bind them: it runs before b exists.
	b.metrics.accounts.b.Store(b)
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
	"refresh_seconds_count":               {Type: framework.TypeInt64, Description: "How many refresh grants the latency histogram holds."},
	"refresh_seconds_sum":                 {Type: framework.TypeFloat, Description: "Total time of those refresh grants, in seconds."},
	"refresh_token_expires_in_seconds":    {Type: framework.TypeMap, Description: "Per account: seconds until its refresh token expires."},
	"last_rotation_timestamp_seconds":     {Type: framework.TypeMap, Description: "Per account: Unix time of its last successful grant."},
	"rotation_period_seconds":             {Type: framework.TypeMap, Description: "Per account not in needs_reauth: its rotation period in seconds."},
	"accounts_by_state":                   {Type: framework.TypeMap, Description: "Accounts known to this node, by state (active, needs_reauth)."},
	"refresh_seconds_bucket_upper_bounds": {Type: framework.TypeSlice, Description: "Upper bounds, in seconds, of the latency histogram's buckets."},
	"refresh_seconds_buckets":             {Type: framework.TypeSlice, Description: "Cumulative count of refresh grants per bucket, in the order of refresh_seconds_bucket_upper_bounds."},
}

// prometheusFormat is the content type of the text exposition format.
var prometheusFormat = expfmt.NewFormat(expfmt.TypeTextPlain)

func (b *backend) pathMetricsRead(_ context.Context, _ *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	f, format := &fieldReader{d: d, err: unknownFields(d)}, ""
	if v, _ := d.GetOk("format"); v != "" { // empty is the default, json
		f.str("format", &format)
	}
	if f.err != nil {
		return logical.ErrorResponse(f.err.Error()), nil
	}
	families, err := b.metrics.registry.Gather()
	if err != nil {
		return nil, fmt.Errorf("gathering metrics: %w", err)
	}
	if format != "prometheus" {
		return &logical.Response{Data: metricsJSON(families)}, nil
	}
	var sb strings.Builder
	enc := expfmt.NewEncoder(&sb, prometheusFormat)
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			return nil, fmt.Errorf("rendering metrics: %w", err)
		}
	}
	return &logical.Response{Data: map[string]any{
		logical.HTTPContentType: string(prometheusFormat),
		logical.HTTPRawBody:     sb.String(),
		logical.HTTPStatusCode:  http.StatusOK,
	}}, nil
}

// metricsJSON gives the gathered families as the fields of
// metricsResponseFields; every field is there, even with no series.
func metricsJSON(families []*dto.MetricFamily) map[string]any {
	data := map[string]any{
		"refreshes":                           map[string]any{},
		"chains_lost":                         map[string]any{},
		"chains_recovered":                    int64(0),
		"password_grants":                     map[string]any{},
		"refresh_seconds_count":               int64(0),
		"refresh_seconds_sum":                 float64(0),
		"refresh_seconds_bucket_upper_bounds": []any{},
		"refresh_seconds_buckets":             []any{},
		"refresh_token_expires_in_seconds":    map[string]any{},
		"last_rotation_timestamp_seconds":     map[string]any{},
		"rotation_period_seconds":             map[string]any{},
		"accounts_by_state":                   map[string]any{},
	}
	fields := map[string]string{
		metricRefreshes:      "refreshes",
		metricChainsLost:     "chains_lost",
		metricPasswordGrants: "password_grants",
		metricExpiresIn:      "refresh_token_expires_in_seconds",
		metricLastRotation:   "last_rotation_timestamp_seconds",
		metricRotationPeriod: "rotation_period_seconds",
		metricAccounts:       "accounts_by_state",
	}
	for _, f := range families {
		switch name := f.GetName(); name {
		case metricChainsRecovered:
			for _, m := range f.GetMetric() {
				data["chains_recovered"] = int64(m.GetCounter().GetValue())
			}
		case metricRefreshDuration:
			for _, m := range f.GetMetric() {
				h := m.GetHistogram()
				bounds := make([]any, 0, len(h.GetBucket()))
				buckets := make([]any, 0, len(h.GetBucket()))
				for _, bk := range h.GetBucket() {
					bounds = append(bounds, bk.GetUpperBound())
					buckets = append(buckets, int64(bk.GetCumulativeCount()))
				}
				data["refresh_seconds_count"] = int64(h.GetSampleCount())
				data["refresh_seconds_sum"] = h.GetSampleSum()
				data["refresh_seconds_bucket_upper_bounds"] = bounds
				data["refresh_seconds_buckets"] = buckets
			}
		default:
			field, ok := fields[name]
			if !ok {
				continue
			}
			byLabel := data[field].(map[string]any)
			for _, m := range f.GetMetric() {
				v := m.GetGauge().GetValue()
				if f.GetType() == dto.MetricType_COUNTER {
					v = m.GetCounter().GetValue()
				}
				// Each of these families has one label.
				byLabel[m.GetLabel()[0].GetValue()] = int64(v)
			}
		}
	}
	return data
}

const pathMetricsHelpSyn = `The engine's own metrics: refreshes by outcome, chains lost and recovered, refresh latency, refresh token expiry.`

const pathMetricsHelpDesc = `
Vault does not collect the metrics of external plugins, so the engine serves
its own here, for the node that answers (the active node, for anything that
refreshes). Read with format=prometheus for Prometheus' text format:

  vault read ermeo/metrics
  curl -H "X-Vault-Token: $VAULT_TOKEN" "$VAULT_ADDR/v1/ermeo/metrics?format=prometheus"

ermeo_refreshes_total{outcome}: refreshes by outcome (success, rejected,
chain_gone, unknown; storage_refused when storage refused a write and nothing
was sent). ermeo_chains_lost_total{how}: chains found gone
(lost_in_flight: an earlier answer never arrived; refused: Ermeo refused the
token at once). ermeo_chains_recovered_total: new chains started with a kept
password. ermeo_password_grants_total{outcome}: password grants (account
writes, re-bootstraps) by outcome (success, rejected, unknown). Every series
exists from the start, at zero. ermeo_refresh_duration_seconds: histogram of refresh grants.
ermeo_refresh_token_expires_in_seconds{account}: seconds until each account's
refresh token expires (alert well before 0).
ermeo_last_rotation_timestamp_seconds{account}: Unix time of each account's
last successful grant. ermeo_rotation_period_seconds{account}: each account's
rotation period (none in needs_reauth); time() minus the first above the
second means the keep-alive is not keeping that chain alive.
ermeo_accounts{state}.

Counters start at zero when the plugin process starts. Events are also sent on
Vault's event bus: ermeo/chain-rotated, ermeo/rotation-failed, ermeo/chain-lost.
`
