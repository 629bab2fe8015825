// Package auditlog reads what the e2e tests and the bench need of a Vault
// file audit device's log: one JSON object per line, a "request" entry and a
// "response" entry per request. Values are HMACs unless the device was
// enabled with log_raw.
package auditlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// Entry is one entry of the log, the fields the tests and the bench count.
type Entry struct {
	Type      string    // "request" or "response"
	Time      time.Time // zero if the entry has none
	Error     string
	Path      string // the request's path, without the /v1/ prefix
	Operation string // "read", "update", ...
	// Policies are those of the token that made the request.
	Policies []string
	// LeaseID is the lease of the response's secret, if any.
	LeaseID string
	// AccessToken is the response data's access_token (a creds answer).
	AccessToken string
	// RenewOf is the request data's lease_id (a renewal by sys/leases/renew).
	RenewOf string
}

// Parse reads one line of the log. It reports false for a line that is not
// a JSON entry (a line being written, or blank).
func Parse(line []byte) (Entry, bool) {
	var raw struct {
		Type  string `json:"type"`
		Time  string `json:"time"`
		Error string `json:"error"`
		Auth  struct {
			Policies []string `json:"policies"`
		} `json:"auth"`
		Request struct {
			Path      string         `json:"path"`
			Operation string         `json:"operation"`
			Data      map[string]any `json:"data"`
		} `json:"request"`
		Response struct {
			Secret *struct {
				LeaseID string `json:"lease_id"`
			} `json:"secret"`
			Data map[string]any `json:"data"`
		} `json:"response"`
	}
	line = bytes.TrimSpace(line)
	if len(line) == 0 || json.Unmarshal(line, &raw) != nil || raw.Type == "" {
		return Entry{}, false
	}
	e := Entry{Type: raw.Type, Error: raw.Error, Path: raw.Request.Path, Operation: raw.Request.Operation, Policies: raw.Auth.Policies}
	e.Time, _ = time.Parse(time.RFC3339Nano, raw.Time)
	if raw.Response.Secret != nil {
		e.LeaseID = raw.Response.Secret.LeaseID
	}
	e.AccessToken, _ = raw.Response.Data["access_token"].(string)
	e.RenewOf, _ = raw.Request.Data["lease_id"].(string)
	return e, true
}

// ReadFile returns every entry of the log at file.
func ReadFile(file string) ([]Entry, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("reading the audit log: %w", err)
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if e, ok := Parse(sc.Bytes()); ok {
			out = append(out, e)
		}
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("reading the audit log: %w", err)
	}
	return out, nil
}

// Tail reads the entries a file audit device appends, as it appends them.
type Tail struct {
	f       *os.File
	r       *bufio.Reader
	partial []byte
}

// OpenTail opens the log at file (the device creates it when it is
// enabled) to read from its start.
func OpenTail(file string) (*Tail, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("opening the audit log: %w", err)
	}
	return &Tail{f: f, r: bufio.NewReaderSize(f, 1<<20)}, nil
}

// Close closes the log.
func (t *Tail) Close() error { return t.f.Close() }

// Next returns the entries appended since the last call; a line still
// being written is kept for the next.
func (t *Tail) Next() ([]Entry, error) {
	var out []Entry
	for {
		line, err := t.r.ReadBytes('\n')
		if err == io.EOF {
			t.partial = append(t.partial, line...) // a line being written
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("reading the audit log: %w", err)
		}
		if len(t.partial) > 0 {
			line = append(t.partial, line...)
			t.partial = nil
		}
		if e, ok := Parse(line); ok {
			out = append(out, e)
		}
	}
}
