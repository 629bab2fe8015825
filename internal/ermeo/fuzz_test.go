package ermeo

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// The fuzz targets call the parsers directly (parseToken for a 200 answer,
// rejection for a readable 4xx answer), as grant does after send, so that
// each input costs microseconds. Run them with
//
//	go test -run '^$' -fuzz '^FuzzTokenResponse$' -fuzztime 30s ./internal/ermeo/
//	go test -run '^$' -fuzz '^FuzzErrorResponse$' -fuzztime 30s ./internal/ermeo/
//
// A plain `go test` runs every seed below once.

// Recognisable token values planted in the seeds' token fields.
const (
	fuzzAccess  = "AT-fuzz-q7Vd2LmX9pKc4RzT8wYh3NbE"
	fuzzRefresh = "RT-fuzz-Jm5Xe8QwZ2vL7cPa4KtB9sHd"
)

// fuzzVectorsFile holds the recorded exchanges (see vectors_test.go).
const fuzzVectorsFile = "../../../shared/ermeo-vectors.json"

// vectorBodies returns the recorded response bodies with their statuses, the
// redacted tokens replaced by the planted ones. A missing file gives none.
func vectorBodies() (statuses []int, bodies [][]byte) {
	data, err := os.ReadFile(fuzzVectorsFile)
	if err != nil {
		return nil, nil
	}
	data = regexp.MustCompile(`"access_token":\s*"<\d+-char token>"`).ReplaceAll(data, []byte(`"access_token": "`+fuzzAccess+`"`))
	data = regexp.MustCompile(`"refresh_token":\s*"<\d+-char token>"`).ReplaceAll(data, []byte(`"refresh_token": "`+fuzzRefresh+`"`))
	var file struct {
		Vectors []struct {
			Status int             `json:"status"`
			Body   json.RawMessage `json:"body"`
		} `json:"vectors"`
	}
	if json.Unmarshal(data, &file) != nil {
		return nil, nil
	}
	for _, v := range file.Vectors {
		statuses = append(statuses, v.Status)
		bodies = append(bodies, v.Body)
	}
	return statuses, bodies
}

