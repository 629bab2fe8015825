// Command fake-ermeo serves the fake Ermeo of internal/fakeermeo (the OAuth
// token endpoint, the profile API, and GET /_fake/counters) on a loopback
// address, for the demo.
//
//	fake-ermeo -addr 127.0.0.1:0 -addr-file /tmp/fake-ermeo.url
//
// It prints one line with its base URL to stderr, writes the same URL (without
// a newline) to -addr-file if set, and serves until SIGINT or SIGTERM. It
// never prints a password, a client secret or a token.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

func main() {
	switch err := run(os.Args[1:], os.Stderr); {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		os.Exit(2) // the flag package printed why, and the usage
	default:
		fmt.Fprintln(os.Stderr, "fake-ermeo:", err)
		os.Exit(1)
	}
}

// errUsage is a command line the flags refused; the message is printed.
var errUsage = errors.New("bad command line")

// run serves until SIGINT or SIGTERM. It writes the usage and flag errors,
// and its listening line, to stderr; -help returns flag.ErrHelp.
func run(args []string, stderr io.Writer) error {
	// The flag set has the command's name, not os.Args[0], so that the usage
	// names no path (go run's binary lives in a temporary directory). String
	// flags default to "" so that -help never prints a secret; the fake
	// applies its own defaults.
	flags := flag.NewFlagSet("fake-ermeo", flag.ContinueOnError)
	flags.SetOutput(stderr)
	var (
		addr         = flags.String("addr", "127.0.0.1:0", "loopback `host:port` to listen on")
		addrFile     = flags.String("addr-file", "", "if set, write the base URL to this `file` once listening")
		clientID     = flags.String("client-id", "", "OAuth client id (default: the fake's built-in test client)")
		clientSecret = flags.String("client-secret", "", "OAuth client secret (default: the built-in test client's)")
		user         = flags.String("user", "", "username (default "+fakeermeo.DefaultUsername+")")
		password     = flags.String("password", "", "the user's password (default: the built-in test user's)")
		accessTTL    = flags.Duration("access-ttl", fakeermeo.DefaultAccessTokenTTL, "access token lifetime")
		refreshTTL   = flags.Duration("refresh-ttl", fakeermeo.DefaultRefreshTokenTTL, "refresh token lifetime")
		refuseJSON   = flags.Bool("refuse-json", false, "ignore JSON bodies, like the stock server library")
	)
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", flags.Args())
	}
	if *accessTTL <= 0 || *refreshTTL <= 0 {
		return errors.New("-access-ttl and -refresh-ttl must be positive")
	}
	if *user != "" && *password == "" {
		return errors.New("-user needs -password")
	}
	if err := checkLoopback(*addr); err != nil {
		return err
	}

	opts := fakeermeo.Options{
		ClientID:        *clientID,
		ClientSecret:    *clientSecret,
		AccessTokenTTL:  *accessTTL,
		RefreshTokenTTL: *refreshTTL,
		RefuseJSON:      *refuseJSON,
	}
	if *password != "" {
		name := *user
		if name == "" {
			name = fakeermeo.DefaultUsername
		}
		opts.Users = map[string]string{name: *password}
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	tcpAddr, ok := ln.Addr().(*net.TCPAddr)
	if !ok || !tcpAddr.IP.IsLoopback() {
		return fmt.Errorf("refusing to serve on non-loopback address %s", ln.Addr())
	}
	baseURL := "http://" + tcpAddr.String()

	srv := &http.Server{Handler: fakeermeo.New(opts), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	if *addrFile != "" {
		if err := writeFileAtomic(*addrFile, baseURL); err != nil {
			srv.Close()
			return err
		}
	}
	fmt.Fprintf(stderr, "fake-ermeo: listening on %s\n", baseURL)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
	}
	return nil
}

// checkLoopback refuses an address whose host is not a loopback IP or
// "localhost" (an empty host would listen on every interface).
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %v", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("-addr %q: refusing a non-loopback address", addr)
}

// writeFileAtomic writes content to a temporary file beside path, then
// renames it to path, so that a reader never sees a partial file.
func writeFileAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
