package ermeo

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A server or proxy that echoes what it was sent must not put a secret into
// the client's errors.
func TestRejectionRedactsEchoedSecrets(t *testing.T) {
	const secret, password, refresh = "client-secret-echo-1234", "password-echo-5678", "refresh-echo-9012"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"bad ` + secret + ` ` + password + ` ` + refresh + `"}`))
	}))
	defer srv.Close()
	c, err := New(Config{APIURL: srv.URL, ClientID: "1_x", ClientSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"password": func() error { _, err := c.PasswordGrant(context.Background(), "u", password); return err },
		"refresh":  func() error { _, err := c.RefreshGrant(context.Background(), refresh); return err },
	} {
		err := call()
		if OutcomeOf(err) != OutcomeRejected {
			t.Fatalf("%s: want rejected, got %v", name, err)
		}
		if !strings.Contains(err.Error(), "<redacted>") {
			t.Errorf("%s: nothing redacted in %q", name, err)
		}
		for _, s := range []string{secret, password, refresh} {
			if strings.Contains(err.Error(), s) && (s != password || name == "password") && (s != refresh || name == "refresh") {
				t.Errorf("%s: error %q carries a secret the request sent", name, err)
			}
		}
	}
}
