package ermeo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// Secrets used by the tests: no error string may contain any of them. The
// client and the user are the fake Ermeo's defaults (fakeermeo imports
// nothing of this package, so its tests may import it).
const (
	testClientID     = fakeermeo.DefaultClientID
	testClientSecret = fakeermeo.DefaultClientSecret
	testUsername     = fakeermeo.DefaultUsername
	testPassword     = fakeermeo.DefaultPassword
	testRefresh      = "refresh-NDE0MmNmZTQxNWEyYTIzMzgwNGQ5NTgx"
	testAccess       = "access-NzlkNTA5MGVhNDA1YjhmMDdjNTA5OWY0"
	testNewRefresh   = "refresh-new-MmNmZTQxNWEyYTIzMzgwNGQ5NT"
)

var testSecrets = []string{testClientSecret, testPassword, testRefresh, testAccess, testNewRefresh}

// checkNoSecrets fails if err, printed in any common way, contains a secret.
func checkNoSecrets(t *testing.T, err error, more ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, text := range []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
		for _, s := range append(more, testSecrets...) {
			if s != "" && strings.Contains(text, s) {
				t.Errorf("error %q contains a secret", text)
			}
		}
	}
}

// received is what a test server saw of one request.
type received struct {
	method, path, rawQuery         string
	contentType, accept, userAgent string
	auth                           string
	fields                         map[string]string // token request body fields
	bodyErr                        string            // why the body could not be read as flat string fields
}

func readRequest(r *http.Request) received {
	rec := received{
		method: r.Method, path: r.URL.Path, rawQuery: r.URL.RawQuery,
		contentType: r.Header.Get("Content-Type"), accept: r.Header.Get("Accept"),
		userAgent: r.Header.Get("User-Agent"), auth: r.Header.Get("Authorization"),
	}
	if r.Method != http.MethodPost {
		return rec
	}
	rec.fields = map[string]string{}
	switch rec.contentType {
	case "application/json":
		var m map[string]any
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			rec.bodyErr = err.Error()
		}
		for k, v := range m {
			s, ok := v.(string)
			if !ok {
				rec.bodyErr = k + " is not a string"
			}
			rec.fields[k] = s
		}
	case "application/x-www-form-urlencoded":
		body, _ := io.ReadAll(r.Body)
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			rec.bodyErr = err.Error()
		}
		for k, v := range vals {
			if len(v) != 1 {
				rec.bodyErr = k + " repeated"
			}
			rec.fields[k] = v[0]
		}
	default:
		rec.bodyErr = "unexpected content type"
	}
	return rec
}

// reply is a canned answer.
type reply struct {
	status int
	header map[string]string
	body   string
}

var jsonHeaders = map[string]string{
	"Content-Type":  "application/json",
	"Cache-Control": "no-store, private",
	"Pragma":        "no-cache",
}

// newServer starts a server that records each request and answers rep.
func newServer(t *testing.T, rep reply) (*httptest.Server, chan received) {
	t.Helper()
	got := make(chan received, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- readRequest(r)
		for k, v := range rep.header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(rep.status)
		io.WriteString(w, rep.body)
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

func newClient(t *testing.T, apiURL string, format BodyFormat) *Client {
	t.Helper()
	c, err := New(Config{APIURL: apiURL, ClientID: testClientID, ClientSecret: testClientSecret, BodyFormat: format})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// refresh and password call a grant and check the error for secrets.
func refresh(t *testing.T, c *Client) (*Token, error) {
	t.Helper()
	tok, err := c.RefreshGrant(context.Background(), testRefresh)
	checkNoSecrets(t, err)
	return tok, err
}

func password(t *testing.T, c *Client) (*Token, error) {
	t.Helper()
	tok, err := c.PasswordGrant(context.Background(), testUsername, testPassword)
	checkNoSecrets(t, err)
	return tok, err
}

func asUnknown(t *testing.T, err error) *UnknownOutcomeError {
	t.Helper()
	var ue *UnknownOutcomeError
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T): want *UnknownOutcomeError", err, err)
	}
	if OutcomeOf(err) != OutcomeUnknown {
		t.Errorf("OutcomeOf = %v, want unknown", OutcomeOf(err))
	}
	return ue
}

func asRejected(t *testing.T, err error) *RejectedError {
	t.Helper()
	var re *RejectedError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T): want *RejectedError", err, err)
	}
	if OutcomeOf(err) != OutcomeRejected {
		t.Errorf("OutcomeOf = %v, want rejected", OutcomeOf(err))
	}
	return re
}

