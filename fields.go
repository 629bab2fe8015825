package ermeosecrets

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
)

// The framework parses the fields (a wrong type is its 400, naming the field). A 400
// of what types do not say is fieldError's: name first, what is wrong, what is allowed.
func fieldError(name, format string, args ...any) error {
	return fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...))
}

// wrongSecrets is the one check before the framework's: the Sensitive fields
// sent as another JSON type than a string, and the 400 of the first. The
// framework would take a number, and its error quotes a list or an object.
func wrongSecrets(schema map[string]*framework.FieldSchema, data map[string]any) (bad []string, err error) {
	for _, k := range slices.Sorted(maps.Keys(data)) {
		if _, ok := data[k].(string); !ok && isSensitive(schema[k]) {
			kinds := map[string]string{"<nil>": "null", "bool": "a boolean", "[]interface {}": "a list", "map[string]interface {}": "an object"}
			kind := cmp.Or(kinds[fmt.Sprintf("%T", data[k])], "a number") // JSON's kinds, as encoding/json decodes them
			bad, err = append(bad, k), cmp.Or(err, fieldError(k, "must be a string (got %s; its value is not shown)", kind))
		}
	}
	return bad, err
}

func isSensitive(s *framework.FieldSchema) bool {
	return s != nil && s.DisplayAttrs != nil && s.DisplayAttrs.Sensitive
}

// unknownFields is the 400 of the fields the path does not declare, or nil.
func unknownFields(d *framework.FieldData) error {
	unknown := slices.DeleteFunc(slices.Sorted(maps.Keys(d.Raw)), func(k string) bool { return d.Schema[k] != nil })
	if len(unknown) == 0 {
		return nil
	}
	return fieldError(strings.Join(unknown, ", "), "unknown field: this path accepts %s", strings.Join(slices.Sorted(maps.Keys(d.Schema)), ", "))
}

// stringRules are the string fields that differ from the default (at most
// maxFieldLen bytes, on one line, spaces around removed). A credential is never
// quoted nor empty, and loses one trailing CR, LF or CRLF (as echo adds), with a warning.
var stringRules = map[string]struct {
	credential, keepSpaces, multiline bool
	maxLen                            int                // maxFieldLen if 0
	check                             func(string) error // the field's own policy
}{
	"client_id": {credential: true}, "username": {credential: true}, "refresh_token": {credential: true},
	"client_secret": {credential: true, keepSpaces: true}, "password": {credential: true, keepSpaces: true},
	"api_url": {check: checkAPIURL}, "ca_certificate": {multiline: true, maxLen: 256 << 10, check: checkCABundle},
}

// fieldReader reads a request's fields as the framework converted them; a read
// that passes its checks sets dst, and returns whether the request sets it.
type fieldReader struct {
	d       *framework.FieldData
	err     error    // the request's 400: unknownFields, or the first read that failed
	trimmed []string // the credentials that lost a trailing line ending
}

func (r *fieldReader) str(name string, dst *string) bool {
	v, ok := r.d.GetOk(name)
	raw, _ := v.(string)
	rule, cut := stringRules[name], strings.TrimSuffix(strings.TrimSuffix(raw, "\n"), "\r")
	s, t, maxLen := strings.TrimSpace(raw), strings.TrimSpace(raw), cmp.Or(rule.maxLen, maxFieldLen)
	if rule.credential {
		s = cut // checked as sent, less one line ending; then trimmed unless spaces count
	}
	if rule.keepSpaces {
		t = cut
	}
	i, allowed := strings.IndexFunc(s, func(c rune) bool { return c < 0x20 || c == 0x7f }), r.d.Schema[name].AllowedValues
	var err error
	switch {
	case !ok:
		return false
	case len(s) > maxLen:
		err = fieldError(name, "too long (%d bytes, at most %d KiB)", len(s), maxLen>>10)
	case i >= 0 && !rule.multiline:
		what := map[byte]string{0: "NUL", '\t': "tab", '\n': "line feed", '\r': "carriage return", 0x7f: "DEL"}[s[i]]
		err = fieldError(name, "contains a control character at byte %d (%s): give it on one line, without NUL, tab or line breaks", i, cmp.Or(what, fmt.Sprintf("0x%02x", s[i])))
	case len(allowed) > 0 && !slices.Contains(allowed, any(t)):
		w := strings.Fields(strings.Trim(fmt.Sprint(allowed), "[]"))
		if len(w) > 1 {
			w = []string{strings.Join(w[:len(w)-1], ", ") + " or " + w[len(w)-1]}
		}
		err = fieldError(name, "must be %s (got %q)", w[0], truncate(t, 40))
	case rule.credential && t == "":
		err = fieldError(name, "must not be empty")
	case rule.check != nil:
		err = rule.check(t)
	}
	if r.err = cmp.Or(r.err, err); err != nil {
		return false
	}
	if rule.credential && cut != raw {
		r.trimmed = append(r.trimmed, name)
	}
	*dst = t
	return true
}

func (r *fieldReader) duration(name string, dst *time.Duration) bool {
	v, ok := r.d.GetOk(name)
	if !ok {
		return false
	}
	d, lim := time.Duration(v.(int))*time.Second, durationLimits[name]
	if d < lim.min || d > lim.max {
		r.err = cmp.Or(r.err, fieldError(name, "%s is out of range: allowed from %s to %s", humanDuration(d), humanDuration(lim.min), humanDuration(lim.max)))
		return false
	}
	*dst = d
	return true
}

// checkAPIURL: ParseAPIURL's checks, no space, https or (test servers) http on loopback.
func checkAPIURL(raw string) error {
	u, err := ermeo.ParseAPIURL(raw)
	switch {
	case strings.Contains(raw, " "):
		return fieldError("api_url", "contains a space at byte %d: a URL has none (write %%20 if the path really has one)", strings.Index(raw, " "))
	case err != nil:
		return fieldError("api_url", "%v: use https://host", err)
	case u.Scheme != "https" && u.Hostname() != "localhost" && !net.ParseIP(u.Hostname()).IsLoopback():
		return fieldError("api_url", "http is only allowed for loopback test servers (127.0.0.1, ::1, localhost): use https://%s", u.Host)
	}
	return nil
}

// checkCABundle: ca_certificate is PEM (certPool), or empty for the system's CAs.
func checkCABundle(s string) error {
	if s == "" {
		return nil
	}
	_, err := certPool(s)
	return err
}

// trimmedWarning is the warning of a write whose credentials lost their line ending.
func trimmedWarning(fields []string) string {
	return fmt.Sprintf("trimmed a trailing newline from %s (echo adds one); the value stored has none", strings.Join(fields, ", "))
}
