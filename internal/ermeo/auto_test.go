package ermeo

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
)

// A server that reads only form fields, like the stock library: a JSON body
// is answered with invalid_request "Invalid grant_type parameter or
// parameter missing", and a form body with answer(fields).
func formOnlyServer(t *testing.T, answer func(fields map[string]string) reply) (*httptest.Server, *[]received) {
	t.Helper()
	var mu sync.Mutex
	var got []received
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := readRequest(r)
		mu.Lock()
		got = append(got, rec)
		mu.Unlock()
		rep := reply{400, jsonHeaders, `{"error":"invalid_request","error_description":"Invalid grant_type parameter or parameter missing"}`}
		if rec.contentType == "application/x-www-form-urlencoded" {
			rep = answer(rec.fields)
		}
		for k, v := range rep.header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(rep.status)
		_, _ = io.WriteString(w, rep.body)
	}))
	t.Cleanup(srv.Close)
	return srv, &got
}

var okToken = reply{200, jsonHeaders, `{"access_token":"` + testAccess + `","expires_in":7200,"token_type":"bearer","scope":"user","refresh_token":"` + testNewRefresh + `"}`}

func TestAutoFallsBackToFormOnceAndRemembers(t *testing.T) {
	for _, grant := range []string{"password", "refresh_token"} {
		t.Run(grant, func(t *testing.T) {
			srv, got := formOnlyServer(t, func(map[string]string) reply { return okToken })
			c := newClient(t, srv.URL, BodyAuto)
			call := func() (*Token, error) {
				if grant == "password" {
					return password(t, c)
				}
				return refresh(t, c)
			}
			tok, err := call()
			if err != nil || tok.AccessToken != testAccess {
				t.Fatalf("auto against a form-only server: %v %v", tok, err)
			}
			if len(*got) != 2 || (*got)[0].contentType != "application/json" || (*got)[1].contentType != "application/x-www-form-urlencoded" {
				t.Fatalf("want one JSON request then one form request, got %+v", *got)
			}
			if c.Detected() != BodyForm {
				t.Errorf("detected %q, want form", c.Detected())
			}
			// Later requests go straight to the format that worked.
			if _, err := call(); err != nil {
				t.Fatal(err)
			}
			if len(*got) != 3 || (*got)[2].contentType != "application/x-www-form-urlencoded" {
				t.Errorf("after detection: %+v", (*got)[2:])
			}
		})
	}
}

func TestAutoAgainstAJSONServerSendsOnce(t *testing.T) {
	srv, got := newServer(t, okToken)
	c := newClient(t, srv.URL, BodyAuto)
	if _, err := refresh(t, c); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.contentType != "application/json" || r.fields["refresh_token"] != testRefresh {
		t.Errorf("first request %+v", r)
	}
	if len(got) != 0 || c.Detected() != BodyJSON {
		t.Errorf("want one request and json detected, got %d more and %q", len(got), c.Detected())
	}
}

// The fallback never sends a refresh token a second time after any answer
// but the stock library's refusal of an unread body: after any other
// rejection, a 5xx, a 429, garbage or no answer, the grant may have been
// looked at (or spent), and exactly one request was sent.
func TestAutoNeverResendsAfterAnyOtherAnswer(t *testing.T) {
	answers := map[string]reply{
		"invalid_grant":                       {400, jsonHeaders, `{"error":"invalid_grant","error_description":"Invalid refresh token"}`},
		"invalid_client":                      {400, jsonHeaders, `{"error":"invalid_client","error_description":"The client credentials are invalid"}`},
		"invalid_request, another text":       {400, jsonHeaders, `{"error":"invalid_request","error_description":"No \"refresh_token\" parameter found"}`},
		"invalid_request, grant_type in text": {400, jsonHeaders, `{"error":"invalid_request","error_description":"Invalid grant_type parameter"}`},
		"unsupported_grant_type":              {400, jsonHeaders, `{"error":"unsupported_grant_type","error_description":null}`},
		"502":                                 {502, map[string]string{"Content-Type": "text/html"}, `<html>bad gateway</html>`},
		"429":                                 {429, nil, ``},
		"200 not JSON":                        {200, map[string]string{"Content-Type": "text/html"}, `<html>hi</html>`},
	}
	for name, rep := range answers {
		t.Run(name, func(t *testing.T) {
			srv, got := newServer(t, rep)
			c := newClient(t, srv.URL, BodyAuto)
			if _, err := refresh(t, c); err == nil {
				t.Fatalf("want an error")
			}
			if len(got) != 1 {
				t.Fatalf("want exactly 1 request, got %d", len(got))
			}
		})
	}
	// No answer at all (the connection is reset): one request.
	var requests atomic.Int32
	srv := hijackServer(t, func(c net.Conn) { requests.Add(1); reset(c) })
	if _, err := refresh(t, newClient(t, srv.URL, BodyAuto)); err == nil || requests.Load() != 1 {
		t.Errorf("a reset: err %v, %d requests, want 1", err, requests.Load())
	}
}

func TestAutoStartsFromTheDetectedFormat(t *testing.T) {
	srv, got := formOnlyServer(t, func(map[string]string) reply { return okToken })
	c, err := New(Config{APIURL: srv.URL, ClientID: testClientID, ClientSecret: testClientSecret, BodyFormat: BodyAuto, Detected: BodyForm})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := refresh(t, c); err != nil || len(*got) != 1 {
		t.Fatalf("with form detected before: %v, %d requests", err, len(*got))
	}
	if _, err := New(Config{APIURL: srv.URL, BodyFormat: BodyAuto, Detected: "xml"}); err == nil {
		t.Errorf("an unknown detected format was accepted")
	}
}
