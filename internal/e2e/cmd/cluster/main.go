// Command cluster starts a 3-node Vault cluster with integrated storage
// (Raft) on 127.0.0.1 for a person to try the plugin in: it builds the plugin,
// installs a copy in each node's own plugin directory, starts a fake Ermeo,
// initialises and unseals the cluster, registers the plugin by sha256 with
// its version, enables it at ermeo/, writes config and an account "app", and
// prints how to reach each node. It runs until SIGINT or SIGTERM, then stops
// every process it started, by pid. scripts/cluster.sh (make cluster) runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http/httptest"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/e2e"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

func main() {
	os.Exit(run())
}

func run() int {
	nodes := flag.Int("nodes", 3, "number of Vault nodes")
	tokenTTL := flag.Duration("access-token-ttl", fakeermeo.DefaultAccessTokenTTL, "lifetime of the fake Ermeo's access tokens (e.g. 2m to watch refreshes)")
	minTTL := flag.String("min-ttl", "", "min_ttl of the account app (default: the plugin's default)")
	keep := flag.Bool("keep", false, "keep the work directory (Raft data, logs, unseal key) after stopping")
	version := flag.String("version", "v0.1.0-cluster", "version the plugin is built and registered with")
	flag.Parse()

	// Signals are caught from the start, so that a Ctrl-C during start-up
	// still stops what was started.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)

	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "cluster: "+format+"\n", args...)
		return 1
	}
	bin, why := e2e.FindVault()
	if bin == "" {
		return fail("%s", why)
	}
	work, err := os.MkdirTemp("", "ermeo-cluster-")
	if err != nil {
		return fail("%v", err)
	}
	removeWork := func() {
		if *keep {
			fmt.Printf("kept %s\n", work)
			return
		}
		os.RemoveAll(work)
	}
	fmt.Printf("==> Building the plugin (%s)\n", *version)
	pluginBin, sha, err := e2e.BuildPlugin(work, *version)
	if err != nil {
		removeWork()
		return fail("%v", err)
	}

	fmt.Println("==> Starting the fake Ermeo on 127.0.0.1")
	fake := fakeermeo.New(fakeermeo.Options{AccessTokenTTL: *tokenTTL})
	srv := httptest.NewServer(fake)
	defer removeWork()
	defer srv.Close()

	fmt.Printf("==> Starting %d Vault nodes (%s) with Raft storage, each with its own plugin directory\n", *nodes, bin)
	cl, err := e2e.StartCluster(e2e.ClusterOptions{
		VaultBin: bin, PluginBin: pluginBin, PluginSHA: sha, PluginVersion: *version,
		WorkDir: work, Nodes: *nodes, LogLevel: "info",
	})
	if err != nil {
		return fail("%v", err)
	}
	defer func() {
		fmt.Println("==> Stopping every Vault node and plugin process this program started")
		cl.Stop()
	}()
	select {
	case s := <-sigs:
		fmt.Printf("got %v during start-up\n", s)
		return 1
	default:
	}

	fmt.Println("==> Writing ermeo/config and the account ermeo/accounts/app")
	leader, err := cl.Leader()
	if err != nil {
		return fail("%v", err)
	}
	c := cl.Client(leader)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Logical().WriteWithContext(ctx, "ermeo/config", map[string]any{
		"api_url":       srv.URL,
		"client_id":     fakeermeo.DefaultClientID,
		"client_secret": fakeermeo.DefaultClientSecret,
	}); err != nil {
		return fail("writing ermeo/config: %v", err)
	}
	acct := map[string]any{"username": fakeermeo.DefaultUsername, "password": fakeermeo.DefaultPassword}
	if *minTTL != "" {
		acct["min_ttl"] = *minTTL
	}
	if _, err := c.Logical().WriteWithContext(ctx, "ermeo/accounts/app", acct); err != nil {
		return fail("writing ermeo/accounts/app: %v", err)
	}

	fmt.Printf("\n%s, %d nodes, plugin %s %s (sha256 %s) enabled at ermeo/\n\n", cl.Version, len(cl.Nodes), e2e.PluginName, *version, sha)
	for _, n := range cl.Nodes {
		role := "standby"
		if n.Index == leader {
			role = "active"
		}
		fmt.Printf("  %s  VAULT_ADDR=%s  (%s, pid %d, log %s)\n", n.ID, n.Addr, role, n.Pid(), n.LogPath)
	}
	fmt.Printf("\n  root token: %s\n  unseal key: %s (also in %s/init.json)\n  fake Ermeo: %s\n\n", cl.RootToken, cl.UnsealKey, work, srv.URL)
	fmt.Printf("Try, against any node:\n\n")
	fmt.Printf("  export VAULT_ADDR=%s VAULT_TOKEN=%s\n", cl.Nodes[len(cl.Nodes)-1].Addr, cl.RootToken)
	fmt.Printf("  %s read ermeo/creds/app\n", bin)
	fmt.Printf("  %s operator raft list-peers\n", bin)
	fmt.Printf("  curl -H \"Authorization: Bearer $(%s read -field=access_token ermeo/creds/app)\" %s/api/v1/profile\n\n", bin, srv.URL)
	fmt.Printf("Stop it with Ctrl-C, or: kill %d\n", os.Getpid())

	s := <-sigs
	fmt.Printf("\ngot %v\n", s)
	return 0
}