// seedBodies are shapes of success and error answers, valid and broken, that
// both targets start from.
func seedBodies() [][]byte {
	at := `"access_token":"` + fuzzAccess + `"`
	rt := `"refresh_token":"` + fuzzRefresh + `"`
	ok := `{` + at + `,"expires_in":7200,"token_type":"bearer","scope":"user",` + rt + `}`
	s := []string{
		// Success shapes (ermeo-oauth.md).
		ok,
		`{` + at + `,"expires_in":"7200","token_type":"bearer","scope":"user",` + rt + `}`,
		`{` + at + `,"expires_in":3600,"token_type":"Bearer","scope":null,` + rt + `}`,
		`{` + at + `,"expires_in":7200}`,
		`{` + at + `,"expires_in":7200,"token_type":"bearer","refresh_token":null}`,
		` {` + at + `,"expires_in":7200,"x":[1,{"y":null}],` + rt + `}` + "\n",
		// expires_in: null, missing, zero, negative, float, exponent, huge, odd types.
		`{` + at + `,"expires_in":null,` + rt + `}`,
		`{` + at + `,` + rt + `}`,
		`{` + at + `,"expires_in":0,` + rt + `}`,
		`{` + at + `,"expires_in":-7200,` + rt + `}`,
		`{` + at + `,"expires_in":"-7200",` + rt + `}`,
		`{` + at + `,"expires_in":7200.5,` + rt + `}`,
		`{` + at + `,"expires_in":"7200.0",` + rt + `}`,
		`{` + at + `,"expires_in":7.2e3,` + rt + `}`,
		`{` + at + `,"expires_in":9223372036,` + rt + `}`,
		`{` + at + `,"expires_in":9223372037,` + rt + `}`,
		`{` + at + `,"expires_in":99999999999999999999999999,` + rt + `}`,
		`{` + at + `,"expires_in":"99999999999999999999999999",` + rt + `}`,
		`{` + at + `,"expires_in":true,` + rt + `}`,
		`{` + at + `,"expires_in":[7200],` + rt + `}`,
		`{` + at + `,"expires_in":"",` + rt + `}`,
		`{` + at + `,"expires_in":"\u0037200",` + rt + `}`,
		// Token fields of the wrong type or value.
		`{"access_token":"","expires_in":7200,` + rt + `}`,
		`{"access_token":null,"expires_in":7200,` + rt + `}`,
		`{"access_token":12,"expires_in":7200,` + rt + `}`,
		`{` + at + `,"expires_in":7200,"refresh_token":12}`,
		`{` + at + `,"expires_in":7200,"token_type":"mac",` + rt + `}`,
		`{` + at + `,"expires_in":7200,"token_type":1,` + rt + `}`,
		`{` + at + `,"access_token":"` + fuzzRefresh + `","expires_in":7200}`,
		// Error shapes (ermeo-oauth.md's table, and the API's 401s).
		`{"error":"invalid_request","error_description":"Invalid grant_type parameter or parameter missing"}`,
		`{"error":"invalid_client","error_description":"Client id was not found in the headers or body"}`,
		`{"error":"invalid_client","error_description":"The client credentials are invalid"}`,
		`{"error":"unauthorized_client","error_description":"The grant type is unauthorized for this client_id"}`,
		`{"error":"invalid_request","error_description":"Missing parameters. \"username\" and \"password\" required"}`,
		`{"error":"invalid_grant","error_description":"Invalid username and password combination"}`,
		`{"error":"invalid_request","error_description":"No \"refresh_token\" parameter found"}`,
		`{"error":"invalid_grant","error_description":"Invalid refresh token"}`,
		`{"error":"invalid_grant","error_description":"Refresh token has expired"}`,
		`{"error":"unsupported_grant_type","error_description":null}`,
		`{"error":"unsupported_grant_type"}`,
		`{"error":"access_denied","error_description":"OAuth2 authentication required"}`,
		`{"error":"invalid_grant","error_description":"The access token provided is invalid."}`,
		`{"error":"invalid_grant","error_description":"The access token provided has expired."}`,
		`{"error":"invalid_request","error_description":"Only one method may be used to authenticate at a time (Auth header, GET or POST)."}`,
		// Error bodies carrying token fields (a confused server or proxy).
		`{"error":"invalid_grant","error_description":"Invalid refresh token",` + rt + `}`,
		`{"error":"server_error",` + at + `,"expires_in":7200,` + rt + `}`,
		// Odd error shapes.
		`{"error":"","error_description":"x"}`,
		`{"error":1,"error_description":"x"}`,
		`{"error":null}`,
		`{"error":"invalid_grant","error_description":12}`,
		`{"error":"invalid_grant","error_description":"a\nb\u001b[31mc\u202e\u0000"}`,
		`{"error":"invalid_grant","error_description":"` + strings.Repeat("é", 300) + `"}`,
		`{"error":"` + strings.Repeat("x", 300) + `"}`,
		`{"message":"bad"}`,
		`[{"error":"invalid_grant"}]`,
		`"` + fuzzAccess + `"`,
		`null`, `true`, `0`, `{}`, `[]`,
		// Not JSON: HTML pages from proxies, truncated JSON, garbage.
		`<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>`,
		`<!DOCTYPE html><html><body>Service Unavailable</body></html>`,
		ok[:len(ok)/2],
		ok[:len(ok)-1],
		ok + `}`,
		ok + ok,
		`{"error":"invalid_grant","error_description":"Invalid refre`,
		"\xef\xbb\xbf" + ok,
		"{\"error\":\"invalid_grant\xff\xfe\",\"error_description\":\"\xc3\x28\"}",
		``,
		` `,
		"\x00",
		// Deep nesting.
		strings.Repeat("[", 20000) + strings.Repeat("]", 20000),
		`{"error":"invalid_grant","x":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}`,
		strings.Repeat(`{"a":`, 3000) + `1` + strings.Repeat(`}`, 3000),
	}
	// A huge body: MaxResponseBytes of a valid answer padded with a big field.
	pad := MaxResponseBytes - len(ok) - len(`,"pad":""`)
	s = append(s, ok[:len(ok)-1]+`,"pad":"`+strings.Repeat("p", pad)+`"}`)
	s = append(s, `{"error":"invalid_grant","error_description":"`+strings.Repeat("d", 1<<18)+`"}`)

	out := make([][]byte, len(s))
	for i := range s {
		out[i] = []byte(s[i])
	}
	_, vec := vectorBodies()
	return append(out, vec...)
}

// tokenValues returns the string values of the body's top-level
// "access_token" and "refresh_token" members that are 8 bytes or longer: none
// of them may appear in an error. (The planted tokens are found this way in
// the seeds. Elsewhere in a body, say as the "error" itself, a client cannot
// tell a token from any other text the server sends.)
func tokenValues(body []byte) []string {
	var m map[string]any
	if json.Unmarshal(body, &m) != nil {
		return nil
	}
	var vals []string
	for _, k := range []string{"access_token", "refresh_token"} {
		if s, ok := m[k].(string); ok && len(s) >= 8 {
			vals = append(vals, s)
		}
	}
	return vals
}

