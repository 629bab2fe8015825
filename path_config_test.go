package ermeosecrets

import (
	"encoding/pem"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

func TestConfigWriteReadNeverReturnsTheSecret(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	resp := e.must(logical.ReadOperation, "config", nil)
	want := map[string]any{
		"api_url":                 e.url,
		"client_id":               testClientID,
		"client_secret_set":       true,
		"body_format":             "auto",
		"body_format_detected":    "json",
		"request_timeout":         int64(30),
		"default_min_ttl":         int64(600),
		"default_rotation_period": int64(7 * 24 * 3600),
	}
	for k, v := range want {
		if resp.Data[k] != v {
			t.Errorf("config %s = %v (%T), want %v", k, resp.Data[k], resp.Data[k], v)
		}
	}
	for k, v := range resp.Data {
		if s, ok := v.(string); ok && strings.Contains(s, testClientSecret) {
			t.Errorf("config read returns the client secret in %s", k)
		}
	}
}

func TestConfigUpdateKeepsFieldsLeftOut(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.must(logical.UpdateOperation, "config", map[string]any{"body_format": "form", "request_timeout": "10s"})
	c, err := loadConfig(t.Context(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	if c.ClientSecret != testClientSecret || c.ClientID != testClientID || c.BodyFormat != "form" || c.RequestTimeout.Seconds() != 10 {
		t.Errorf("after a partial update: %+v", *c)
	}
}

func TestConfigTrailingSlashAndLoopback(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	for _, u := range []string{"https://api.ermeo.com/", "https://api-v2.ermeo.com", "http://127.0.0.1:8200", "http://localhost:1", "http://[::1]:80/"} {
		e.must(logical.UpdateOperation, "config", map[string]any{"api_url": u, "client_id": testClientID, "client_secret": "s", "verify_connection": false})
		c, _ := loadConfig(t.Context(), e.storage)
		if strings.HasSuffix(c.APIURL, "/") {
			t.Errorf("api_url %q stored with a trailing slash", u)
		}
	}
}

func TestConfigBadInput(t *testing.T) {
	cases := []struct {
		name  string
		data  map[string]any
		field string
	}{
		{"missing client_id", map[string]any{"client_secret": "s"}, "client_id"},
		{"missing client_secret", map[string]any{"client_id": testClientID}, "client_secret"},
		{"empty client_id", map[string]any{"client_id": "  ", "client_secret": "s"}, "client_id"},
		{"empty client_secret", map[string]any{"client_id": testClientID, "client_secret": ""}, "client_secret"},
		{"api_url no scheme", map[string]any{"api_url": "api.ermeo.com"}, "api_url"},
		{"api_url http remote", map[string]any{"api_url": "http://api.ermeo.com"}, "api_url"},
		{"api_url http private range", map[string]any{"api_url": "http://10.0.0.1"}, "api_url"},
		{"api_url user info", map[string]any{"api_url": "https://user:pw@api.ermeo.com"}, "api_url"},
		{"api_url fragment", map[string]any{"api_url": "https://api.ermeo.com/#frag"}, "api_url"},
		{"api_url query", map[string]any{"api_url": "https://api.ermeo.com/?a=b"}, "api_url"},
		{"api_url ftp", map[string]any{"api_url": "ftp://api.ermeo.com"}, "api_url"},
		{"api_url no host", map[string]any{"api_url": "https://"}, "api_url"},
		{"body_format", map[string]any{"body_format": "xml"}, "body_format"},
		{"request_timeout zero", map[string]any{"request_timeout": 0}, "request_timeout"},
		{"request_timeout negative", map[string]any{"request_timeout": "-1s"}, "request_timeout"},
		{"request_timeout huge", map[string]any{"request_timeout": "1h"}, "request_timeout"},
		{"request_timeout garbage", map[string]any{"request_timeout": "soon"}, "request_timeout"},
		{"default_min_ttl zero", map[string]any{"default_min_ttl": 0}, "default_min_ttl"},
		{"default_rotation_period two weeks", map[string]any{"default_rotation_period": "336h"}, "default_rotation_period"},
		{"unknown field", map[string]any{"clientsecret": "x"}, "clientsecret"},
		{"huge value", map[string]any{"client_id": strings.Repeat("1", 10000)}, "client_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, fakeermeo.Options{})
			data := map[string]any{"client_id": testClientID, "client_secret": "s"}
			for k, v := range tc.data {
				data[k] = v
			}
			if _, ok := tc.data["client_id"]; !ok && tc.field == "client_id" {
				delete(data, "client_id")
			}
			if _, ok := tc.data["client_secret"]; !ok && tc.field == "client_secret" {
				delete(data, "client_secret")
			}
			resp, err := e.request(logical.UpdateOperation, "config", data)
			if err != nil || resp == nil || !resp.IsError() {
				t.Fatalf("want a 400, got resp=%v err=%v", resp, err)
			}
			msg := resp.Error().Error()
			if !strings.Contains(msg, tc.field) {
				t.Errorf("error %q does not name %s", msg, tc.field)
			}
			if strings.Contains(msg, "pw@") || strings.Contains(msg, testClientSecret) {
				t.Errorf("error echoes a secret: %q", msg)
			}
			if c, _ := loadConfig(t.Context(), e.storage); c != nil {
				t.Errorf("bad config was stored")
			}
		})
	}
}

func TestConfigDelete(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	e.configure()
	e.must(logical.DeleteOperation, "config", nil)
	resp, err := e.request(logical.ReadOperation, "config", nil)
	if err != nil || resp != nil {
		t.Fatalf("config after delete: %v %v", resp, err)
	}
}

func TestConfigWarnsAboutAClientIDWithoutUnderscore(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	resp := e.must(logical.UpdateOperation, "config", map[string]any{"client_id": "12345", "client_secret": "s", "verify_connection": false})
	if resp == nil || len(resp.Warnings) == 0 {
		t.Fatalf("want a warning, got %v", resp)
	}
}

func TestTLSIsVerifiedAndACABundleCanBeGiven(t *testing.T) {
	fake := fakeermeo.New(fakeermeo.Options{})
	srv := httptest.NewTLSServer(fake)
	defer srv.Close()
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))

	// The production HTTP client, not the test server's: it must refuse a
	// certificate it cannot verify.
	e := newTestEnv(t, fakeermeo.Options{})
	e.b.httpClient = defaultHTTPClient()
	_, err := e.request(logical.UpdateOperation, "config", map[string]any{"api_url": srv.URL, "client_id": testClientID, "client_secret": testClientSecret})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an unverifiable certificate must be refused by the credentials check, got %v", err)
	}
	if c, _ := loadConfig(t.Context(), e.storage); c != nil {
		t.Fatalf("a refused config was stored")
	}
	e.must(logical.UpdateOperation, "config", map[string]any{"api_url": srv.URL, "client_id": testClientID, "client_secret": testClientSecret, "verify_connection": false})
	_, err = e.request(logical.UpdateOperation, "accounts/app", map[string]any{"username": testUser, "password": testPassword})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an unverifiable certificate must be refused, got %v", err)
	}
	if c := fake.Counters(); c.Requests != 0 {
		t.Fatalf("the request reached the server despite its certificate")
	}

	e.must(logical.UpdateOperation, "config", map[string]any{"ca_certificate": caPEM, "verify_connection": true})
	e.createAccount("app", nil)
	if !fake.AccessTokenValid(e.creds("app").Data["access_token"].(string)) {
		t.Errorf("with the CA bundle: token not valid")
	}

	resp, err := e.request(logical.UpdateOperation, "config", map[string]any{"ca_certificate": "not a certificate"})
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "ca_certificate") {
		t.Errorf("a bad bundle: want a 400 naming ca_certificate, got %v %v", resp, err)
	}
}
