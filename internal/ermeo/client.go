// Package ermeo is a client for Ermeo's OAuth 2.0 token endpoint (POST
// {APIURL}/oauth/v2/token) and for the profile route that checks a token.
//
// A refresh token works once, so the client never retries, never follows a
// redirect, and sorts every failure into two kinds: *RejectedError (nothing
// was granted) and *UnknownOutcomeError (the grant may have happened). Secrets
// travel only in request bodies and headers, never in URLs or error strings.
// The package does no logging.
package ermeo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// BodyFormat is the encoding of token request bodies.
type BodyFormat string

const (
	BodyJSON BodyFormat = "json" // application/json, as Ermeo documents (the default)
	BodyForm BodyFormat = "form" // application/x-www-form-urlencoded, as Ermeo's SDK sends
	// BodyAuto sends JSON and, if the server answers as one that reads only
	// form fields (invalid_request "Invalid grant_type parameter or parameter
	// missing": it read nothing, so nothing was spent), the same grant once
	// more as a form. Later requests use the format that worked (Client.Detected).
	BodyAuto BodyFormat = "auto"
)

const (
	DefaultAPIURL    = "https://api.ermeo.com" // used when Config.APIURL is empty
	MaxResponseBytes = 1 << 20                 // the most of a response body the client reads

	tokenPath   = "/oauth/v2/token"
	profilePath = "/api/v1/profile"
	userAgent   = "vault-plugin-secrets-ermeo"
)

// Config configures a Client.
type Config struct {
	APIURL       string // base URL, trailing slash optional; "" means DefaultAPIURL
	ClientID     string
	ClientSecret string
	BodyFormat   BodyFormat // "" means BodyJSON
	Detected     BodyFormat // for BodyAuto: an earlier Client's Detected()
	// HTTPClient is copied, never mutated, and the copy never follows
	// redirects; nil means a clone of http.DefaultTransport and no Timeout
	// (bound calls with ctx).
	HTTPClient *http.Client
}

// Client calls the Ermeo API. It is safe for concurrent use.
type Client struct {
	baseURL      string // without trailing slash
	clientID     string
	clientSecret string
	format       BodyFormat
	http         *http.Client
	detected     atomic.Value // string: Detected() of a BodyAuto client
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	raw := cfg.APIURL
	if raw == "" {
		raw = DefaultAPIURL
	}
	if _, err := ParseAPIURL(raw); err != nil {
		return nil, fmt.Errorf("ermeo: api_url %w", err)
	}

	format := cfg.BodyFormat
	if format == "" {
		format = BodyJSON
	}
	if format != BodyJSON && format != BodyForm && format != BodyAuto {
		return nil, fmt.Errorf("ermeo: unknown body format %q (want %q, %q or %q)", cfg.BodyFormat, BodyAuto, BodyJSON, BodyForm)
	}
	if cfg.Detected != "" && cfg.Detected != BodyJSON && cfg.Detected != BodyForm {
		return nil, fmt.Errorf("ermeo: unknown detected body format %q", cfg.Detected)
	}

	var hc http.Client
	if cfg.HTTPClient != nil {
		hc = *cfg.HTTPClient
	} else {
		hc.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	c := &Client{
		baseURL:      strings.TrimRight(raw, "/"),
		clientID:     cfg.ClientID,
		clientSecret: cfg.ClientSecret,
		format:       format,
		http:         &hc,
	}
	if format == BodyAuto && cfg.Detected != "" {
		c.detected.Store(string(cfg.Detected))
	}
	return c, nil
}

// ParseAPIURL checks that raw is a base URL the client can use: http or
// https, a host, and no user info, query or fragment. Its errors complete
// the sentence "api_url ...". Which schemes and hosts are allowed where is
// the caller's policy.
func ParseAPIURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the whole URL; keep only the reason
		}
		return nil, fmt.Errorf("is not a valid URL: %v", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("must start with https:// or http://")
	case u.Host == "":
		return nil, errors.New("has no host")
	case u.User != nil:
		return nil, errors.New("must not contain user info")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#"):
		return nil, errors.New("must not contain a query or fragment")
	}
	return u, nil
}