const okBody = `{"access_token":"` + testAccess + `","expires_in":7200,"token_type":"bearer","scope":"user","refresh_token":"` + testNewRefresh + `"}`

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
		wantURL string
	}{
		{"default", Config{}, "", DefaultAPIURL},
		{"https", Config{APIURL: "https://api-v2.ermeo.com"}, "", "https://api-v2.ermeo.com"},
		{"trailing slash", Config{APIURL: "https://api.ermeo.com/"}, "", "https://api.ermeo.com"},
		{"path prefix", Config{APIURL: "http://127.0.0.1:8080/ermeo//"}, "", "http://127.0.0.1:8080/ermeo"},
		{"form", Config{APIURL: "https://x", BodyFormat: BodyForm}, "", "https://x"},
		{"no scheme", Config{APIURL: "api.ermeo.com"}, "https:// or http://", ""},
		{"ftp", Config{APIURL: "ftp://api.ermeo.com"}, "https:// or http://", ""},
		{"no host", Config{APIURL: "https://"}, "no host", ""},
		{"unparsable", Config{APIURL: "https://a b.com"}, "not a valid URL", ""},
		{"user info", Config{APIURL: "https://user:" + testClientSecret + "@api.ermeo.com"}, "user info", ""},
		{"query", Config{APIURL: "https://api.ermeo.com/?x=1"}, "query", ""},
		{"fragment", Config{APIURL: "https://api.ermeo.com/#x"}, "fragment", ""},
		{"body format", Config{APIURL: "https://x", BodyFormat: "xml"}, "body format", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg)
			checkNoSecrets(t, err)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if c.baseURL != tt.wantURL {
				t.Errorf("baseURL = %q, want %q", c.baseURL, tt.wantURL)
			}
			if c.http.CheckRedirect == nil {
				t.Error("redirects are not disabled")
			}
		})
	}
}

func TestGrantRequests(t *testing.T) {
	passwordFields := map[string]string{
		"grant_type": "password", "client_id": testClientID, "client_secret": testClientSecret,
		"username": testUsername, "password": testPassword,
	}
	refreshFields := map[string]string{
		"grant_type": "refresh_token", "client_id": testClientID, "client_secret": testClientSecret,
		"refresh_token": testRefresh,
	}
	tests := []struct {
		name        string
		format      BodyFormat
		suffix      string // appended to the server URL to form APIURL
		grant       func(*testing.T, *Client) (*Token, error)
		wantType    string
		wantPath    string
		wantFields  map[string]string
		wantRefresh string
	}{
		{"password json", "", "", password, "application/json", "/oauth/v2/token", passwordFields, testNewRefresh},
		{"password form", BodyForm, "", password, "application/x-www-form-urlencoded", "/oauth/v2/token", passwordFields, testNewRefresh},
		{"refresh json", BodyJSON, "", refresh, "application/json", "/oauth/v2/token", refreshFields, testNewRefresh},
		{"refresh form", BodyForm, "", refresh, "application/x-www-form-urlencoded", "/oauth/v2/token", refreshFields, testNewRefresh},
		{"trailing slash", BodyJSON, "/", refresh, "application/json", "/oauth/v2/token", refreshFields, testNewRefresh},
		{"path prefix", BodyForm, "/prefix/", password, "application/x-www-form-urlencoded", "/prefix/oauth/v2/token", passwordFields, testNewRefresh},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, got := newServer(t, reply{200, jsonHeaders, okBody})
			tok, err := tt.grant(t, newClient(t, srv.URL+tt.suffix, tt.format))
			if err != nil {
				t.Fatalf("grant: %v", err)
			}
			want := Token{AccessToken: testAccess, TokenType: "bearer", ExpiresIn: 2 * time.Hour, RefreshToken: tt.wantRefresh}
			if *tok != want {
				t.Errorf("token = %#v, want %#v", *tok, want) // redacted; compare fields below
				t.Errorf("access %v, type %q, expires %v, refresh %v", tok.AccessToken == testAccess, tok.TokenType, tok.ExpiresIn, tok.RefreshToken == tt.wantRefresh)
			}
			r := <-got
			if r.method != http.MethodPost || r.path != tt.wantPath || r.rawQuery != "" {
				t.Errorf("request %s %s?%s, want POST %s with no query", r.method, r.path, r.rawQuery, tt.wantPath)
			}
			if r.contentType != tt.wantType {
				t.Errorf("Content-Type = %q, want %q", r.contentType, tt.wantType)
			}
			if r.accept != "application/json" {
				t.Errorf("Accept = %q", r.accept)
			}
			if !strings.HasPrefix(r.userAgent, "vault-plugin-secrets-ermeo") {
				t.Errorf("User-Agent = %q", r.userAgent)
			}
			if r.auth != "" {
				t.Errorf("Authorization = %q, want none", r.auth)
			}
			if r.bodyErr != "" {
				t.Errorf("body: %s", r.bodyErr)
			}
			if !reflect.DeepEqual(r.fields, tt.wantFields) {
				t.Errorf("body fields = %v, want %v", r.fields, tt.wantFields)
			}
		})
	}
}