// checkErrorSafe asserts that err is classified as want, says what was wrong,
// and that no way of printing it shows a token value from body. skeleton is
// the error's text without anything taken from the body: a value that appears
// in it (say a "token" spelled "rejected") is not a leak.
func checkErrorSafe(t *testing.T, err error, want Outcome, body []byte) {
	t.Helper()
	if got := OutcomeOf(err); got != want {
		t.Fatalf("OutcomeOf(%v) = %v, want %v", err, got, want)
	}
	var skeleton string
	switch e := err.(type) {
	case *RejectedError:
		if e.Code == "" {
			t.Fatalf("rejection without a code: %#v", e)
		}
		c := *e
		c.Code, c.Description = "", ""
		skeleton = c.Error()
	case *UnknownOutcomeError:
		if e.Reason == "" {
			t.Fatalf("unknown outcome without a reason: %#v", e)
		}
		skeleton = e.Error() // every part is the client's own text
	default:
		t.Fatalf("error %v is a %T, want *RejectedError or *UnknownOutcomeError", err, err)
	}
	texts := []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err), fmt.Sprintf("%q", err)}
	for _, v := range tokenValues(body) {
		if strings.Contains(skeleton, v) {
			continue
		}
		for _, text := range texts {
			if strings.Contains(text, v) {
				t.Fatalf("error text %q contains the token value %q from the body", text, v)
			}
		}
	}
}

// wantToken is an oracle for parseToken, written from ermeo-oauth.md: a JSON
// object with a non-empty string access_token, expires_in a positive whole
// number of seconds (a number or a string of digits), token_type absent, null
// or "bearer" in any case, and refresh_token absent, null or a string.
func wantToken(body []byte) (tok Token, ok bool) {
	if !json.Valid(body) || !bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) {
		return tok, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if dec.Decode(&m) != nil {
		return tok, false
	}
	at, isStr := m["access_token"].(string)
	if !isStr || at == "" {
		return tok, false
	}
	tok.AccessToken = at
	var digits string
	switch e := m["expires_in"].(type) {
	case json.Number:
		digits = string(e)
	case string:
		digits = e
	default:
		return tok, false
	}
	if digits == "" || strings.TrimLeft(digits, "0123456789") != "" {
		return tok, false
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n <= 0 || n > int64(maxDuration/time.Second) {
		return tok, false
	}
	tok.ExpiresIn = time.Duration(n) * time.Second
	switch tt := m["token_type"].(type) {
	case nil:
	case string:
		if !strings.EqualFold(tt, "bearer") {
			return tok, false
		}
		tok.TokenType = tt
	default:
		return tok, false
	}
	switch rt := m["refresh_token"].(type) {
	case nil:
	case string:
		tok.RefreshToken = rt
	default:
		return tok, false
	}
	return tok, true
}

// FuzzTokenResponse feeds parseToken, the parser of a 200 answer to a token
// request, arbitrary bodies.
func FuzzTokenResponse(f *testing.F) {
	for _, b := range seedBodies() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		tok, err := parseToken(http.StatusOK, body)
		want, wantOK := wantToken(body)

		if err != nil {
			if tok != nil {
				t.Fatalf("a token and an error (%v)", err)
			}
			// A flawed 200 may still have been granted: never "rejected".
			checkErrorSafe(t, err, OutcomeUnknown, body)
			if e := err.(*UnknownOutcomeError); e.StatusCode != http.StatusOK {
				t.Fatalf("StatusCode = %d, want 200", e.StatusCode)
			}
			if wantOK {
				t.Fatalf("a valid answer refused: %v", err)
			}
			return
		}
		if tok == nil {
			t.Fatal("no token and no error")
		}
		if tok.AccessToken == "" || tok.ExpiresIn <= 0 {
			t.Fatalf("success with access token set %v, ExpiresIn %v", tok.AccessToken != "", tok.ExpiresIn)
		}
		if !wantOK {
			t.Fatalf("an invalid answer accepted: %v", tok)
		}
		if *tok != want {
			t.Fatalf("token %#v, want %#v (values redacted; ExpiresIn %v vs %v)", *tok, want, tok.ExpiresIn, want.ExpiresIn)
		}
		for _, out := range []string{tok.String(), tok.GoString(), fmt.Sprintf("%v %+v %#v %s %q %x %d", tok, *tok, tok, tok, tok, tok, tok)} {
			for _, v := range []string{tok.AccessToken, tok.RefreshToken} {
				if len(v) >= 8 && strings.Contains(out, v) && !strings.Contains(Token{ExpiresIn: tok.ExpiresIn, TokenType: tok.TokenType}.String(), v) {
					t.Fatalf("printing the token shows a token value: %q", out)
				}
			}
		}
	})
}

