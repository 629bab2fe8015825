package ermeosecrets

// docs/api.md, the API reference, is generated here from the backend's own
// schemas: each path's Pattern, Fields and Operations, each operation's
// Summary and declared Responses, the duration ranges of config.go's
// durationLimits and the account name's accountNameRe. TestAPIDocsAreUpToDate
// fails when the committed file differs from what they generate, so the
// reference cannot drift from the code; `make docs` rewrites it.
//
// What the schemas cannot say is in three small tables below, each checked
// against the backend so that they cannot drift either: apiErrors (the error
// statuses of each operation, with the reason), requiredToCreate (fields a
// create needs that the schema does not mark Required, checked by
// TestRequiredToCreateIsWhatTheBackendRequires) and apiExamples (the fields
// each example sends, whose values must pass the fields' own checks).

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

var updateDocs = flag.Bool("update", false, "rewrite docs/api.md from the backend's schemas")

const (
	apiDocsFile = "docs/api.md"
	// docsMount is the mount the examples use, as the README does.
	docsMount = "ermeo/"
	// docsRegenerate is the command that rewrites docs/api.md.
	docsRegenerate = "make docs   (or: ERMEO_UPDATE_DOCS=1 go test -run '^TestAPIDocsAreUpToDate$' .)"
)

// apiError is an error status an operation answers, and when.
type apiError struct {
	status int
	when   string
}

// Reasons shared by several operations.
var (
	errBadName = apiError{http.StatusBadRequest,
		"the account name is not allowed (see `name`), or is `rotate`"}
	errBadFields = apiError{http.StatusBadRequest,
		"a field the path does not declare, a value of the wrong type (a secret's value is never quoted), an empty value, or a duration out of its range"}
	errBadCredentialChars = apiError{http.StatusBadRequest,
		"a credential holds a control character other than one trailing newline (which is trimmed, with a warning)"}
	errUnknownField = apiError{http.StatusBadRequest,
		"a field the path does not declare"}
	errNoConfig = apiError{http.StatusBadRequest,
		"config has not been written (the message gives the command)"}
	errConfigChecks = apiError{http.StatusBadRequest,
		"`api_url` is not https (http only on a loopback address), or has user info, a query, a fragment or a space; `body_format` is not json or form; `ca_certificate` is not PEM"}
	errConfigDefaultMinTTL = apiError{http.StatusBadRequest,
		"`default_min_ttl` is at or above the access token lifetime of an account that uses it"}
	errConfigRefused = apiError{http.StatusBadRequest,
		"the credentials check (`verify_connection`): Ermeo refused the client credentials (`invalid_client`); nothing is stored"}
	errConfigNoAnswer = apiError{http.StatusBadGateway,
		"the credentials check: Ermeo did not answer, or answered with a token for a refresh token that cannot exist (check `api_url`); nothing is stored"}
	errAccountRefused = apiError{http.StatusBadRequest,
		"Ermeo refused the grant: the username and password (`invalid_grant`), the `refresh_token` given, or the client; nothing stored changes"}
	errAccountMinTTL = apiError{http.StatusBadRequest,
		"`min_ttl` (or config's `default_min_ttl`) is at or above the access token lifetime Ermeo gives the account's tokens"}
	errAccountNoAnswer = apiError{http.StatusBadGateway,
		"Ermeo did not answer the grant; for a `refresh_token`, that token may now be spent, and the account's current chain is unchanged and still serving"}
)