func TestTokenResponses(t *testing.T) {
	const at, rt = `"access_token":"` + testAccess + `"`, `"refresh_token":"` + testNewRefresh + `"`
	tests := []struct {
		name        string
		body        string
		wantReason  string // "" for success
		wantExpires time.Duration
		wantType    string
		wantRefresh string
	}{
		{"full", okBody, "", 2 * time.Hour, "bearer", testNewRefresh},
		{"expires_in string", `{` + at + `,"expires_in":"7200","token_type":"bearer",` + rt + `}`, "", 2 * time.Hour, "bearer", testNewRefresh},
		{"expires_in 3600", `{` + at + `,"expires_in":3600,"token_type":"bearer",` + rt + `}`, "", time.Hour, "bearer", testNewRefresh},
		{"token_type Bearer", `{` + at + `,"expires_in":7200,"token_type":"Bearer",` + rt + `}`, "", 2 * time.Hour, "Bearer", testNewRefresh},
		{"token_type missing", `{` + at + `,"expires_in":7200,` + rt + `}`, "", 2 * time.Hour, "", testNewRefresh},
		{"scope null", `{` + at + `,"expires_in":7200,"token_type":"bearer","scope":null,` + rt + `}`, "", 2 * time.Hour, "bearer", testNewRefresh},
		{"scope missing", `{` + at + `,"expires_in":7200,"token_type":"bearer",` + rt + `}`, "", 2 * time.Hour, "bearer", testNewRefresh},
		{"refresh_token missing", `{` + at + `,"expires_in":7200,"token_type":"bearer","scope":"user"}`, "", 2 * time.Hour, "bearer", ""},
		{"refresh_token null", `{` + at + `,"expires_in":7200,"token_type":"bearer","refresh_token":null}`, "", 2 * time.Hour, "bearer", ""},
		{"extra fields", `{` + at + `,"expires_in":7200,"token_type":"bearer","x":[1,{}],` + rt + `}`, "", 2 * time.Hour, "bearer", testNewRefresh},

		{"expires_in missing", `{` + at + `,"token_type":"bearer",` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in null", `{` + at + `,"expires_in":null,` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in zero", `{` + at + `,"expires_in":0,` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in negative", `{` + at + `,"expires_in":-7200,` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in fractional", `{` + at + `,"expires_in":7200.5,` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in exponent", `{` + at + `,"expires_in":7.2e3,` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in bool", `{` + at + `,"expires_in":true,` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in word", `{` + at + `,"expires_in":"two hours",` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in empty string", `{` + at + `,"expires_in":"",` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in negative string", `{` + at + `,"expires_in":"-7200",` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in fractional string", `{` + at + `,"expires_in":"7200.0",` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in zero string", `{` + at + `,"expires_in":"0",` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in object", `{` + at + `,"expires_in":{},` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in array", `{` + at + `,"expires_in":[7200],` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"expires_in overflow", `{` + at + `,"expires_in":99999999999999999999,` + rt + `}`, "expires_in is not a positive number of seconds", 0, "", ""},
		{"token_type mac", `{` + at + `,"expires_in":7200,"token_type":"mac",` + rt + `}`, "token_type is not bearer", 0, "", ""},
		{"token_type empty", `{` + at + `,"expires_in":7200,"token_type":"",` + rt + `}`, "token_type is not bearer", 0, "", ""},
		{"token_type number", `{` + at + `,"expires_in":7200,"token_type":1,` + rt + `}`, "token_type is not bearer", 0, "", ""},
		{"access_token missing", `{"expires_in":7200,"token_type":"bearer",` + rt + `}`, "missing access_token", 0, "", ""},
		{"access_token empty", `{"access_token":"","expires_in":7200,` + rt + `}`, "missing access_token", 0, "", ""},
		{"access_token null", `{"access_token":null,"expires_in":7200,` + rt + `}`, "missing access_token", 0, "", ""},
		{"access_token number", `{"access_token":12,"expires_in":7200,` + rt + `}`, "access_token is not a string", 0, "", ""},
		{"refresh_token number", `{` + at + `,"expires_in":7200,"refresh_token":12}`, "refresh_token is not a string", 0, "", ""},
		{"oauth error with 200", `{"error":"invalid_grant","error_description":"Invalid refresh token"}`, "missing access_token", 0, "", ""},
		{"empty body", ``, "empty response", 0, "", ""},
		{"html", `<html><body>OK</body></html>`, "response is not JSON", 0, "", ""},
		{"truncated", okBody[:len(okBody)/2], "response is not JSON", 0, "", ""},
		{"trailing garbage", okBody + `}`, "response is not JSON", 0, "", ""},
		{"null", `null`, "response is not a JSON object", 0, "", ""},
		{"array", `[` + okBody + `]`, "response is not a JSON object", 0, "", ""},
		{"string", `"` + testAccess + `"`, "response is not a JSON object", 0, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newServer(t, reply{200, jsonHeaders, tt.body})
			tok, err := refresh(t, newClient(t, srv.URL, ""))
			if tt.wantReason != "" {
				ue := asUnknown(t, err)
				if ue.Reason != tt.wantReason || ue.StatusCode != 200 {
					t.Errorf("got reason %q status %d, want %q 200", ue.Reason, ue.StatusCode, tt.wantReason)
				}
				if tok != nil {
					t.Error("token returned with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("RefreshGrant: %v", err)
			}
			if tok.AccessToken != testAccess || tok.ExpiresIn != tt.wantExpires || tok.TokenType != tt.wantType || tok.RefreshToken != tt.wantRefresh {
				t.Errorf("token: access ok %v, expires %v, type %q, refresh ok %v",
					tok.AccessToken == testAccess, tok.ExpiresIn, tok.TokenType, tok.RefreshToken == tt.wantRefresh)
			}
		})
	}
}

// The error table of ermeo-oauth.md, plus what a server might add.
var errorRows = []struct {
	name, code string
	desc       any // string or nil (JSON null)
}{
	{"grant_type missing or unknown", "invalid_request", "Invalid grant_type parameter or parameter missing"},
	{"no client id", "invalid_client", "Client id was not found in the headers or body"},
	{"bad client credentials", "invalid_client", "The client credentials are invalid"},
	{"grant type not allowed", "unauthorized_client", "The grant type is unauthorized for this client_id"},
	{"username or password missing", "invalid_request", `Missing parameters. "username" and "password" required`},
	{"wrong username or password", "invalid_grant", "Invalid username and password combination"},
	{"refresh_token missing", "invalid_request", `No "refresh_token" parameter found`},
	{"refresh token unknown or used", "invalid_grant", "Invalid refresh token"},
	{"refresh token expired", "invalid_grant", "Refresh token has expired"},
	{"unsupported grant type, null description", "unsupported_grant_type", nil},
}

func TestRejections(t *testing.T) {
	for _, row := range errorRows {
		for _, format := range []BodyFormat{BodyJSON, BodyForm} {
			t.Run(row.name+"/"+string(format), func(t *testing.T) {
				body, _ := json.Marshal(map[string]any{"error": row.code, "error_description": row.desc})
				srv, _ := newServer(t, reply{400, jsonHeaders, string(body)})
				_, err := refresh(t, newClient(t, srv.URL, format))
				re := asRejected(t, err)
				wantDesc, _ := row.desc.(string)
				if re.StatusCode != 400 || re.Code != row.code || re.Description != wantDesc {
					t.Errorf("got %d %q %q, want 400 %q %q", re.StatusCode, re.Code, re.Description, row.code, wantDesc)
				}
				if re.ChainGone() != (row.code == "invalid_grant") {
					t.Errorf("ChainGone = %v", re.ChainGone())
				}
				wantHint := format == BodyJSON && strings.Contains(wantDesc, "grant_type")
				if gotHint := strings.Contains(re.Hint, "body_format=form"); gotHint != wantHint {
					t.Errorf("hint %q: body_format hint present %v, want %v", re.Hint, gotHint, wantHint)
				}
				if !strings.Contains(err.Error(), row.code) || !strings.Contains(err.Error(), wantDesc) {
					t.Errorf("Error() = %q lacks the code or description", err.Error())
				}
			})
		}
	}
}

func TestRejectionShapes(t *testing.T) {
	long := strings.Repeat("é", 300)
	tests := []struct {
		name       string
		status     int
		body       string
		wantCode   string // "" means an unknown outcome is expected
		wantDesc   string
		wantReason string
	}{
		{"401 invalid_client", 401, `{"error":"invalid_client","error_description":"The client credentials are invalid"}`, "invalid_client", "The client credentials are invalid", ""},
		{"description absent", 400, `{"error":"invalid_grant"}`, "invalid_grant", "", ""},
		{"description not a string", 400, `{"error":"invalid_grant","error_description":12}`, "invalid_grant", "", ""},
		{"description truncated", 400, `{"error":"invalid_grant","error_description":"` + long + `"}`, "invalid_grant", strings.Repeat("é", 200), ""},
		{"description control chars", 400, `{"error":"invalid_grant","error_description":"a\nb\u001b[31mc\u202e"}`, "invalid_grant", "a?b?[31mc?", ""},
		{"404 html", 404, `<html>Not Found</html>`, "", "", "HTTP 404"},
		{"400 empty", 400, ``, "", "", "HTTP 400"},
		{"400 no error field", 400, `{"message":"bad"}`, "", "", "HTTP 400"},
		{"400 empty error", 400, `{"error":"","error_description":"x"}`, "", "", "HTTP 400"},
		{"400 error not a string", 400, `{"error":1}`, "", "", "HTTP 400"},
		{"400 array", 400, `[{"error":"invalid_grant"}]`, "", "", "HTTP 400"},
		{"500 oauth body", 500, `{"error":"invalid_grant","error_description":"Invalid refresh token"}`, "", "", "HTTP 500"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newServer(t, reply{tt.status, jsonHeaders, tt.body})
			_, err := refresh(t, newClient(t, srv.URL, ""))
			if tt.wantCode == "" {
				ue := asUnknown(t, err)
				if ue.Reason != tt.wantReason || ue.StatusCode != tt.status {
					t.Errorf("got %q %d, want %q %d", ue.Reason, ue.StatusCode, tt.wantReason, tt.status)
				}
				return
			}
			re := asRejected(t, err)
			if re.StatusCode != tt.status || re.Code != tt.wantCode || re.Description != tt.wantDesc {
				t.Errorf("got %d %q %q, want %d %q %q", re.StatusCode, re.Code, re.Description, tt.status, tt.wantCode, tt.wantDesc)
			}
		})
	}
}

func TestUnknownStatuses(t *testing.T) {
	date := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	html := map[string]string{"Content-Type": "text/html"}
	tests := []struct {
		name       string
		rep        reply
		wantReason string
		wantRetry  time.Duration // checked within a few seconds
	}{
		{"500 html", reply{500, html, "<html><h1>Internal Server Error</h1></html>"}, "HTTP 500", 0},
		{"502 html", reply{502, html, "<html><h1>502 Bad Gateway</h1></html>"}, "HTTP 502", 0},
		{"503 html", reply{503, html, "<html>Service Unavailable</html>"}, "HTTP 503", 0},
		{"503 retry-after", reply{503, map[string]string{"Retry-After": "120"}, ""}, "HTTP 503", 120 * time.Second},
		{"500 empty", reply{500, nil, ""}, "HTTP 500", 0},
		{"429", reply{429, jsonHeaders, `{"error":"too_many_requests"}`}, "HTTP 429", 0},
		{"429 retry-after seconds", reply{429, map[string]string{"Retry-After": "30"}, ""}, "HTTP 429", 30 * time.Second},
		{"429 retry-after date", reply{429, map[string]string{"Retry-After": date}, ""}, "HTTP 429", 90 * time.Second},
		{"429 retry-after garbage", reply{429, map[string]string{"Retry-After": "soon"}, ""}, "HTTP 429", 0},
		{"204", reply{204, nil, ""}, "HTTP 204", 0},
		{"201 with token", reply{201, jsonHeaders, okBody}, "HTTP 201", 0},
		{"304", reply{304, nil, ""}, "redirect not followed", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newServer(t, tt.rep)
			tok, err := refresh(t, newClient(t, srv.URL, ""))
			ue := asUnknown(t, err)
			if tok != nil || ue.Reason != tt.wantReason || ue.StatusCode != tt.rep.status {
				t.Errorf("got %q %d, want %q %d", ue.Reason, ue.StatusCode, tt.wantReason, tt.rep.status)
			}
			if d := ue.RetryAfter - tt.wantRetry; d < -3*time.Second || d > 3*time.Second {
				t.Errorf("RetryAfter = %v, want about %v", ue.RetryAfter, tt.wantRetry)
			}
		})
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	for _, status := range []int{301, 302, 303, 307, 308} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			var hits atomic.Int32
			target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				io.WriteString(w, okBody)
			}))
			defer target.Close()
			srv, _ := newServer(t, reply{status, map[string]string{"Location": target.URL + "/oauth/v2/token"}, ""})

			_, err := refresh(t, newClient(t, srv.URL, ""))
			ue := asUnknown(t, err)
			if ue.Reason != "redirect not followed" || ue.StatusCode != status {
				t.Errorf("got %q %d", ue.Reason, ue.StatusCode)
			}
			if n := hits.Load(); n != 0 {
				t.Errorf("redirect target hit %d times", n)
			}
		})
	}
}

