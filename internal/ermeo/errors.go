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

// Message is the error without the package's prefix and status, for a
// sentence that already says who refused: "invalid_grant: Invalid refresh
// token (check ...)".
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

// UnknownOutcomeError means there is no usable answer: the request may or may
// not have been acted on, so a refresh token sent with it may be spent.
type UnknownOutcomeError struct {
	StatusCode int           // 0 when no response arrived
	Reason     string        // short: "timeout", "connection reset", "HTTP 503", "response is not JSON", ...
	RetryAfter time.Duration // from a Retry-After header, 0 if none
	Err        error         // underlying error, secret-free; may be nil
}

func (e *UnknownOutcomeError) Error() string {
	return "ermeo: outcome unknown: " + e.Message()
}

// Message is the error without the package's prefix: "timeout: ...",
// "HTTP 503", "connection reset".
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

// Message is err's text without the package's prefix, for the Client's own
// errors; any other error's text as it is.
func Message(err error) string {
	var re *RejectedError
	var ue *UnknownOutcomeError
	switch {
	case errors.As(err, &re):
		return re.Message()
	case errors.As(err, &ue):
		return ue.Message()
	default:
		return err.Error()
	}
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

// rejection classifies a readable non-200 answer (a 4xx other than 429): a
// *RejectedError if the body is an OAuth error, else an *UnknownOutcomeError.
//
// The server's text is shown to operators, so any secret the request carried,
// and any token the body itself holds, is redacted from it first: a server or
// proxy that echoes a token must not put it into an error.
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
	const max = 200
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
	if r := []rune(s); len(r) > max {
		s = string(r[:max])
	}
	return s
}

// retryAfter parses a Retry-After value: delay seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 || n > int64(maxDuration/time.Second) {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now).Round(time.Second); d > 0 {
			return d
		}
	}
	return 0
}

const maxDuration = time.Duration(1<<63 - 1)
