package ermeo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
)

// RejectedError is an OAuth error answer: a 4xx (other than 429) whose body is
// a JSON object with an "error" string. Nothing was granted.
type RejectedError struct {
	StatusCode  int
	Code        string // the server's "error", e.g. "invalid_grant"
	Description string // the server's "error_description" ("" when null or absent), at most 200 characters, non-printable characters replaced
	Hint        string // advice for the operator, or ""
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("ermeo: rejected with HTTP %d: %s", e.StatusCode, e.Message())
}

// Message is the error without prefix and status, for a sentence that says
// who refused: "invalid_grant: Invalid refresh token (hint)".
func (e *RejectedError) Message() string {
	msg := e.Code
	if e.Description != "" {
		msg += ": " + e.Description
	}
	if e.Hint != "" {
		msg += " (" + e.Hint + ")"
	}
	return msg
}

// ChainGone reports whether the grant was refused as invalid_grant: for a
// refresh, the refresh token is unknown, used or expired, and only a new
// password grant starts a new chain.
func (e *RejectedError) ChainGone() bool { return e.Code == "invalid_grant" }

// UnknownOutcomeError means there is no usable answer: the request may have
// been acted on, so a refresh token sent with it may be spent.
type UnknownOutcomeError struct {
	StatusCode int           // 0 when no response arrived
	Reason     string        // short: "timeout", "connection reset", "HTTP 503", "response is not JSON", ...
	RetryAfter time.Duration // from a Retry-After header, 0 if none
	Err        error         // underlying error, secret-free; may be nil
}

func (e *UnknownOutcomeError) Error() string {
	return "ermeo: outcome unknown: " + e.Message()
}

// Message is the error without prefix: "HTTP 503, retry after 5s".
func (e *UnknownOutcomeError) Message() string {
	msg := e.Reason
	if e.StatusCode != 0 && !strings.HasPrefix(e.Reason, "HTTP ") {
		msg += fmt.Sprintf(" (HTTP %d)", e.StatusCode)
	}
	if e.RetryAfter > 0 {
		msg += fmt.Sprintf(", retry after %s", e.RetryAfter)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *UnknownOutcomeError) Unwrap() error { return e.Err }

// Message is the Message of the *RejectedError or *UnknownOutcomeError in
// err's chain, else err's text.
func Message(err error) string {
	var m interface{ Message() string }
	if errors.As(err, &m) {
		return m.Message()
	}
	return err.Error()
}

// unknownFrom builds an UnknownOutcomeError for a response.
func unknownFrom(resp *http.Response, reason string) *UnknownOutcomeError {
	return &UnknownOutcomeError{
		StatusCode: resp.StatusCode,
		Reason:     reason,
		RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now()),
	}
}

// transportError classifies a failure to get or read a response.
func transportError(ctx context.Context, status int, err error) *UnknownOutcomeError {
	e := &UnknownOutcomeError{StatusCode: status, Reason: "request failed", Err: err}
	if ctxErr := ctx.Err(); ctxErr != nil {
		e.Reason = "canceled"
		if errors.Is(ctxErr, context.DeadlineExceeded) {
			e.Reason = "timeout"
		}
		if !errors.Is(err, ctxErr) {
			e.Err = fmt.Errorf("%w: %w", ctxErr, err)
		}
		return e
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		e.Reason = "timeout"
	case errors.Is(err, syscall.ECONNRESET):
		e.Reason = "connection reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		e.Reason = "connection refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		e.Reason = "connection closed"
	}
	return e
}

// rejection classifies a readable non-200 answer: a *RejectedError if the body
// is an OAuth error, else an *UnknownOutcomeError. The secrets the request
// carried, and any token in the body, are redacted from the server's text.
func rejection(resp *http.Response, body []byte, secrets ...string) error {
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(body, &fields)
	code, ok := optString(fields, "error")
	if !ok || code == "" {
		return unknownFrom(resp, fmt.Sprintf("HTTP %d", resp.StatusCode))
	}
	desc, _ := optString(fields, "error_description") // not a string: treated as absent
	// Short strings are left alone: redacting "d" would garble the text, and
	// no secret that short is worth hiding (Ermeo's tokens have 86 characters).
	for _, k := range []string{"access_token", "refresh_token"} {
		if v, ok := optString(fields, k); ok && len(v) >= 8 {
			secrets = append(secrets, v)
		}
	}
	for _, secret := range secrets {
		if len(secret) >= 4 {
			code = strings.ReplaceAll(code, secret, "<redacted>")
			desc = strings.ReplaceAll(desc, secret, "<redacted>")
		}
	}
	return &RejectedError{
		StatusCode:  resp.StatusCode,
		Code:        clean(code),
		Description: clean(desc),
	}
}

// clean makes server text safe to show: non-printable characters become '?',
// and the result has at most 200 characters.
func clean(s string) string {
	r := []rune(s) // invalid UTF-8 becomes U+FFFD
	if len(r) > 200 {
		r = r[:200]
	}
	for i := range r {
		if !unicode.IsPrint(r[i]) {
			r[i] = '?'
		}
	}
	return string(r)
}

// retryAfter parses a Retry-After value: delay seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 && n <= int64(maxDuration/time.Second) {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now).Round(time.Second), 0)
	}
	return 0
}

const maxDuration = time.Duration(1<<63 - 1)