func TestCallerHTTPClientUntouched(t *testing.T) {
	var hits atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer target.Close()
	srv, _ := newServer(t, reply{302, map[string]string{"Location": target.URL}, ""})

	var redirectCalls, roundTrips atomic.Int32
	orig := func(*http.Request, []*http.Request) error { redirectCalls.Add(1); return nil }
	hc := &http.Client{
		Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			roundTrips.Add(1)
			return http.DefaultTransport.RoundTrip(r)
		}),
		CheckRedirect: orig,
	}
	c, err := New(Config{APIURL: srv.URL, ClientID: testClientID, ClientSecret: testClientSecret, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	_, err = refresh(t, c)
	asUnknown(t, err)

	if reflect.ValueOf(hc.CheckRedirect).Pointer() != reflect.ValueOf(orig).Pointer() {
		t.Error("caller's CheckRedirect was replaced")
	}
	if redirectCalls.Load() != 0 || hits.Load() != 0 {
		t.Errorf("redirect followed: CheckRedirect calls %d, target hits %d", redirectCalls.Load(), hits.Load())
	}
	if roundTrips.Load() != 1 {
		t.Errorf("caller's transport used %d times, want 1", roundTrips.Load())
	}

	// A client without CheckRedirect keeps none.
	plain := &http.Client{}
	if _, err := New(Config{APIURL: srv.URL, HTTPClient: plain}); err != nil {
		t.Fatal(err)
	}
	if plain.CheckRedirect != nil {
		t.Error("caller's nil CheckRedirect was set")
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestResponseSizeLimit(t *testing.T) {
	pad := func(n int) string { return okBody + strings.Repeat(" ", n-len(okBody)) }
	t.Run("exactly the limit", func(t *testing.T) {
		srv, _ := newServer(t, reply{200, jsonHeaders, pad(MaxResponseBytes)})
		if _, err := refresh(t, newClient(t, srv.URL, "")); err != nil {
			t.Fatalf("RefreshGrant: %v", err)
		}
	})
	t.Run("one byte over", func(t *testing.T) {
		srv, _ := newServer(t, reply{200, jsonHeaders, pad(MaxResponseBytes + 1)})
		_, err := refresh(t, newClient(t, srv.URL, ""))
		if ue := asUnknown(t, err); ue.Reason != "response too large" {
			t.Errorf("reason %q", ue.Reason)
		}
	})
	for _, status := range []int{200, 400} {
		t.Run(fmt.Sprintf("endless %d", status), func(t *testing.T) {
			const total = 256 << 20
			written := make(chan int, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(status)
				chunk := []byte(`{"error":"` + strings.Repeat("x", 32<<10))
				n := 0
				for n < total {
					m, err := w.Write(chunk)
					n += m
					if err != nil {
						break
					}
				}
				written <- n
			}))
			defer srv.Close()
			_, err := refresh(t, newClient(t, srv.URL, ""))
			if ue := asUnknown(t, err); ue.Reason != "response too large" || ue.StatusCode != status {
				t.Errorf("got %q %d", ue.Reason, ue.StatusCode)
			}
			select {
			case n := <-written:
				if n >= total {
					t.Errorf("client read the whole %d-byte body", n)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("server still writing: the client did not drop the connection")
			}
		})
	}
}

// hijack answers a request by taking over its connection.
func hijackServer(t *testing.T, then func(net.Conn)) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		then(conn)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func reset(conn net.Conn) {
	conn.(*net.TCPConn).SetLinger(0) // close sends RST
	conn.Close()
}

func TestConnectionFailures(t *testing.T) {
	tests := []struct {
		name        string
		then        func(net.Conn)
		wantReasons []string
		wantStatus  int
	}{
		{"reset before answer", reset, []string{"connection reset"}, 0},
		{"closed before answer", func(c net.Conn) { c.Close() }, []string{"connection closed"}, 0},
		{"closed mid-body", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"+okBody[:20])
			c.Close()
		}, []string{"connection closed"}, 200},
		{"reset mid-body", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"+okBody[:20])
			time.Sleep(50 * time.Millisecond)
			reset(c)
		}, []string{"connection reset", "connection closed"}, 200},
		{"garbage", func(c net.Conn) {
			io.WriteString(c, "not http at all\r\n\r\n")
			c.Close()
		}, []string{"request failed"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := hijackServer(t, tt.then)
			_, err := refresh(t, newClient(t, srv.URL, ""))
			ue := asUnknown(t, err)
			found := false
			for _, r := range tt.wantReasons {
				found = found || ue.Reason == r
			}
			if !found || ue.StatusCode != tt.wantStatus {
				t.Errorf("got %q %d (%v), want one of %q %d", ue.Reason, ue.StatusCode, ue.Err, tt.wantReasons, tt.wantStatus)
			}
			if ue.Err == nil {
				t.Error("no underlying error")
			}
		})
	}

	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		_, err = refresh(t, newClient(t, "http://"+addr, ""))
		if ue := asUnknown(t, err); ue.Reason != "connection refused" || ue.StatusCode != 0 {
			t.Errorf("got %q %d", ue.Reason, ue.StatusCode)
		}
	})
}

