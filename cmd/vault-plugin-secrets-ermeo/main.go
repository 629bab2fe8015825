// Command vault-plugin-secrets-ermeo serves the Ermeo secrets engine to Vault.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/plugin"

	ermeosecrets "github.com/ermeo-community/vault-plugin-secrets-ermeo"
)

func main() {
	meta := &api.PluginAPIClientMeta{}
	flags := meta.FlagSet()
	if err := flags.Parse(os.Args[1:]); err != nil {
		fatal(err)
	}
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: ermeosecrets.Factory,
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
