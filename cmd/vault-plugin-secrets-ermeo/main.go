// Command vault-plugin-secrets-ermeo serves the Ermeo secrets engine to Vault.
package main

import (
	"os"
	"time"

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
	go exitWhenOrphaned(os.Getppid(), 250*time.Millisecond)
	// One process per mount, not plugin.ServeMultiplex: Vault kills a
	// plugin's process to reload any one of its mounts, draining only that
	// mount's requests, so a multiplexed process lost the refresh answers in
	// flight on every other mount (a spent refresh token whose successor was
	// never stored). The price is a process, about 30 MB, per mount.
	err := plugin.Serve(&plugin.ServeOpts{
		BackendFactoryFunc: ermeosecrets.Factory,
		TLSProviderFunc:    api.VaultPluginTLSProvider(meta.GetTLSConfig()),
	})
	if err != nil {
		fatal(err)
	}
}

// exitWhenOrphaned ends the process once the Vault that started it is gone
// (kill -9 leaves plugin processes running, re-parented). An orphan can store
// nothing, so a refresh it still completed would only spend a refresh token.
func exitWhenOrphaned(vaultPid int, every time.Duration) {
	for range time.Tick(every) {
		if os.Getppid() != vaultPid {
			hclog.New(&hclog.LoggerOptions{}).Warn("the Vault process that started this plugin is gone; exiting")
			os.Exit(2)
		}
	}
}

func fatal(err error) {
	hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
	os.Exit(1)
}
