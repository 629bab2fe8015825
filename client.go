package ermeosecrets

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"sync"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
)

// The Ermeo client, built in one place and cached: one per connection
// (api_url, client credentials, body format, CA bundle), reset when config
// changes here (cacheConfig) or on another node (Invalidate), as the GitHub
// plugin's Client() is.

// clientCache holds the client of the current connection.
type clientCache struct {
	mu     sync.Mutex
	key    connection
	client *ermeo.Client
}

// connection is what a client is built from: config's fields and the
// backend's HTTP client (which tests replace to inject faults).
type connection struct {
	apiURL, clientID, clientSecret, bodyFormat, caCertificate string
	http                                                      *http.Client
}

func (b *backend) connectionOf(cfg *configEntry) connection {
	c := connectionOfEntry(cfg)
	c.http = b.httpClient
	return c
}

// connectionOfEntry is config's part of a connection.
func connectionOfEntry(cfg *configEntry) connection {
	return connection{apiURL: cfg.APIURL, clientID: cfg.ClientID, clientSecret: cfg.ClientSecret, bodyFormat: cfg.BodyFormat, caCertificate: cfg.CACertificate}
}

func (c *clientCache) reset() {
	c.mu.Lock()
	c.client = nil
	c.mu.Unlock()
}

// client returns the Ermeo client for cfg, building it on first use.
func (b *backend) client(cfg *configEntry) (*ermeo.Client, error) {
	key := b.connectionOf(cfg)
	b.ermeo.mu.Lock()
	defer b.ermeo.mu.Unlock()
	if b.ermeo.client != nil && b.ermeo.key == key {
		return b.ermeo.client, nil
	}
	hc := b.httpClient
	if cfg.CACertificate != "" {
		var err error
		if hc, err = trustingClient(b.httpClient, cfg.CACertificate); err != nil {
			return nil, err
		}
	}
	client, err := ermeo.New(ermeo.Config{
		APIURL:       cfg.APIURL,
		ClientID:     cfg.ClientID,
		ClientSecret: cfg.ClientSecret,
		BodyFormat:   ermeo.BodyFormat(cfg.BodyFormat),
		Detected:     ermeo.BodyFormat(cfg.BodyFormatDetected),
		HTTPClient:   hc,
	})
	if err != nil {
		return nil, err
	}
	b.ermeo.key, b.ermeo.client = key, client
	return client, nil
}

// defaultHTTPClient is one client for every call to Ermeo, so that
// connections are reused: TLS 1.2 or newer, certificates always verified,
// proxies from the environment, no overall timeout (each call is bounded by
// request_timeout).
func defaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	t.MaxIdleConnsPerHost = 16
	return &http.Client{Transport: t}
}

// trustingClient is a copy of base that trusts the CAs of a PEM bundle
// instead of the system's.
func trustingClient(base *http.Client, pemText string) (*http.Client, error) {
	pool, err := certPool(pemText)
	if err != nil {
		return nil, err
	}
	t, ok := base.Transport.(*http.Transport)
	if !ok || t == nil {
		t = http.DefaultTransport.(*http.Transport)
	}
	t = t.Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	return &http.Client{Transport: t}, nil
}

// certPool parses a PEM bundle of CA certificates.
func certPool(pemText string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(pemText)) {
		return nil, errors.New("ca_certificate: no PEM certificate found: give the CA bundle that signed the Ermeo server's certificate, in PEM")
	}
	return pool, nil
}

// rememberBodyFormat records in config the body format that a client in
// body_format=auto found to work, so that later clients (after a restart,
// or on another node) start from it. Nothing is written when it is already
// recorded, or when config changed meanwhile.
func (b *backend) rememberBodyFormat(ctx context.Context, s logical.Storage, cfg *configEntry, client *ermeo.Client) {
	detected := string(client.Detected())
	if cfg.BodyFormat != string(ermeo.BodyAuto) || detected == "" || detected == cfg.BodyFormatDetected {
		return
	}
	b.configMu.Lock()
	defer b.configMu.Unlock()
	ctx = context.WithoutCancel(ctx)
	stored, err := loadConfig(ctx, s)
	if err != nil || stored == nil || connectionOfEntry(stored) != connectionOfEntry(cfg) || stored.BodyFormatDetected == detected {
		return
	}
	stored.BodyFormatDetected = detected
	if err := saveConfig(ctx, s, stored); err != nil {
		b.Logger().Warn("could not record the body format Ermeo reads; it is found again on the next grant", "body_format_detected", detected, "error", err)
		return
	}
	b.cacheConfig(stored)
	b.Logger().Info("recorded the body format Ermeo reads", "body_format_detected", detected)
}