func TestContext(t *testing.T) {
	// stall answers after writing head (and part of a body), then waits
	// for the client to go away.
	stall := func(head string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body) // then r.Context ends when the client hangs up
			if head != "" {
				w.Header().Set("Content-Length", "500")
				w.WriteHeader(200)
				io.WriteString(w, head)
				w.(http.Flusher).Flush()
			}
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}
	}
	tests := []struct {
		name       string
		head       string
		cancel     bool
		wantReason string
		wantErr    error
		wantStatus int
	}{
		{"deadline before answer", "", false, "timeout", context.DeadlineExceeded, 0},
		{"deadline mid-body", okBody[:20], false, "timeout", context.DeadlineExceeded, 200},
		{"canceled before answer", "", true, "canceled", context.Canceled, 0},
		{"canceled mid-body", okBody[:20], true, "canceled", context.Canceled, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(stall(tt.head))
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			if tt.cancel {
				time.AfterFunc(100*time.Millisecond, cancel)
			}
			start := time.Now()
			_, err := newClient(t, srv.URL, "").RefreshGrant(ctx, testRefresh)
			checkNoSecrets(t, err)
			if time.Since(start) > 5*time.Second {
				t.Errorf("took %v", time.Since(start))
			}
			ue := asUnknown(t, err)
			if ue.Reason != tt.wantReason || ue.StatusCode != tt.wantStatus {
				t.Errorf("got %q %d, want %q %d", ue.Reason, ue.StatusCode, tt.wantReason, tt.wantStatus)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.wantErr)
			}
		})
	}

	t.Run("http.Client.Timeout", func(t *testing.T) {
		srv := httptest.NewServer(stall(""))
		defer srv.Close()
		c, err := New(Config{APIURL: srv.URL, HTTPClient: &http.Client{Timeout: 100 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = refresh(t, c)
		if ue := asUnknown(t, err); ue.Reason != "timeout" {
			t.Errorf("reason %q", ue.Reason)
		}
	})
}

func TestProfile(t *testing.T) {
	www := map[string]string{
		"Content-Type":     "application/json",
		"WWW-Authenticate": `Bearer realm="Service", error="invalid_grant", error_description="The access token provided is invalid."`,
	}
	tests := []struct {
		name       string
		rep        reply
		want       map[string]any
		wantCode   string
		wantReason string
	}{
		{"ok", reply{200, jsonHeaders, `{"id":1,"email":"jane@example.com","roles":["admin"]}`},
			map[string]any{"id": 1.0, "email": "jane@example.com", "roles": []any{"admin"}}, "", ""},
		{"401 invalid token", reply{401, www, `{"error":"invalid_grant","error_description":"The access token provided is invalid."}`}, nil, "invalid_grant", ""},
		{"401 expired", reply{401, www, `{"error":"invalid_grant","error_description":"The access token provided has expired."}`}, nil, "invalid_grant", ""},
		{"200 array", reply{200, jsonHeaders, `[]`}, nil, "", "response is not a JSON object"},
		{"200 html", reply{200, nil, `<html>`}, nil, "", "response is not JSON"},
		{"503", reply{503, nil, ``}, nil, "", "HTTP 503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, got := newServer(t, tt.rep)
			profile, err := newClient(t, srv.URL+"/", "").Profile(context.Background(), testAccess)
			checkNoSecrets(t, err)
			r := <-got
			if r.method != http.MethodGet || r.path != "/api/v1/profile" || r.rawQuery != "" {
				t.Errorf("request %s %s?%s", r.method, r.path, r.rawQuery)
			}
			if r.auth != "Bearer "+testAccess {
				t.Error("Authorization header is not \"Bearer <token>\"")
			}
			if r.accept != "application/json" {
				t.Errorf("Accept = %q", r.accept)
			}
			switch {
			case tt.wantCode != "":
				if re := asRejected(t, err); re.Code != tt.wantCode || re.StatusCode != tt.rep.status {
					t.Errorf("got %d %q", re.StatusCode, re.Code)
				}
			case tt.wantReason != "":
				if ue := asUnknown(t, err); ue.Reason != tt.wantReason {
					t.Errorf("reason %q, want %q", ue.Reason, tt.wantReason)
				}
			default:
				if err != nil {
					t.Fatalf("Profile: %v", err)
				}
				if !reflect.DeepEqual(profile, tt.want) {
					t.Errorf("profile = %v, want %v", profile, tt.want)
				}
			}
		})
	}
}

func TestTokenRedacted(t *testing.T) {
	tok := &Token{AccessToken: testAccess, TokenType: "bearer", ExpiresIn: 2 * time.Hour, RefreshToken: testNewRefresh}
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q", "%d", "%x", "%10.3v"} {
		for _, v := range []any{tok, *tok, []*Token{tok}, struct{ T Token }{*tok}} {
			out := fmt.Sprintf(format, v)
			if strings.Contains(out, testAccess) || strings.Contains(out, testNewRefresh) {
				t.Errorf("Sprintf(%q, %T) = %q leaks a token", format, v, out)
			}
		}
	}
	if s := tok.String(); !strings.Contains(s, "<redacted>") || !strings.Contains(s, "2h0m0s") || !strings.Contains(s, "bearer") {
		t.Errorf("String() = %q", s)
	}
	if s := tok.GoString(); !strings.Contains(s, "<redacted>") {
		t.Errorf("GoString() = %q", s)
	}
	if s := (Token{AccessToken: "x"}).String(); !strings.Contains(s, "RefreshToken:}") {
		t.Errorf("String() of a token without refresh token = %q", s)
	}
}

