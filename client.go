package ermeosecrets

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
)

// The Ermeo client, built once per cached config (config.go keeps it beside
// its config), so that it is rebuilt when config changes here (setConfig) or
// on another node (invalidate), as the GitHub plugin's Client() is.

// newClient builds a client for cfg on the backend's HTTP client (which tests
// replace to inject faults), or on a copy that trusts cfg's CA bundle.
func (b *backend) newClient(cfg *configEntry) (*ermeo.Client, error) {
	hc := b.httpClient
	if cfg.CACertificate != "" {
		pool, err := certPool(cfg.CACertificate)
		if err != nil {
			return nil, err
		}
		t, ok := hc.Transport.(*http.Transport)
		if !ok || t == nil {
			t = http.DefaultTransport.(*http.Transport)
		}
		t = t.Clone()
		t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
		hc = &http.Client{Transport: t}
	}
	return ermeo.New(ermeo.Config{
		APIURL:       cfg.APIURL,
		ClientID:     cfg.ClientID,
		ClientSecret: cfg.ClientSecret,
		BodyFormat:   ermeo.BodyFormat(cfg.BodyFormat),
		Detected:     ermeo.BodyFormat(cfg.BodyFormatDetected),
		HTTPClient:   hc,
	})
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

// certPool parses a PEM bundle of CA certificates.
func certPool(pemText string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(pemText)) {
		return nil, errors.New("ca_certificate: no PEM certificate found: give the CA bundle that signed the Ermeo server's certificate, in PEM")
	}
	return pool, nil
}
