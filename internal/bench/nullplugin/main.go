// Command nullplugin is the floor the benchmarks measure the Ermeo plugin
// against: an external Vault secrets plugin, served like the real one, that
// answers a fixed 86-character token from memory.
//
//	creds/<name>   the token under a 1h lease (no storage call), shaped like the
//	               Ermeo plugin's: renewable up to its end and never past, with
//	               the same internal data (account, generation)
//	static/<name>  the same data without a lease, with a ttl field (no storage call)
//	stored/<name>  as static, after one storage Get (one round trip to Vault)
//
// Its version is set at build time with -ldflags "-X main.Version=vX.Y.Z", so
// that it can be registered with -version.
package main

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/plugin"
)

// Version is reported to Vault as the plugin's running version.
var Version = "v0.0.0-dev"

// token is as long as an Ermeo access token.
var token = strings.Repeat("N", 86)

const (
	tokenLife = 2 * time.Hour
	leaseTTL  = time.Hour
	secretTyp = "null_token"
)

func main() {
	meta := &api.PluginAPIClientMeta{}
	if err := meta.FlagSet().Parse(os.Args[1:]); err != nil {
		fatal(err)
	}
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: factory,
		TLSProviderFunc:    api.VaultPluginTLSProvider(meta.GetTLSConfig()),
	})
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
	os.Exit(1)
}

func factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	var b *framework.Backend
	name := map[string]*framework.FieldSchema{"name": {Type: framework.TypeString}}
	read := func(cb framework.OperationFunc) map[logical.Operation]framework.OperationHandler {
		return map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{Callback: cb},
		}
	}
	b = &framework.Backend{
		BackendType: logical.TypeLogical,
		Paths: []*framework.Path{
			{Pattern: "creds/" + framework.GenericNameRegex("name"), Fields: name, Operations: read(
				func(_ context.Context, _ *logical.Request, d *framework.FieldData) (*logical.Response, error) {
					// As the Ermeo plugin's creds lease: what Vault stores
					// for a lease is the same size and shape.
					resp := b.Secret(secretTyp).Response(data(), map[string]any{"account": d.Get("name"), "generation": uint64(1)})
					resp.Secret.TTL = leaseTTL
					resp.Secret.MaxTTL = leaseTTL
					resp.Secret.Renewable = true
					return resp, nil
				})},
			{Pattern: "static/" + framework.GenericNameRegex("name"), Fields: name, Operations: read(
				func(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
					return staticResponse(), nil
				})},
			{Pattern: "stored/" + framework.GenericNameRegex("name"), Fields: name, Operations: read(
				func(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
					if _, err := req.Storage.Get(ctx, "stored/"+d.Get("name").(string)); err != nil {
						return nil, err
					}
					return staticResponse(), nil
				})},
		},
		Secrets: []*framework.Secret{{
			Type: secretTyp,
			// Up to the lease's end, never past (the bench never renews).
			Renew: func(_ context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
				left := time.Until(req.Secret.IssueTime.Add(leaseTTL)).Truncate(time.Second)
				if left < time.Second {
					return logical.ErrorResponse("at its end: read creds again"), nil
				}
				resp := &logical.Response{Secret: req.Secret}
				resp.Secret.TTL, resp.Secret.MaxTTL, resp.Secret.Renewable = left, leaseTTL, true
				return resp, nil
			},
			Revoke: func(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
				return nil, nil
			},
		}},
		RunningVersion: Version,
	}
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

// data is what the Ermeo plugin's creds read returns, field for field.
func data() map[string]any {
	expires := time.Now().Add(tokenLife).UTC()
	return map[string]any{
		"access_token": token,
		"token_type":   "Bearer",
		"expires_at":   expires.Format(time.RFC3339),
		"expires_in":   int64(tokenLife.Seconds()),
	}
}

func staticResponse() *logical.Response {
	d := data()
	d["ttl"] = int64(leaseTTL.Seconds())
	return &logical.Response{Data: d}
}