// tokenRequest is a token request body. Empty fields are left out, so that
// the server names a missing parameter precisely.
type tokenRequest struct {
	GrantType    string `json:"grant_type"`
	ClientID     string `json:"client_id,omitempty"`
	ClientSecret string `json:"client_secret,omitempty"`
	Username     string `json:"username,omitempty"`
	Password     string `json:"password,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// PasswordGrant exchanges a username and password for a token pair.
func (c *Client) PasswordGrant(ctx context.Context, username, password string) (*Token, error) {
	return c.grant(ctx, tokenRequest{GrantType: "password", Username: username, Password: password})
}

// RefreshGrant exchanges a refresh token for a new token pair (see
// Token.RefreshToken).
func (c *Client) RefreshGrant(ctx context.Context, refreshToken string) (*Token, error) {
	return c.grant(ctx, tokenRequest{GrantType: "refresh_token", RefreshToken: refreshToken})
}

// Detected is the format a BodyAuto client found to work, "" until a token
// request is answered; for other clients, their format.
func (c *Client) Detected() BodyFormat {
	if c.format != BodyAuto {
		return c.format
	}
	f, _ := c.detected.Load().(string)
	return BodyFormat(f)
}

func (c *Client) grant(ctx context.Context, r tokenRequest) (*Token, error) {
	if c.format != BodyAuto {
		return c.grantAs(ctx, r, c.format)
	}
	format := c.Detected()
	if format == "" {
		format = BodyJSON
	}
	tok, err := c.grantAs(ctx, r, format)
	if format == BodyJSON && unread(err) {
		format = BodyForm // nothing was spent: the same grant, once, as a form
		tok, err = c.grantAs(ctx, r, format)
	}
	var re *RejectedError
	if err == nil || errors.As(err, &re) && !unread(err) {
		c.detected.Store(string(format)) // a token or an OAuth error: the body was read
	}
	return tok, err
}

// unread reports whether err is the stock server library's answer to a body it
// did not read (see BodyAuto).
func unread(err error) bool {
	var re *RejectedError
	return errors.As(err, &re) && re.Code == "invalid_request" &&
		re.Description == "Invalid grant_type parameter or parameter missing"
}

// grantAs sends one token request with the body in format (json or form).
func (c *Client) grantAs(ctx context.Context, r tokenRequest, format BodyFormat) (*Token, error) {
	r.ClientID, r.ClientSecret = c.clientID, c.clientSecret
	body, _ := json.Marshal(r) // a struct of strings always encodes
	contentType := "application/json"
	if format == BodyForm {
		form := url.Values{}
		for k, v := range map[string]string{"grant_type": r.GrantType, "client_id": r.ClientID, "client_secret": r.ClientSecret,
			"username": r.Username, "password": r.Password, "refresh_token": r.RefreshToken} {
			if v != "" { // left out, as in the JSON
				form.Set(k, v)
			}
		}
		body, contentType = []byte(form.Encode()), "application/x-www-form-urlencoded"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.baseURL+tokenPath, bytes.NewReader(body))
	if err != nil {
		return nil, &UnknownOutcomeError{Reason: "cannot build request", Err: err}
	}
	req.Header.Set("Content-Type", contentType)

	resp, respBody, err := c.send(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		err := rejection(resp, respBody, r.RefreshToken, r.Password, r.ClientSecret)
		if re, ok := err.(*RejectedError); ok {
			re.Hint = c.hint(re, format)
		}
		return nil, err
	}
	return parseToken(resp.StatusCode, respBody)
}

// hint returns advice for the operator on a rejected token request.
func (c *Client) hint(e *RejectedError, format BodyFormat) string {
	switch {
	case e.Code == "invalid_request" && format == BodyJSON && c.format == BodyJSON && strings.Contains(e.Description, "grant_type"):
		// The client always sends a valid grant_type: a server that cannot
		// find it did not read the JSON body.
		return "the server may not read JSON bodies: try body_format=form"
	case e.Code == "invalid_client":
		return "check client_id and client_secret"
	}
	return ""
}

// Profile calls GET {APIURL}/api/v1/profile with the access token and returns
// the decoded JSON object.
func (c *Client) Profile(ctx context.Context, accessToken string) (map[string]any, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.baseURL+profilePath, nil)
	if err != nil {
		return nil, &UnknownOutcomeError{Reason: "cannot build request", Err: err}
	}
	req.Header.Set("Authorization", "Bearer "+accessToken) // capital B: Ermeo's match is case-sensitive

	resp, body, err := c.send(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, rejection(resp, body, accessToken)
	}
	var profile map[string]any
	if reason := decodeObject(body, &profile); reason != "" {
		return nil, &UnknownOutcomeError{StatusCode: resp.StatusCode, Reason: reason}
	}
	return profile, nil
}

// send performs req once. It returns the response and its body only for a 200
// or a 4xx other than 429, the statuses whose body is worth reading; every
// other outcome is an *UnknownOutcomeError.
func (c *Client) send(req *http.Request) (*http.Response, []byte, error) {
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)

	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, transportError(req.Context(), 0, err)
	}
	defer resp.Body.Close() // unread bytes are dropped with the connection

	code := resp.StatusCode
	readable := code == http.StatusOK || (code >= 400 && code < 500 && code != http.StatusTooManyRequests)
	if !readable {
		reason := fmt.Sprintf("HTTP %d", code)
		if code >= 300 && code < 400 {
			reason = "redirect not followed"
		}
		return nil, nil, unknownFrom(resp, reason)
	}

	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return nil, nil, transportError(req.Context(), code, err)
	}
	if len(body) > MaxResponseBytes {
		return nil, nil, unknownFrom(resp, "response too large")
	}
	return resp, body, nil
}

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

// optString returns the string under key: "" when absent or null, ok false
// when the value is of another JSON type.
func optString(fields map[string]json.RawMessage, key string) (s string, ok bool) {
	raw, found := fields[key]
	if !found || string(raw) == "null" {
		return "", true
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}