// apiErrors lists, per operation ("<path> <operation>"), the error statuses
// of the engine's own, with the reason. The statuses Vault gives every
// request (403, 405, 500, 503) are said once, in the reference's preamble.
// Every operation of the backend must have an entry (empty when it has no
// error of its own), and every entry must name an operation of the backend.
var apiErrors = map[string][]apiError{
	"config read": {
		{http.StatusNotFound, "config has not been written"},
	},
	"config create": {
		errBadFields,
		{http.StatusBadRequest, "`client_id` or `client_secret` is missing (both are needed when config is first written)"},
		errConfigChecks, errBadCredentialChars, errConfigDefaultMinTTL, errConfigRefused, errConfigNoAnswer,
	},
	"config update": {
		errBadFields, errConfigChecks, errBadCredentialChars, errConfigDefaultMinTTL, errConfigRefused, errConfigNoAnswer,
	},
	"config delete": {},
	"accounts/ list": {
		{http.StatusNotFound, "there are no accounts (Vault answers an empty list with 404)"},
	},
	"accounts/<name> read": {
		errBadName,
		{http.StatusNotFound, "there is no such account"},
	},
	"accounts/<name> create": {
		errBadName, errBadFields, errBadCredentialChars, errNoConfig,
		{http.StatusBadRequest, "`username` is missing; neither `password` nor `refresh_token` is given, or both are; `store_password=true` without a `password`"},
		errAccountRefused, errAccountMinTTL, errAccountNoAnswer,
	},
	"accounts/<name> update": {
		errBadName, errBadFields, errBadCredentialChars, errNoConfig,
		{http.StatusBadRequest, "`password` and `refresh_token` both given; `username` changed without the new account's `password`; `store_password=true` without a `password` when none is kept"},
		errAccountRefused, errAccountMinTTL, errAccountNoAnswer,
	},
	"accounts/<name> delete": {
		errBadName,
	},
	"accounts/<name>/rotate update": {
		errBadName, errUnknownField, errNoConfig,
		{http.StatusBadRequest, "the account is `needs_reauth` and keeps no password (the message gives the command that restarts its chain)"},
		{http.StatusNotFound, "there is no such account (the message names it)"},
		{http.StatusBadGateway, "Ermeo did not answer the refresh: the stored refresh token may be spent, and the next attempt finds out"},
		{http.StatusBadGateway, "Ermeo rejected the refresh request (e.g. `invalid_client`): the refresh token was not spent; check config"},
		{http.StatusBadGateway, "Ermeo refused the refresh token: the chain is gone, and the account becomes `needs_reauth` (with a kept password, a new chain is started instead, and a grant that gets no answer is a 502 too)"},
	},
	"creds/<name> read": {
		errBadName,
		{http.StatusBadRequest, "the account is `needs_reauth` and its last access token has expired (the message gives the command that restarts its chain)"},
		{http.StatusNotFound, "there is no such account"},
		{http.StatusBadRequest, "the token needs a refresh and config has been deleted (the message says to write config)"},
		{http.StatusBadGateway, "the token needs a refresh, the refresh failed (Ermeo did not answer or rejected it, or it waits for its backoff, or the chain was found gone), and no valid access token is left to serve; while one is, it is served with a warning"},
	},
	"metrics read": {
		errUnknownField,
		{http.StatusBadRequest, "`format` is not prometheus; `json` was dropped (the message says how to read the text)"},
	},
}

// requiredToCreate are the fields that a create needs although the schema
// does not mark them Required (an update may leave them out), with what the
// reference says of them. TestRequiredToCreateIsWhatTheBackendRequires
// checks each against the backend.
var requiredToCreate = map[string]map[string]string{
	"config": {
		"client_id":     "to create",
		"client_secret": "to create",
	},
	"accounts/<name>": {
		"username":      "to create",
		"password":      "to create, unless `refresh_token` is given",
		"refresh_token": "to create, unless `password` is given",
	},
}

// apiExample is one example of an operation: the fields it sends, in order.
// raw is for an answer that is not JSON: the vault CLI prints its body as it
// is with -format=raw.
type apiExample struct {
	fields []string
	raw    bool
}

// apiExamples are the examples of the operations that send fields; every
// other operation gets one example that sends none. Path parameters take
// their value from exampleValues too.
var apiExamples = map[string][]apiExample{
	"config create":          {{fields: []string{"client_id", "client_secret"}}},
	"config update":          {{fields: []string{"body_format"}}},
	"accounts/<name> create": {{fields: []string{"username", "password"}}},
	"accounts/<name> update": {{fields: []string{"min_ttl"}}},
	"metrics read":           {{raw: true}},
}

// exampleValues are the values the examples give fields, by name. Sensitive
// fields have none: the vault CLI reads them from standard input (field=-)
// and curl from an environment variable.
var exampleValues = map[string]string{
	"name":        "app",
	"client_id":   "5_2och3ahuji",
	"body_format": "form",
	"username":    "jane@example.com",
	"min_ttl":     "15m",
}

