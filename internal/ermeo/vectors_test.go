package ermeo

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// vectorsFile holds exchanges recorded against the server library Ermeo uses.
const vectorsFile = "../../../shared/ermeo-vectors.json"

type vector struct {
	Case    string `json:"case"`
	Request struct {
		Method      string            `json:"method"`
		Path        string            `json:"path"`
		ContentType *string           `json:"content_type"`
		Body        map[string]string `json:"body"`
		Headers     map[string]string `json:"headers"`
	} `json:"request"`
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    json.RawMessage   `json:"body"`
}

// placeholder matches the recordings' redacted tokens, e.g. "<86-char token>".
var placeholder = regexp.MustCompile(`<(\d+)-char token>`)

// loadVectors reads the recordings, replacing each redacted token with a
// distinct token of the same length.
func loadVectors(t *testing.T) []vector {
	t.Helper()
	data, err := os.ReadFile(vectorsFile)
	if errors.Is(err, fs.ErrNotExist) {
		t.Skipf("%s not found", vectorsFile)
	}
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	data = placeholder.ReplaceAllFunc(data, func(m []byte) []byte {
		length, _ := strconv.Atoi(string(placeholder.FindSubmatch(m)[1]))
		n++
		prefix := "tok" + strconv.Itoa(n) + "x"
		return []byte(prefix + strings.Repeat("A", length-len(prefix)))
	})
	var file struct {
		Vectors []vector `json:"vectors"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	return file.Vectors
}

// TestVectors replays each recorded exchange: the test server answers with
// the recorded status, headers and body, and checks that the client sent the
// recorded request wherever the client can send it.
func TestVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Case, func(t *testing.T) {
			srv, got := newServer(t, reply{v.Status, v.Headers, string(v.Body)})
			secrets := []string{v.Request.Body["client_secret"], v.Request.Body["password"], v.Request.Body["refresh_token"]}

			var (
				tok     *Token
				profile map[string]any
				err     error
				format  = BodyJSON
			)
			ctx := context.Background()
			switch v.Request.Path {
			case tokenPath:
				if v.Request.ContentType != nil && *v.Request.ContentType == "application/x-www-form-urlencoded" {
					format = BodyForm
				}
				c, err2 := New(Config{APIURL: srv.URL, ClientID: v.Request.Body["client_id"], ClientSecret: v.Request.Body["client_secret"], BodyFormat: format})
				if err2 != nil {
					t.Fatal(err2)
				}
				if v.Request.Body["grant_type"] == "refresh_token" {
					tok, err = c.RefreshGrant(ctx, v.Request.Body["refresh_token"])
				} else {
					tok, err = c.PasswordGrant(ctx, v.Request.Body["username"], v.Request.Body["password"])
				}
			case profilePath:
				c := newClient(t, srv.URL, "")
				profile, err = c.Profile(ctx, strings.TrimPrefix(v.Request.Headers["Authorization"], "Bearer "))
			default:
				t.Fatalf("unexpected path %q", v.Request.Path)
			}
			checkNoSecrets(t, err, secrets...)

			// The request, as far as the client can reproduce it. The client
			// sends only the grant types "password" and "refresh_token".
			r := <-got
			if r.method != v.Request.Method || r.path != v.Request.Path {
				t.Errorf("request %s %s, want %s %s", r.method, r.path, v.Request.Method, v.Request.Path)
			}
			if v.Request.ContentType != nil && r.contentType != *v.Request.ContentType {
				t.Errorf("Content-Type %q, want %q", r.contentType, *v.Request.ContentType)
			}
			if v.Request.Path == tokenPath {
				want := map[string]string{}
				for k, val := range v.Request.Body {
					want[k] = val
				}
				if gt := want["grant_type"]; gt != "password" && gt != "refresh_token" {
					want["grant_type"] = "password"
				}
				if !reflect.DeepEqual(r.fields, want) {
					t.Errorf("body fields %v, want %v", r.fields, want)
				}
			}
			if a := v.Request.Headers["Authorization"]; a != "" && r.auth != a {
				t.Errorf("Authorization %q, want %q", r.auth, a)
			}

			// The answer.
			var body map[string]any
			if err := json.Unmarshal(v.Body, &body); err != nil {
				t.Fatal(err)
			}
			switch {
			case v.Status != 200:
				re := asRejected(t, err)
				if re.StatusCode != v.Status || re.Code != body["error"] || re.Description != body["error_description"] {
					t.Errorf("got %d %q %q, want %d %v %v", re.StatusCode, re.Code, re.Description, v.Status, body["error"], body["error_description"])
				}
				wantHint := format == BodyJSON && strings.Contains(re.Description, "grant_type")
				if strings.Contains(re.Hint, "body_format=form") != wantHint {
					t.Errorf("hint %q", re.Hint)
				}
			case err != nil:
				t.Fatalf("unexpected error: %v", err)
			case v.Request.Path == profilePath:
				if !reflect.DeepEqual(profile, body) {
					t.Errorf("profile %v, want %v", profile, body)
				}
			default:
				if tok.AccessToken != body["access_token"] || tok.RefreshToken != body["refresh_token"] ||
					tok.TokenType != body["token_type"] || tok.ExpiresIn != time.Duration(body["expires_in"].(float64))*time.Second {
					t.Errorf("token %v does not match the recorded body", tok)
				}
			}
		})
	}
}

// TestVectorsRefreshOnce plays the recorded rotation: a refresh succeeds, and
// replaying the spent refresh token is rejected with invalid_grant, which
// ChainGone reports.
func TestVectorsRefreshOnce(t *testing.T) {
	byCase := map[string]vector{}
	for _, v := range loadVectors(t) {
		byCase[v.Case] = v
	}
	first, replay := byCase["refresh grant"], byCase["refresh grant replaying the used refresh token"]
	if first.Case == "" || replay.Case == "" {
		t.Skip("rotation vectors not recorded")
	}
	var mu sync.Mutex
	used := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := readRequest(r)
		mu.Lock()
		defer mu.Unlock()
		v := first
		if used[rec.fields["refresh_token"]] {
			v = replay
		}
		used[rec.fields["refresh_token"]] = true
		for k, val := range v.Headers {
			w.Header().Set(k, val)
		}
		w.WriteHeader(v.Status)
		io.WriteString(w, string(v.Body))
	}))
	defer srv.Close()

	c, err := New(Config{APIURL: srv.URL, ClientID: first.Request.Body["client_id"], ClientSecret: first.Request.Body["client_secret"]})
	if err != nil {
		t.Fatal(err)
	}
	rt := first.Request.Body["refresh_token"]
	tok, err := c.RefreshGrant(context.Background(), rt)
	if err != nil || tok.RefreshToken == "" || tok.RefreshToken == rt {
		t.Fatalf("first refresh: %v, %v", tok, err)
	}
	_, err = c.RefreshGrant(context.Background(), rt)
	checkNoSecrets(t, err, rt, first.Request.Body["client_secret"])
	if re := asRejected(t, err); !re.ChainGone() || re.Description != "Invalid refresh token" {
		t.Errorf("replay: %v", err)
	}
}
