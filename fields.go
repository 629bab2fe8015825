package ermeosecrets

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/ermeo"
)

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

// Every field a request carries is checked here, in the plugin's own words,
// before the framework converts it: the framework's conversion errors quote
// the value ("unconvertible type '[]interface {}', value: '[S]'"), and Vault
// writes them into the response, the audit log and the server log. A field
// whose schema is marked Sensitive is named, never quoted.

func isSensitive(s *framework.FieldSchema) bool {
	return s.DisplayAttrs != nil && s.DisplayAttrs.Sensitive
}

// kindOf names the JSON type of v, in words.
func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case []any, []string:
		return "a list"
	case map[string]any:
		return "an object"
	case json.Number, float64, float32, int, int64, int32, uint, uint64:
		return "a number"
	default:
		return "a value of another type"
	}
}

// describe says what a non-secret value was, briefly: strings and numbers
// quoted (at most 40 characters, control characters escaped), others by kind.
func describe(v any) string {
	switch t := v.(type) {
	case string:
		return strconv.Quote(truncate(t, 40))
	case json.Number:
		return truncate(t.String(), 40)
	case float64, int, int64:
		return fmt.Sprint(t)
	default:
		return kindOf(v)
	}
}

// durationTypeError explains why v is not a duration Vault can take.
func durationTypeError(name string, v any) string {
	allowed := "use a number of seconds, or a string such as \"10m\" or \"2h\""
	if lim, ok := durationLimits[name]; ok {
		allowed = fmt.Sprintf("allowed from %s to %s, as a number of seconds or a string such as \"10m\"", humanDuration(lim.min), humanDuration(lim.max))
	}
	var f float64
	isNumber := false
	switch t := v.(type) {
	case json.Number:
		if g, err := t.Float64(); err == nil {
			f, isNumber = g, true
		}
	case float64:
		f, isNumber = t, true
	case int:
		f, isNumber = float64(t), true
	case int64:
		f, isNumber = float64(t), true
	case string:
		if g, err := strconv.ParseFloat(strings.TrimSpace(t), 64); err == nil {
			f, isNumber = g, true
		} else if strings.HasPrefix(strings.TrimSpace(t), "-") {
			return fmt.Sprintf("%s: must not be negative (got %s): %s", name, describe(v), allowed)
		}
	}
	switch {
	case isNumber && f < 0:
		return fmt.Sprintf("%s: must not be negative (got %s): %s", name, describe(v), allowed)
	case isNumber:
		return fmt.Sprintf("%s: %s is too large: %s", name, describe(v), allowed)
	default:
		return fmt.Sprintf("%s: not a duration (got %s): %s", name, describe(v), allowed)
	}
}

// humanDuration writes d in the largest whole units a person reads:
// "13 days", "2 hours 30 minutes", "90 seconds" is "1 minute 30 seconds".
func humanDuration(d time.Duration) string {
	if d <= 0 {
		return "0 seconds"
	}
	if d < time.Second {
		return d.String()
	}
	units := []struct {
		name string
		size time.Duration
	}{{"day", 24 * time.Hour}, {"hour", time.Hour}, {"minute", time.Minute}, {"second", time.Second}}
	var parts []string
	rest := d.Truncate(time.Second)
	for _, u := range units {
		n := rest / u.size
		if n == 0 {
			continue
		}
		rest -= n * u.size
		name := u.name
		if n != 1 {
			name += "s"
		}
		parts = append(parts, fmt.Sprintf("%d %s", n, name))
		if len(parts) == 2 {
			break
		}
	}
	return strings.Join(parts, " ")
}

// stringField returns a plain string field (not a credential), checked for
// length and control characters, with surrounding spaces removed, and
// whether it was set.
func stringField(d *framework.FieldData, name string) (string, bool, error) {
	raw, ok := d.GetOk(name)
	if !ok {
		return "", false, nil
	}
	s, _ := raw.(string)
	s = strings.TrimSpace(s)
	if len(s) > maxFieldLen {
		return "", true, fmt.Errorf("%s: too long (%d bytes, at most %d)", name, len(s), maxFieldLen)
	}
	if i := controlCharAt(s); i >= 0 {
		return "", true, fmt.Errorf("%s: contains a control character at byte %d (%s): give the value on one line", name, i, controlName(s[i]))
	}
	return s, true, nil
}

// credentialField returns a credential (client id or secret, username,
// password, refresh token) and whether it was set. One trailing line ending
// (CR, LF or CRLF, as "echo secret | vault write ... field=-" adds) is
// removed, and trimmed says so; any other control character, such as a NUL
// or a line break inside, is a 400 that names the field and never quotes it.
func credentialField(d *framework.FieldData, name string) (value string, set, trimmed bool, err error) {
	raw, ok := d.GetOk(name)
	if !ok {
		return "", false, false, nil
	}
	s, _ := raw.(string)
	if t := strings.TrimRight(s, "\r\n"); t != s {
		s, trimmed = t, true
	}
	if len(s) > maxFieldLen {
		return "", true, trimmed, fmt.Errorf("%s: too long (%d bytes, at most %d)", name, len(s), maxFieldLen)
	}
	if i := controlCharAt(s); i >= 0 {
		return "", true, trimmed, fmt.Errorf("%s: contains a control character at byte %d (%s); its value is not shown: give it on one line, without NUL, tab or line breaks", name, i, controlName(s[i]))
	}
	return s, true, trimmed, nil
}