// wantRejection is an oracle for rejection: a body that is a JSON object with
// a non-empty string "error" is an OAuth error; its error_description counts
// only when it is a string.
func wantRejection(body []byte) (code, desc string, ok bool) {
	if !json.Valid(body) {
		return "", "", false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if dec.Decode(&m) != nil {
		return "", "", false
	}
	code, _ = m["error"].(string)
	desc, _ = m["error_description"].(string)
	return code, desc, code != ""
}

// checkShown asserts that got is the server's text want made safe to show,
// as RejectedError documents: non-printable characters replaced by '?', then
// cut to 200 characters. Where want holds one of the body's token values, a
// client that redacts it is right too: then got need only be printable and
// short.
func checkShown(t *testing.T, field, got, want string, tokens []string) {
	t.Helper()
	for _, r := range got {
		if !unicode.IsPrint(r) {
			t.Fatalf("%s %q holds the non-printable %U", field, got, r)
		}
	}
	if utf8.RuneCountInString(got) > 200 {
		t.Fatalf("%s %q is over 200 characters", field, got)
	}
	for _, tv := range tokens {
		if strings.Contains(want, tv) {
			return
		}
	}
	shown := []rune(strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, want))
	if len(shown) > 200 {
		shown = shown[:200]
	}
	if got != string(shown) {
		t.Fatalf("%s = %q, want %q (the server's %q)", field, got, string(shown), want)
	}
}

// FuzzErrorResponse feeds rejection, the parser of a readable non-200 answer
// (a 4xx other than 429), arbitrary statuses, Retry-After values and bodies,
// and adds the operator hint as grant does.
func FuzzErrorResponse(f *testing.F) {
	statuses, vec := vectorBodies()
	for i, b := range vec {
		f.Add(statuses[i], "", false, b)
	}
	for i, b := range seedBodies() {
		f.Add([]int{400, 401, 403, 404, 405, 418}[i%6], []string{"", "120", "Wed, 21 Oct 2015 07:28:00 GMT", "-1", "x"}[i%5], i%2 == 0, b)
	}

	clients := map[bool]*Client{}
	for _, form := range []bool{false, true} {
		format := BodyJSON
		if form {
			format = BodyForm
		}
		c, err := New(Config{APIURL: "http://127.0.0.1:1", ClientID: "1_x", ClientSecret: "s", BodyFormat: format})
		if err != nil {
			f.Fatal(err)
		}
		clients[form] = c
	}

	f.Fuzz(func(t *testing.T, status int, retry string, form bool, body []byte) {
		// Only a 4xx other than 429 reaches rejection (see send).
		if status < 400 || status > 499 || status == http.StatusTooManyRequests {
			status = 400 + int(uint(status)%100)
			if status == http.StatusTooManyRequests {
				status = http.StatusBadRequest
			}
		}
		resp := &http.Response{StatusCode: status, Header: http.Header{}}
		if retry != "" {
			resp.Header.Set("Retry-After", retry)
		}
		err := rejection(resp, body)
		if err == nil {
			t.Fatal("rejection returned nil")
		}
		code, desc, isOAuth := wantRejection(body)

		if re, ok := err.(*RejectedError); ok {
			re.Hint = clients[form].hint(re, clients[form].format)
			checkErrorSafe(t, err, OutcomeRejected, body)
			if !isOAuth {
				t.Fatalf("a body without an OAuth error rejected as %q", re.Code)
			}
			if re.StatusCode != status {
				t.Fatalf("StatusCode = %d, want %d", re.StatusCode, status)
			}
			checkShown(t, "Code", re.Code, code, tokenValues(body))
			checkShown(t, "Description", re.Description, desc, tokenValues(body))
			if re.ChainGone() != (re.Code == "invalid_grant") {
				t.Fatalf("ChainGone() = %v for %q", re.ChainGone(), re.Code)
			}
			if !strings.Contains(err.Error(), re.Code) {
				t.Fatalf("Error() %q does not name the code", err.Error())
			}
			return
		}

		checkErrorSafe(t, err, OutcomeUnknown, body)
		ue := err.(*UnknownOutcomeError)
		if isOAuth {
			t.Fatalf("an OAuth error (%q) not recognised: %v", code, err)
		}
		if ue.StatusCode != status || ue.Reason != fmt.Sprintf("HTTP %d", status) {
			t.Fatalf("got status %d reason %q, want %d", ue.StatusCode, ue.Reason, status)
		}
		if ue.RetryAfter < 0 {
			t.Fatalf("RetryAfter = %v", ue.RetryAfter)
		}
	})
}

func BenchmarkParseTokenResponse(b *testing.B) {
	body := []byte(`{"access_token":"` + strings.Repeat("a", 86) + `","expires_in":7200,"token_type":"bearer","scope":"user","refresh_token":"` + strings.Repeat("r", 86) + `"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseToken(200, body); err != nil {
			b.Fatal(err)
		}
	}
}
