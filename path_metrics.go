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
			"format": {Type: framework.TypeString, AllowedValues: []any{"prometheus"}, Default: "prometheus", Query: true, Description: "prometheus, the text exposition format, the only one (json was dropped). Optional; scrape configs send it."},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:    b.pathMetricsRead,
				Summary:     "The engine's refresh counters, latency, and each account's refresh token expiry.",
				Description: "The body is not JSON: with the vault CLI, read it with `vault read -format=raw`.",
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
	format, _ := v.(string)
	switch {
	case strings.EqualFold(strings.TrimSpace(format), "json"):
		f.err = cmp.Or(f.err, fieldError("format", "json was dropped: the metrics are in Prometheus' text format only. Read them with "+
			`vault read -format=raw %smetrics, or curl -H "X-Vault-Token: $VAULT_TOKEN" "$VAULT_ADDR/v1/%smetrics"`, req.MountPoint, req.MountPoint))
	case format != "": // empty is the default, prometheus
		f.str("format")
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
Vault does not collect an external plugin's metrics, so the engine serves its
own, for the node that answers, in Prometheus' text exposition format only
(format=json was dropped). The body is not JSON: the vault CLI prints it with
-format=raw. Counters start at zero with the plugin process.

  vault read -format=raw ermeo/metrics
  curl -H "X-Vault-Token: $VAULT_TOKEN" "$VAULT_ADDR/v1/ermeo/metrics"

Every metric, the events sent on Vault's event bus and the alerts are in
docs/metrics.md in the plugin's repository.
`
