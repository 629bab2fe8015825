package ermeosecrets

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
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
				Description:   "prometheus, the text exposition format (the only one: json was dropped). Optional; scrape configs that send it keep working.",
				AllowedValues: []any{"prometheus"},
				Default:       "prometheus",
				Query:         true,
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:    b.pathMetricsRead,
				Summary:     "The engine's refresh counters, latency, and each account's refresh token expiry.",
				Description: "The body is Prometheus' text exposition format, not JSON: with the vault CLI, read it with `vault read -format=raw`.",
				// A raw body, as Vault's own sys/metrics: no fields.
				Responses: map[int][]framework.Response{http.StatusOK: {{
					Description: "success: the metrics in Prometheus' text exposition format (`text/plain; version=0.0.4`), as the body",
				}}},
			},
		},
		HelpSynopsis:    pathMetricsHelpSyn,
		HelpDescription: pathMetricsHelpDesc,
	}}
}

// prometheusFormat is the content type of the text exposition format.
var prometheusFormat = expfmt.NewFormat(expfmt.TypeTextPlain)

func (b *backend) pathMetricsRead(_ context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	f := &fieldReader{d: d, err: unknownFields(d)}
	v, _ := d.GetOk("format")
	switch s, _ := v.(string); {
	case strings.EqualFold(strings.TrimSpace(s), "json"):
		f.err = cmp.Or(f.err, fieldError("format", "json was dropped: the metrics are in Prometheus' text format only. Read them with "+
			`vault read -format=raw %smetrics, or curl -H "X-Vault-Token: $VAULT_TOKEN" "$VAULT_ADDR/v1/%smetrics"`, req.MountPoint, req.MountPoint))
	case s != "": // empty is the default, prometheus
		f.str("format", new(string))
	}
	if f.err != nil {
		return logical.ErrorResponse(f.err.Error()), nil
	}
	families, err := b.metrics.registry.Gather()
	if err != nil {
		return nil, fmt.Errorf("gathering metrics: %w", err)
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

const pathMetricsHelpSyn = `The engine's own metrics: refreshes by outcome, chains lost and recovered, refresh latency, refresh token expiry.`

const pathMetricsHelpDesc = `
Vault does not collect the metrics of external plugins, so the engine serves
its own here, for the node that answers (the active node, for anything that
refreshes), in Prometheus' text exposition format, the only one (format=json
was dropped; format=prometheus is accepted). The body is not JSON: the vault
CLI prints it with -format=raw.

  vault read -format=raw ermeo/metrics
  curl -H "X-Vault-Token: $VAULT_TOKEN" "$VAULT_ADDR/v1/ermeo/metrics"

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