func TestAPIDocsAreUpToDate(t *testing.T) {
	b := newBackend(time.Now, nil)
	got, problems := generateAPIDocs(b)
	for _, p := range problems {
		t.Error(p)
	}
	if len(problems) > 0 {
		t.Fatalf("%s not generated: fix the problems above (in the schemas, or in the tables of docs_test.go)", apiDocsFile)
	}
	if *updateDocs || os.Getenv("ERMEO_UPDATE_DOCS") == "1" {
		if err := os.MkdirAll(filepath.Dir(apiDocsFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(apiDocsFile, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", apiDocsFile, len(got))
		return
	}
	want, err := os.ReadFile(apiDocsFile)
	if err != nil {
		t.Fatalf("%v\nGenerate it with:\n    %s", err, docsRegenerate)
	}
	if string(want) != got {
		t.Fatalf("%s is out of date: the backend's schemas (or the tables in docs_test.go) changed and it was not regenerated.\n%s\nRegenerate it, and commit the result with the change:\n    %s",
			apiDocsFile, diffHint(string(want), got), docsRegenerate)
	}
}

// TestRequiredToCreateIsWhatTheBackendRequires checks requiredToCreate: a
// create that sends its example's fields less one marked required there is a
// 400 that names that field, and nothing is created; a field required only
// in place of another (refresh_token for password) is named by that 400.
func TestRequiredToCreateIsWhatTheBackendRequires(t *testing.T) {
	checked := 0
	for _, path := range docKeys(requiredToCreate) {
		required := requiredToCreate[path]
		var messages []string
		for _, ex := range apiExamples[path+" create"] {
			for _, left := range ex.fields {
				if required[left] == "" {
					continue
				}
				t.Run(path+" without "+left, func(t *testing.T) {
					e := newTestEnv(t, fakeermeo.Options{})
					if path != "config" {
						e.configureUnchecked()
					}
					data := map[string]any{}
					for _, f := range ex.fields {
						if f != left {
							data[f] = exampleRequestValue(f)
						}
					}
					if path == "config" {
						data["verify_connection"] = false
					}
					reqPath := strings.ReplaceAll(path, "<name>", exampleValues["name"])
					resp, err := e.request(logical.CreateOperation, reqPath, data)
					if err != nil || !resp.IsError() || !strings.HasPrefix(resp.Error().Error(), left+":") {
						t.Fatalf("create of %s without %s: want a 400 naming %s, got %v %v", reqPath, left, left, resp, err)
					}
					messages = append(messages, resp.Error().Error())
					if r, err := e.request(logical.ReadOperation, reqPath, nil); err != nil || r != nil {
						t.Fatalf("the refused create of %s left something: %v %v", reqPath, r, err)
					}
				})
				checked++
			}
		}
		for _, f := range docKeys(required) {
			if !strings.Contains(strings.Join(messages, "\n"), f) {
				t.Errorf("requiredToCreate[%q] says %q is required %s, but no create without a required field names it (%q): send it in the create example, or drop it from the table", path, f, required[f], messages)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no field of requiredToCreate was checked: the create examples must send them")
	}
}

// exampleRequestValue is what a test sends for an example's field.
func exampleRequestValue(field string) string {
	if v, ok := exampleValues[field]; ok {
		return v
	}
	return "example-" + field
}

// docOperation is one operation of one path, as the reference shows it.
type docOperation struct {
	op     logical.Operation
	handle *framework.PathOperation
}

// docPath is one path of the backend, as the reference shows it.
type docPath struct {
	display string // the pattern as a person reads it: accounts/<name>/rotate
	params  []string
	path    *framework.Path
	ops     []docOperation
}

var (
	namedGroupRe = regexp.MustCompile(`\(\?P<(\w+)>[^)]*\)`)
	// regexMetaRe finds what is left of a pattern that displayPattern does
	// not know how to show to a person.
	regexMetaRe = regexp.MustCompile(`[()?*+\[\]{}|\\^$.]`)
)

// displayPattern turns a path's Pattern into what the reference shows, and
// the names of its parameters in order.
func displayPattern(pattern string) (string, []string, error) {
	var params []string
	for _, m := range namedGroupRe.FindAllStringSubmatch(pattern, -1) {
		params = append(params, m[1])
	}
	s := strings.TrimPrefix(strings.TrimSuffix(pattern, "$"), "^")
	s = strings.ReplaceAll(s, "/?", "/")
	s = namedGroupRe.ReplaceAllString(s, "<$1>")
	if regexMetaRe.MatchString(s) {
		return "", nil, fmt.Errorf("pattern %q: the generator does not know how to show %q to a person: teach displayPattern", pattern, s)
	}
	return s, params, nil
}

// operationRank orders operations as a reader meets them.
var operationRank = map[logical.Operation]int{
	logical.ReadOperation: 0, logical.ListOperation: 1, logical.CreateOperation: 2,
	logical.UpdateOperation: 3, logical.PatchOperation: 4, logical.DeleteOperation: 5,
}

var httpMethods = map[logical.Operation]string{
	logical.ReadOperation: "GET", logical.ListOperation: "LIST", logical.CreateOperation: "POST",
	logical.UpdateOperation: "POST", logical.PatchOperation: "PATCH", logical.DeleteOperation: "DELETE",
}

var vaultCommands = map[logical.Operation]string{
	logical.ReadOperation: "read", logical.ListOperation: "list", logical.CreateOperation: "write",
	logical.UpdateOperation: "write", logical.PatchOperation: "patch", logical.DeleteOperation: "delete",
}

// takesBody reports whether op's fields come in the request body (else only
// Query fields apply, in the query string), as Vault's OpenAPI generator has it.
func takesBody(op logical.Operation) bool {
	return op == logical.CreateOperation || op == logical.UpdateOperation || op == logical.PatchOperation
}

// collectPaths reads the backend's paths, sorted by what the reference shows.
func collectPaths(b *backend) ([]docPath, []string) {
	var paths []docPath
	var problems []string
	for _, p := range b.Paths {
		display, params, err := displayPattern(p.Pattern)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		dp := docPath{display: display, params: params, path: p}
		for op, h := range p.Operations {
			po, ok := h.(*framework.PathOperation)
			if !ok {
				problems = append(problems, fmt.Sprintf("%s %s: the handler is a %T, not a *framework.PathOperation: the generator reads its Summary and Responses", display, op, h))
				continue
			}
			if _, ok := operationRank[op]; !ok {
				problems = append(problems, fmt.Sprintf("%s %s: an operation the generator does not know: add it to operationRank, httpMethods and vaultCommands", display, op))
				continue
			}
			if po.Unpublished {
				continue
			}
			dp.ops = append(dp.ops, docOperation{op: op, handle: po})
		}
		sort.Slice(dp.ops, func(i, j int) bool { return operationRank[dp.ops[i].op] < operationRank[dp.ops[j].op] })
		paths = append(paths, dp)
	}
	sort.Slice(paths, func(i, j int) bool { return paths[i].display < paths[j].display })
	return paths, problems
}

// opFields returns the fields an operation takes: the path's parameters in
// order, then the others by name (for a read, list or delete, only those
// marked Query).
func (dp docPath) opFields(op logical.Operation) []string {
	fields := append([]string(nil), dp.params...)
	isParam := map[string]bool{}
	for _, p := range dp.params {
		isParam[p] = true
	}
	for _, name := range docKeys(dp.path.Fields) {
		if !isParam[name] && (takesBody(op) || dp.path.Fields[name].Query) {
			fields = append(fields, name)
		}
	}
	return fields
}

func (dp docPath) isParam(name string) bool {
	for _, p := range dp.params {
		if p == name {
			return true
		}
	}
	return false
}

// checkTables reports what of the tables above no longer matches the
// backend, and what the schemas lack that the reference needs.
func checkTables(paths []docPath) []string {
	var problems []string
	ops := map[string]bool{}
	byDisplay := map[string]docPath{}
	// Paths and operations share response schemas: each is reported once.
	reported := map[*framework.FieldSchema]bool{}
	for _, dp := range paths {
		byDisplay[dp.display] = dp
		responseFields := map[string]bool{}
		for _, o := range dp.ops {
			key := dp.display + " " + string(o.op)
			ops[key] = true
			if _, ok := apiErrors[key]; !ok {
				problems = append(problems, fmt.Sprintf("apiErrors has no entry for %q: list its error statuses (an empty list if it has none of its own)", key))
			}
			if o.handle.Summary == "" {
				problems = append(problems, fmt.Sprintf("%s: its PathOperation has no Summary", key))
			}
			if len(o.handle.Responses) == 0 {
				problems = append(problems, fmt.Sprintf("%s: its PathOperation declares no Responses", key))
			}
			for status, rs := range o.handle.Responses {
				for _, r := range rs {
					for name, s := range r.Fields {
						responseFields[name] = true
						if strings.TrimSpace(s.Description) == "" && !reported[s] {
							reported[s] = true
							problems = append(problems, fmt.Sprintf("%s: response field %q (status %d) has no Description", key, name, status))
						}
					}
				}
			}
		}
		for name, s := range dp.path.Fields {
			if strings.TrimSpace(s.Description) == "" {
				problems = append(problems, fmt.Sprintf("%s: field %q has no Description", dp.display, name))
			}
			if s.Type == framework.TypeDurationSecond {
				if _, ok := durationLimits[name]; !ok {
					problems = append(problems, fmt.Sprintf("%s: duration field %q has no range in config.go's durationLimits", dp.display, name))
				}
			}
			if isSensitive(s) && responseFields[name] {
				problems = append(problems, fmt.Sprintf("%s: field %q is sensitive (write-only) but a response declares it", dp.display, name))
			}
		}
	}
	for _, key := range docKeys(apiErrors) {
		if !ops[key] {
			problems = append(problems, fmt.Sprintf("apiErrors lists %q, which is not an operation of the backend", key))
		}
		for _, e := range apiErrors[key] {
			if e.status < 400 || http.StatusText(e.status) == "" || e.when == "" {
				problems = append(problems, fmt.Sprintf("apiErrors[%q]: %d %q is not an error status with a reason", key, e.status, e.when))
			}
		}
	}
	for _, path := range docKeys(requiredToCreate) {
		dp, ok := byDisplay[path]
		if !ok || !ops[path+" create"] {
			problems = append(problems, fmt.Sprintf("requiredToCreate lists %q, which is not a path with a create operation", path))
			continue
		}
		for _, f := range docKeys(requiredToCreate[path]) {
			if _, ok := dp.path.Fields[f]; !ok {
				problems = append(problems, fmt.Sprintf("requiredToCreate[%q] lists %q, which is not a field of the path", path, f))
			}
		}
	}
	for _, key := range docKeys(apiExamples) {
		if !ops[key] {
			problems = append(problems, fmt.Sprintf("apiExamples lists %q, which is not an operation of the backend", key))
			continue
		}
		display, op, _ := strings.Cut(key, " ")
		dp := byDisplay[display]
		for _, ex := range apiExamples[key] {
			problems = append(problems, checkExample(key, dp, logical.Operation(op), ex)...)
		}
	}
	for _, dp := range paths {
		for _, p := range dp.params {
			if _, ok := exampleValues[p]; !ok {
				problems = append(problems, fmt.Sprintf("%s: path parameter %q has no value in exampleValues", dp.display, p))
			}
		}
	}
	return problems
}

// checkExample checks that an example sends fields the operation takes, at
// most one secret (the vault CLI reads one from standard input), and values
// that the fields' own checks accept.
func checkExample(key string, dp docPath, op logical.Operation, ex apiExample) []string {
	var problems []string
	takes := map[string]bool{}
	for _, f := range dp.opFields(op) {
		takes[f] = true
	}
	secrets := 0
	for _, f := range ex.fields {
		s, ok := dp.path.Fields[f]
		switch {
		case !ok || !takes[f] || dp.isParam(f):
			problems = append(problems, fmt.Sprintf("apiExamples[%q] sends %q, which the operation does not take", key, f))
			continue
		case isSensitive(s):
			secrets++
			continue
		}
		v, ok := exampleValues[f]
		if !ok {
			problems = append(problems, fmt.Sprintf("apiExamples[%q] sends %q, which has no value in exampleValues", key, f))
			continue
		}
		// The framework's conversion, then the engine's own checks.
		d := &framework.FieldData{Raw: map[string]any{f: v}, Schema: dp.path.Fields}
		r := &fieldReader{d: d, err: d.Validate()}
		if r.err == nil && s.Type == framework.TypeDurationSecond {
			r.duration(f)
		} else if r.err == nil && s.Type == framework.TypeString {
			r.str(f)
		}
		if r.err != nil {
			problems = append(problems, fmt.Sprintf("exampleValues[%q]: %v", f, r.err))
		}
	}
	if secrets > 1 {
		problems = append(problems, fmt.Sprintf("apiExamples[%q] sends %d secrets: the vault CLI reads only one from standard input", key, secrets))
	}
	return problems
}

// generateAPIDocs writes the reference, and what keeps it from being right.
func generateAPIDocs(b *backend) (string, []string) {
	paths, problems := collectPaths(b)
	problems = append(problems, checkTables(paths)...)
	sort.Strings(problems)

	var w strings.Builder
	w.WriteString(apiDocsPreamble)
	w.WriteString("\n## Paths\n\n")
	for _, dp := range paths {
		fmt.Fprintf(&w, "- [`%s`](#%s): %s\n", dp.display, slug(dp.display), mdText(oneLine(dp.path.HelpSynopsis)))
	}
	// A response schema that several operations share is shown once; the
	// others link to it.
	printed := map[uintptr]string{}
	for _, dp := range paths {
		writePath(&w, dp, printed)
	}
	return w.String(), problems
}

// apiDocsPreamble opens the reference; § stands for a backquote.
var apiDocsPreamble = strings.ReplaceAll(`<!-- Code generated by TestAPIDocsAreUpToDate (docs_test.go) from the backend's schemas. DO NOT EDIT: run §make docs§. -->

# API reference

Every path of the Ermeo secrets engine, with each operation's parameters,
response fields, statuses and an example. It is generated from the backend's
own field and response schemas (and the ranges of §config.go§), and a test
fails when it is out of date; the [README](../README.md#usage) explains what
the engine does with them. The examples use the mount §ermeo/§.

Conventions, common to every path:

- **Requests.** §vault write§ is a create when the item does not exist yet
  and an update otherwise; over HTTP both are §POST§ (or §PUT§). A write
  changes only the fields it gives. Durations take a number of seconds or a
  string such as §90s§, §10m§ or §72h§; responses give them in seconds.
  Fields of a read, list or delete go in the query string.
- **Secrets.** A field marked sensitive is write-only: no response returns
  it, and no error quotes it. With the vault CLI, give it as §field=-§ and
  type it on standard input, so that it stays out of your shell history.
- **Statuses.** 200 with a body, or 204 without one; an answer with warnings
  is a 200 with a §warnings§ list even where 204 is declared. Errors have
  Vault's body §{"errors": ["..."]}§, whose message names the field and what
  is allowed. Each operation lists its own error statuses; besides those,
  Vault answers 403 when the token's policy denies the path, 405 for an
  operation the path does not have, 500 when storage fails, and 503 when
  Vault is sealed.
`, "§", "`")

func writePath(w *strings.Builder, dp docPath, printed map[uintptr]string) {
	fmt.Fprintf(w, "\n## `%s`\n\n%s\n", dp.display, mdText(oneLine(dp.path.HelpSynopsis)))
	if dp.path.ExistenceCheck != nil && hasOp(dp, logical.CreateOperation) && hasOp(dp, logical.UpdateOperation) {
		w.WriteString("\nA write is a create when the item does not exist yet, and an update otherwise.\n")
	}
	fmt.Fprintf(w, "\nFull help: `vault path-help %s%s`.\n", docsMount, examplePath(dp.display))
	for _, o := range dp.ops {
		writeOperation(w, dp, o, printed)
	}
}

func hasOp(dp docPath, op logical.Operation) bool {
	for _, o := range dp.ops {
		if o.op == op {
			return true
		}
	}
	return false
}

func writeOperation(w *strings.Builder, dp docPath, o docOperation, printed map[uintptr]string) {
	key := dp.display + " " + string(o.op)
	fmt.Fprintf(w, "\n### %s\n\n%s\n", opHeading(dp, o.op), mdText(oneLine(o.handle.Summary)))
	if d := oneLine(o.handle.Description); d != "" {
		fmt.Fprintf(w, "\n%s\n", mdText(d))
	}

	w.WriteString("\n**Parameters**\n\n")
	fields := dp.opFields(o.op)
	if len(fields) == 0 {
		w.WriteString("None.\n")
	} else {
		w.WriteString("| parameter | in | type | required | default | allowed | sensitive | description |\n")
		w.WriteString("|---|---|---|---|---|---|---|---|\n")
		for _, name := range fields {
			s := dp.path.Fields[name]
			in := "query"
			switch {
			case dp.isParam(name):
				in = "path"
			case takesBody(o.op):
				in = "body"
			}
			fmt.Fprintf(w, "| `%s` | %s | %s | %s | %s | %s | %s | %s |\n", name, in, typeName(s.Type, true),
				requiredCell(dp, o.op, name, s), defaultCell(s), allowedCell(name, s), sensitiveCell(s), mdText(oneLine(s.Description)))
		}
	}

	for _, status := range docKeys(o.handle.Responses) {
		for _, r := range o.handle.Responses[status] {
			if len(r.Fields) == 0 {
				continue
			}
			fmt.Fprintf(w, "\n**Response** (%d)\n\n", status)
			id := reflect.ValueOf(r.Fields).Pointer()
			if link, ok := printed[id]; ok {
				fmt.Fprintf(w, "The fields of %s.\n", link)
				continue
			}
			printed[id] = fmt.Sprintf("[`%s` %s](#%s)", dp.display, o.op, slug(opHeading(dp, o.op)))
			w.WriteString("| field | type | description |\n|---|---|---|\n")
			for _, name := range docKeys(r.Fields) {
				s := r.Fields[name]
				fmt.Fprintf(w, "| `%s` | %s | %s |\n", name, typeName(s.Type, false), mdText(oneLine(s.Description)))
			}
		}
	}

	w.WriteString("\n**Statuses**\n\n| status | when |\n|---|---|\n")
	type row struct {
		status int
		when   string
	}
	var rows []row
	for _, status := range docKeys(o.handle.Responses) {
		for _, r := range o.handle.Responses[status] {
			when := r.Description
			if when == "" || when == http.StatusText(status) {
				when = "success"
				if status == http.StatusNoContent {
					when = "success, no body"
				}
			}
			rows = append(rows, row{status, when})
		}
	}
	for _, e := range apiErrors[key] {
		rows = append(rows, row{e.status, e.when})
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].status < rows[j].status })
	for _, r := range rows {
		fmt.Fprintf(w, "| %d %s | %s |\n", r.status, http.StatusText(r.status), r.when)
	}

	w.WriteString("\n**Example**\n\n```sh\n")
	examples := apiExamples[key]
	if len(examples) == 0 {
		examples = []apiExample{{}}
	}
	for _, ex := range examples {
		w.WriteString(vaultExample(dp, o.op, ex) + "\n")
		w.WriteString(curlExample(dp, o.op, ex) + "\n")
	}
	w.WriteString("```\n")
}

// opHeading is an operation's heading: read: `GET /v1/ermeo/config`.
func opHeading(dp docPath, op logical.Operation) string {
	return fmt.Sprintf("%s: `%s /v1/%s%s`", op, httpMethods[op], docsMount, strings.TrimSuffix(dp.display, "/"))
}

// examplePath is the path with its parameters given their example values.
func examplePath(display string) string {
	return strings.TrimSuffix(namedParamRe.ReplaceAllStringFunc(display, func(m string) string {
		return exampleValues[strings.Trim(m, "<>")]
	}), "/")
}

var namedParamRe = regexp.MustCompile(`<\w+>`)

func vaultExample(dp docPath, op logical.Operation, ex apiExample) string {
	parts := []string{"vault", vaultCommands[op]}
	if ex.raw {
		parts = append(parts, "-format=raw")
	}
	if takesBody(op) && len(ex.fields) == 0 {
		parts = append(parts, "-f")
	}
	parts = append(parts, docsMount+examplePath(dp.display))
	var secret string
	for _, f := range ex.fields {
		if isSensitive(dp.path.Fields[f]) {
			parts = append(parts, f+"=-")
			secret = f
			continue
		}
		parts = append(parts, f+"="+shellWord(exampleValues[f]))
	}
	line := strings.Join(parts, " ")
	if secret != "" {
		line += "   # " + secret + " read from standard input"
	}
	return line
}

func curlExample(dp docPath, op logical.Operation, ex apiExample) string {
	url := "$VAULT_ADDR/v1/" + docsMount + examplePath(dp.display)
	parts := []string{`curl --header "X-Vault-Token: $VAULT_TOKEN"`}
	if m := httpMethods[op]; m != "GET" {
		parts = append(parts, "--request "+m)
	}
	if takesBody(op) && len(ex.fields) > 0 {
		var kv []string
		for _, f := range ex.fields {
			s := dp.path.Fields[f]
			var v string
			switch {
			case isSensitive(s):
				v = `\"$ERMEO_` + strings.ToUpper(f) + `\"`
			case s.Type == framework.TypeBool || s.Type == framework.TypeInt || s.Type == framework.TypeInt64:
				v = exampleValues[f]
			default:
				j, _ := json.Marshal(exampleValues[f])
				v = strings.ReplaceAll(string(j), `"`, `\"`)
			}
			kv = append(kv, `\"`+f+`\": `+v)
		}
		parts = append(parts, `--data "{`+strings.Join(kv, ", ")+`}"`)
	} else if len(ex.fields) > 0 {
		var q []string
		for _, f := range ex.fields {
			q = append(q, f+"="+exampleValues[f])
		}
		url += "?" + strings.Join(q, "&")
	}
	parts = append(parts, `"`+url+`"`)
	line := strings.Join(parts, " ")
	if len(line) <= 100 {
		return line
	}
	return strings.Join(parts, " \\\n  ")
}

var plainShellWordRe = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// shellWord quotes s for a shell if it needs it.
func shellWord(s string) string {
	if plainShellWordRe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func typeName(t framework.FieldType, request bool) string {
	switch t {
	case framework.TypeString, framework.TypeNameString:
		return "string"
	case framework.TypeLowerCaseString:
		return "string (lowercased)"
	case framework.TypeBool:
		return "boolean"
	case framework.TypeInt, framework.TypeInt64:
		return "integer"
	case framework.TypeFloat:
		return "number"
	case framework.TypeDurationSecond, framework.TypeSignedDurationSecond:
		if request {
			return "duration"
		}
		return "integer (seconds)"
	case framework.TypeMap:
		return "object"
	case framework.TypeSlice:
		return "list"
	case framework.TypeStringSlice, framework.TypeCommaStringSlice:
		return "list of strings"
	default:
		return t.String()
	}
}

func requiredCell(dp docPath, op logical.Operation, name string, s *framework.FieldSchema) string {
	switch {
	case dp.isParam(name):
		return "yes (in the path)"
	case s.Required:
		return "yes"
	case op == logical.CreateOperation && requiredToCreate[dp.display][name] != "":
		return mdText(requiredToCreate[dp.display][name])
	default:
		return "no"
	}
}

func defaultCell(s *framework.FieldSchema) string {
	if s.Default == nil {
		return "—"
	}
	if s.Type == framework.TypeDurationSecond {
		if secs, ok := s.Default.(int); ok {
			return humanDuration(time.Duration(secs) * time.Second)
		}
	}
	return "`" + fmt.Sprint(s.Default) + "`"
}

func allowedCell(name string, s *framework.FieldSchema) string {
	var parts []string
	if len(s.AllowedValues) > 0 {
		var vs []string
		for _, v := range s.AllowedValues {
			vs = append(vs, "`"+fmt.Sprint(v)+"`")
		}
		if len(vs) == 1 {
			parts = append(parts, "only "+vs[0])
		} else {
			parts = append(parts, "one of "+strings.Join(vs, ", "))
		}
	}
	if lim, ok := durationLimits[name]; ok && s.Type == framework.TypeDurationSecond {
		parts = append(parts, humanDuration(lim.min)+" to "+humanDuration(lim.max))
	}
	if s == accountNameField {
		reserved := docKeys(reservedAccountNames)
		for i, r := range reserved {
			reserved[i] = "`" + r + "`"
		}
		parts = append(parts, "matches `"+accountNameRe.String()+"`; not "+strings.Join(reserved, ", ")+" (in any case)")
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, "; ")
}

func sensitiveCell(s *framework.FieldSchema) string {
	if isSensitive(s) {
		return "yes (write-only)"
	}
	return "no"
}

// oneLine joins a text's lines and trims it.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// mdText escapes prose for a markdown table cell or paragraph: what would
// otherwise end a cell, or become an HTML tag or emphasis. Code spans (in
// backquotes) are left as they are.
func mdText(s string) string {
	var b strings.Builder
	inCode := false
	for _, r := range s {
		if r == '`' {
			inCode = !inCode
			b.WriteRune(r)
			continue
		}
		if inCode {
			if r == '|' {
				b.WriteString(`\|`)
			} else {
				b.WriteRune(r)
			}
			continue
		}
		switch r {
		case '|', '*', '\\', '[', ']':
			b.WriteRune('\\')
			b.WriteRune(r)
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// slug is GitHub's anchor for a heading: lower case, spaces to hyphens,
// punctuation other than '-' and '_' dropped.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

// diffHint shows where two texts part: the lines between their common
// beginning and their common end, at most a few of each, with line numbers.
func diffHint(committed, generated string) string {
	a, b := strings.Split(committed, "\n"), strings.Split(generated, "\n")
	start := 0
	for start < len(a) && start < len(b) && a[start] == b[start] {
		start++
	}
	ea, eb := len(a), len(b)
	for ea > start && eb > start && a[ea-1] == b[eb-1] {
		ea, eb = ea-1, eb-1
	}
	const most = 6
	var w strings.Builder
	fmt.Fprintf(&w, "First difference at line %d (- committed, + generated):\n", start+1)
	show := func(sign string, lines []string, from int) {
		for i, l := range lines {
			if i == most {
				fmt.Fprintf(&w, "  %s ... %d more lines\n", sign, len(lines)-most)
				return
			}
			fmt.Fprintf(&w, "  %s %4d: %s\n", sign, from+i+1, truncate(l, 160))
		}
	}
	show("-", a[start:ea], start)
	show("+", b[start:eb], start)
	return w.String()
}

func docKeys[K interface{ ~string | ~int }, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}
