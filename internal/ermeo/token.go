package ermeo

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Token is a successful token response. Its String, GoString and Format
// methods never print the token values.
type Token struct {
	AccessToken  string
	TokenType    string        // as received (e.g. "bearer"), "" if absent
	ExpiresIn    time.Duration // from expires_in
	RefreshToken string        // "" if the response carried none: the old refresh token stays current (RFC 6749 section 6)
}

func (t Token) String() string {
	return fmt.Sprintf("{AccessToken:%s TokenType:%s ExpiresIn:%s RefreshToken:%s}",
		redact(t.AccessToken), t.TokenType, t.ExpiresIn, redact(t.RefreshToken))
}

func (t Token) GoString() string {
	return fmt.Sprintf("ermeo.Token{AccessToken:%q, TokenType:%q, ExpiresIn:%d, RefreshToken:%q}",
		redact(t.AccessToken), t.TokenType, t.ExpiresIn, redact(t.RefreshToken))
}

// Format makes every verb (%d and %x included) print the redacted form.
func (t Token) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, t.GoString())
		return
	}
	io.WriteString(f, t.String())
}

func redact(s string) string {
	if s == "" {
		return ""
	}
	return "<redacted>"
}

// parseToken reads a 200 answer to a token request. Any flaw is an
// *UnknownOutcomeError: the server may have granted even so.
func parseToken(status int, body []byte) (*Token, error) {
	bad := func(reason string) error { return &UnknownOutcomeError{StatusCode: status, Reason: reason} }

	if len(bytes.TrimSpace(body)) == 0 {
		return nil, bad("empty response")
	}
	var fields map[string]json.RawMessage
	if reason := decodeObject(body, &fields); reason != "" {
		return nil, bad(reason)
	}

	var t Token
	var ok bool
	if t.AccessToken, ok = optString(fields, "access_token"); !ok {
		return nil, bad("access_token is not a string")
	}
	if t.AccessToken == "" {
		return nil, bad("missing access_token")
	}
	if t.ExpiresIn, ok = parseExpiresIn(fields["expires_in"]); !ok {
		return nil, bad("expires_in is not a positive number of seconds")
	}
	if raw, found := fields["token_type"]; found && string(raw) != "null" {
		if err := json.Unmarshal(raw, &t.TokenType); err != nil || !strings.EqualFold(t.TokenType, "bearer") {
			return nil, bad("token_type is not bearer")
		}
	}
	if t.RefreshToken, ok = optString(fields, "refresh_token"); !ok {
		return nil, bad("refresh_token is not a string")
	}
	return &t, nil
}

// parseExpiresIn accepts a positive whole number of seconds, as a JSON number
// (7200) or a string of digits ("7200").
func parseExpiresIn(raw json.RawMessage) (time.Duration, bool) {
	s := string(raw)
	if strings.HasPrefix(s, `"`) {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, false
		}
	}
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false // missing, null, negative, fractional, exponent, bool, ...
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > int64(maxDuration/time.Second) {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}

// decodeObject decodes a JSON object into v, a pointer to a map. It returns
// "" on success, else the reason the body does not fit.
func decodeObject(body []byte, v any) string {
	if !json.Valid(body) {
		return "response is not JSON"
	}
	if body = bytes.TrimSpace(body); body[0] != '{' || json.Unmarshal(body, v) != nil {
		return "response is not a JSON object"
	}
	return ""
}