// trimmedWarning is the warning of a write whose credential lost its line ending.
func trimmedWarning(fields []string) string {
	return fmt.Sprintf("trimmed a trailing newline from %s (echo adds one); the value stored has none", strings.Join(fields, ", "))
}

// controlCharAt returns the index of the first ASCII control character in s, or -1.
func controlCharAt(s string) int {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return i
		}
	}
	return -1
}

func controlName(c byte) string {
	switch c {
	case 0:
		return "NUL"
	case '\n':
		return "line feed"
	case '\r':
		return "carriage return"
	case '\t':
		return "tab"
	default:
		return fmt.Sprintf("0x%02x", c)
	}
}

// durationField returns a duration field, checked against its range.
func durationField(d *framework.FieldData, name string, lim durationLimit) (time.Duration, bool, error) {
	raw, ok, err := d.GetOkErr(name)
	if err != nil {
		return 0, true, errors.New(durationTypeError(name, d.Raw[name]))
	}
	if !ok {
		return 0, false, nil
	}
	v := time.Duration(raw.(int)) * time.Second
	if v < lim.min || v > lim.max {
		return 0, true, fmt.Errorf("%s: %s is out of range: allowed from %s to %s", name, humanDuration(v), humanDuration(lim.min), humanDuration(lim.max))
	}
	return v, true, nil
}

// boolField returns a boolean field and whether it was set.
func boolField(d *framework.FieldData, name string) (bool, bool, error) {
	raw, ok, err := d.GetOkErr(name)
	if err != nil {
		return false, true, fmt.Errorf("%s: must be true or false (got %s)", name, describe(d.Raw[name]))
	}
	if !ok {
		return false, false, nil
	}
	return raw.(bool), true, nil
}

// validateAPIURL is the engine's policy for api_url, on top of the client's
// own structural checks (ermeo.ParseAPIURL): https, or http on a loopback
// address for test servers, and no spaces.
func validateAPIURL(raw string) error {
	if i := strings.IndexAny(raw, " \t"); i >= 0 {
		return fmt.Errorf("api_url: contains a space at byte %d: a URL has none (write %%20 if the path really has one)", i)
	}
	u, err := ermeo.ParseAPIURL(raw)
	if err != nil {
		return fmt.Errorf("api_url: %w: use https://host", err)
	}
	switch {
	case u.Scheme == "https":
		return nil
	case isLoopback(u.Hostname()):
		return nil
	default:
		return fmt.Errorf("api_url: http is only allowed for loopback test servers (127.0.0.1, ::1, localhost): use https://%s", u.Host)
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

// checkFieldTypes checks that every field of data that schema declares has a
// value of the declared type, and returns a 400's message naming the first
// field that does not (in name order), or "".
func checkFieldTypes(schema map[string]*framework.FieldSchema, data map[string]any) string {
	names := make([]string, 0, len(data))
	for k := range data {
		if _, ok := schema[k]; ok {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		if msg := checkFieldType(k, schema[k], data[k]); msg != "" {
			return msg
		}
	}
	return ""
}

// checkFieldType checks one field's value against its schema.
func checkFieldType(name string, s *framework.FieldSchema, v any) string {
	if isSensitive(s) {
		// A secret is a JSON string and nothing else: no list, no object,
		// no number that a conversion could quote or round.
		if _, ok := v.(string); !ok {
			return fmt.Sprintf("%s: must be a string (got %s; its value is not shown)", name, kindOf(v))
		}
		return ""
	}
	fd := &framework.FieldData{Raw: map[string]any{name: v}, Schema: map[string]*framework.FieldSchema{name: s}}
	_, _, err := fd.GetOkErr(name)
	if err == nil {
		return ""
	}
	switch s.Type {
	case framework.TypeBool:
		return fmt.Sprintf("%s: must be true or false (got %s)", name, describe(v))
	case framework.TypeDurationSecond:
		return durationTypeError(name, v)
	case framework.TypeString, framework.TypeLowerCaseString, framework.TypeNameString:
		return fmt.Sprintf("%s: must be a string (got %s)", name, describe(v))
	case framework.TypeInt, framework.TypeInt64:
		return fmt.Sprintf("%s: must be a whole number (got %s)", name, describe(v))
	default:
		return fmt.Sprintf("%s: has the wrong type (got %s)", name, describe(v))
	}
}

// takesFields reports whether the framework converts a request's fields for op.
func takesFields(op logical.Operation) bool {
	switch op {
	case logical.CreateOperation, logical.UpdateOperation, logical.PatchOperation,
		logical.ReadOperation, logical.DeleteOperation, logical.ListOperation:
		return true
	}
	return false
}

// caCertificateField returns the ca_certificate field, checked to be PEM;
// an empty value means the system's CAs.
func caCertificateField(d *framework.FieldData) (string, bool, error) {
	raw, ok := d.GetOk("ca_certificate")
	if !ok {
		return "", false, nil
	}
	v := strings.TrimSpace(raw.(string))
	if len(v) > 256*1024 {
		return "", true, errors.New("ca_certificate: too long (at most 256 KiB)")
	}
	if v != "" {
		if _, err := certPool(v); err != nil {
			return "", true, err
		}
	}
	return v, true, nil
}
