package ermeosecrets

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
)

// Limits on what an operator can write. Anything outside gets a 400 that names
// the field and what is allowed.
const (
	maxFieldLen = 4096

	minRequestTimeout     = time.Second
	maxRequestTimeout     = 5 * time.Minute
	defaultRequestTimeout = 30 * time.Second

	// refreshTokenLifetime is how long Ermeo's refresh tokens live, counted
	// from issue. Ermeo does not send it; the plugin tracks it.
	refreshTokenLifetime = 14 * 24 * time.Hour

	minMinTTL     = time.Second
	maxMinTTL     = refreshTokenLifetime
	defaultMinTTL = 10 * time.Minute

	minRotationPeriod     = time.Minute
	maxRotationPeriod     = 13 * 24 * time.Hour
	defaultRotationPeriod = 7 * 24 * time.Hour
)

// accountNameRe is what an account name may be: it becomes part of a path.
var accountNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)

func validateAccountName(name string) error {
	if !accountNameRe.MatchString(name) {
		return fmt.Errorf("name: %q is not allowed: use 1 to 128 letters, digits, '-' or '_', starting with a letter or digit", truncate(name, 64))
	}
	return nil
}

// unknownFields lists the request's fields that the path does not declare.
func unknownFields(d *framework.FieldData) error {
	var unknown []string
	for k := range d.Raw {
		if _, ok := d.Schema[k]; !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	known := make([]string, 0, len(d.Schema))
	for k := range d.Schema {
		known = append(known, k)
	}
	sort.Strings(known)
	return fmt.Errorf("unknown field(s) %s: this path accepts %s", strings.Join(unknown, ", "), strings.Join(known, ", "))
}

// stringField returns a string field, checked for length, and whether it was set.
func stringField(d *framework.FieldData, name string) (string, bool, error) {
	raw, ok := d.GetOk(name)
	if !ok {
		return "", false, nil
	}
	s, _ := raw.(string)
	if len(s) > maxFieldLen {
		return "", true, fmt.Errorf("%s: too long (%d bytes, at most %d)", name, len(s), maxFieldLen)
	}
	return s, true, nil
}

// durationField returns a duration field, checked against [min, max].
func durationField(d *framework.FieldData, name string, min, max time.Duration) (time.Duration, bool, error) {
	raw, ok, err := d.GetOkErr(name)
	if err != nil {
		return 0, true, fmt.Errorf("%s: not a duration (use seconds, or a string such as \"10m\"): %s", name, err)
	}
	if !ok {
		return 0, false, nil
	}
	v := time.Duration(raw.(int)) * time.Second
	if v < min || v > max {
		return 0, true, fmt.Errorf("%s: %s is out of range: allowed from %s to %s", name, v, min, max)
	}
	return v, true, nil
}

// validateAPIURL checks that api_url is an https base URL, or http on a
// loopback address (test servers), without user info, query or fragment.
func validateAPIURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("api_url: not a URL: use https://host")
	}
	switch {
	case u.Scheme == "":
		return fmt.Errorf("api_url: has no scheme: use https://host")
	case u.Host == "":
		return fmt.Errorf("api_url: has no host: use https://host")
	case u.User != nil:
		return fmt.Errorf("api_url: must not contain user info: credentials go in client_id and client_secret")
	case u.RawQuery != "" || u.ForceQuery:
		return fmt.Errorf("api_url: must not contain a query string")
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return fmt.Errorf("api_url: must not contain a fragment")
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("api_url: http is only allowed for loopback test servers (127.0.0.1, ::1, localhost): use https://%s", u.Host)
	default:
		return fmt.Errorf("api_url: scheme %q is not allowed: use https", u.Scheme)
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