func TestOutcome(t *testing.T) {
	rejected := &RejectedError{StatusCode: 400, Code: "invalid_grant"}
	unknown := &UnknownOutcomeError{Reason: "timeout", Err: context.DeadlineExceeded}
	tests := []struct {
		err  error
		want Outcome
		str  string
	}{
		{nil, OutcomeSuccess, "success"},
		{rejected, OutcomeRejected, "rejected"},
		{fmt.Errorf("rotate: %w", rejected), OutcomeRejected, "rejected"},
		{unknown, OutcomeUnknown, "unknown"},
		{fmt.Errorf("rotate: %w", unknown), OutcomeUnknown, "unknown"},
		{errors.New("other"), OutcomeUnknown, "unknown"},
	}
	for _, tt := range tests {
		if got := OutcomeOf(tt.err); got != tt.want || got.String() != tt.str {
			t.Errorf("OutcomeOf(%v) = %v, want %v", tt.err, got, tt.str)
		}
	}
	if s := Outcome(7).String(); s != "Outcome(7)" {
		t.Errorf("Outcome(7).String() = %q", s)
	}
	if !errors.Is(unknown, context.DeadlineExceeded) {
		t.Error("UnknownOutcomeError does not unwrap")
	}
	if !rejected.ChainGone() || (&RejectedError{Code: "invalid_client"}).ChainGone() {
		t.Error("ChainGone is wrong")
	}
}

