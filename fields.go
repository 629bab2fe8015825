package ermeosecrets

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
)

// The framework parses the fields (a wrong type is its 400, naming the field). A 400
// of what types do not say is fieldError's: name first, what is wrong, what is allowed.
func fieldError(name, format string, args ...any) error {
	return fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...))
}

// wrongSecret is the 400 of the first Sensitive field sent as another type than a JSON string,
// or nil: the framework would take a number, and quote a list or an object in its error.
func wrongSecret(schema map[string]*framework.FieldSchema, data map[string]any) error {
	for _, k := range slices.Sorted(maps.Keys(data)) {
		if _, ok := data[k].(string); !ok && isSensitive(schema[k]) {
			kind := cmp.Or(jsonKinds[fmt.Sprintf("%T", data[k])], "a number")
			return fieldError(k, "must be a string (got %s; its value is not shown)", kind)
		}
	}
	return nil
}

// jsonKinds names JSON's kinds by the Go types encoding/json decodes them to.
var jsonKinds = map[string]string{"<nil>": "null", "bool": "a boolean", "[]interface {}": "a list", "map[string]interface {}": "an object"}

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

// stringRules are the string fields that differ from the default (at most maxFieldLen
// bytes, on one line, spaces around removed). A credential is never quoted nor empty, and
// loses one trailing CR, LF or CRLF (as echo adds) with a warning; with keepSpaces, only that.
var stringRules = map[string]struct {
	credential, keepSpaces, multiline bool
	maxLen                            int                // maxFieldLen if 0
	check                             func(string) error // the field's own policy
}{
	"client_id": {credential: true}, "username": {credential: true}, "refresh_token": {credential: true},
	"client_secret": {credential: true, keepSpaces: true}, "password": {credential: true, keepSpaces: true},
	"api_url": {check: checkAPIURL}, "ca_certificate": {multiline: true, maxLen: 256 << 10, check: checkCABundle},
}

// fieldReader's reads return a field's value, or nil if the request omits it or it fails a check.
type fieldReader struct {
	d       *framework.FieldData
	err     error    // the request's 400: unknownFields, or the first read that failed
	trimmed []string // the credentials that lost a trailing line ending
}

// str reads a string field; a credential's bytes are checked as sent, less that line ending.
func (r *fieldReader) str(name string) *string {
	v, ok := r.d.GetOk(name)
	if !ok {
		return nil
	}
	raw, _ := v.(string)
	rule := stringRules[name]
	value := strings.TrimSpace(raw)
	checked := value
	if rule.credential {
		checked = strings.TrimSuffix(strings.TrimSuffix(raw, "\n"), "\r")
	}
	if rule.keepSpaces {
		value = checked
	}
	if err := checkString(name, r.d.Schema[name].AllowedValues, checked, value); err != nil {
		r.err = cmp.Or(r.err, err)
		return nil
	}
	if rule.credential && checked != raw {
		r.trimmed = append(r.trimmed, name)
	}
	return &value
}

// checkString is the 400 of a string field by its stringRules, or nil.
func checkString(name string, allowed []any, checked, value string) error {
	rule := stringRules[name]
	maxLen := cmp.Or(rule.maxLen, maxFieldLen)
	ctl := strings.IndexFunc(checked, func(c rune) bool { return c < 0x20 || c == 0x7f })
	switch {
	case len(checked) > maxLen:
		return fieldError(name, "too long (%d bytes, at most %d KiB)", len(checked), maxLen>>10)
	case ctl >= 0 && !rule.multiline:
		what := map[byte]string{0: "NUL", '\t': "tab", '\n': "line feed", '\r': "carriage return", 0x7f: "DEL"}[checked[ctl]]
		return fieldError(name, "contains a control character at byte %d (%s): give it on one line, without NUL, tab or line breaks", ctl, cmp.Or(what, fmt.Sprintf("0x%02x", checked[ctl])))
	case len(allowed) > 0 && !slices.Contains(allowed, any(value)):
		words := strings.Fields(strings.Trim(fmt.Sprint(allowed), "[]"))
		list := words[len(words)-1] // "a, b or c"
		if len(words) > 1 {
			list = strings.Join(words[:len(words)-1], ", ") + " or " + list
		}
		return fieldError(name, "must be %s (got %q)", list, truncate(value, 40))
	case rule.credential && value == "":
		return fieldError(name, "must not be empty")
	case rule.check != nil:
		return rule.check(value)
	}
	return nil
}

// duration reads a duration field, which must be within its durationLimits.
func (r *fieldReader) duration(name string) *time.Duration {
	v, ok := r.d.GetOk(name)
	if !ok {
		return nil
	}
	d := time.Duration(v.(int)) * time.Second
	if lim := durationLimits[name]; d < lim.min || d > lim.max {
		r.err = cmp.Or(r.err, fieldError(name, "%s is out of range: allowed from %s to %s", humanDuration(d), humanDuration(lim.min), humanDuration(lim.max)))
		return nil
	}
	return &d
}

func (r *fieldReader) boolean(name string) *bool {
	if v, ok := r.d.GetOk(name); ok {
		b := v.(bool)
		return &b
	}
	return nil
}

// setIf sets *dst to *v when the request gave the field (v is not nil).
func setIf[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// trimmedWarning is the warning of a write whose credentials lost their line ending.
func trimmedWarning(fields []string) string {
	return fmt.Sprintf("trimmed a trailing newline from %s (echo adds one); the value stored has none", strings.Join(fields, ", "))
}