func TestErrorStrings(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&RejectedError{StatusCode: 400, Code: "invalid_grant", Description: "Invalid refresh token"},
			"ermeo: rejected with HTTP 400: invalid_grant: Invalid refresh token"},
		{&RejectedError{StatusCode: 400, Code: "unsupported_grant_type"},
			"ermeo: rejected with HTTP 400: unsupported_grant_type"},
		{&RejectedError{StatusCode: 400, Code: "invalid_request", Description: "d", Hint: "h"},
			"ermeo: rejected with HTTP 400: invalid_request: d (h)"},
		{&UnknownOutcomeError{StatusCode: 429, Reason: "HTTP 429", RetryAfter: 30 * time.Second},
			"ermeo: outcome unknown: HTTP 429, retry after 30s"},
		{&UnknownOutcomeError{StatusCode: 200, Reason: "response is not JSON"},
			"ermeo: outcome unknown: response is not JSON (HTTP 200)"},
		{&UnknownOutcomeError{Reason: "timeout", Err: context.DeadlineExceeded},
			"ermeo: outcome unknown: timeout: context deadline exceeded"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"-5", 0},
		{"120", 2 * time.Minute},
		{"1.5", 0},
		{"99999999999999999999", 0},
		{now.Add(time.Minute).Format(http.TimeFormat), time.Minute},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"Sunday, 22-Nov-26 10:05:00 GMT", 5 * time.Minute},
		{"tomorrow", 0},
	}
	for _, tt := range tests {
		if got := retryAfter(tt.in, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
