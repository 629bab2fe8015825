package ermeosecrets

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/helper/errutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The operator campaign: randomized sequences of what operators (and their
// scripts) send to the mount, good and bad: writes to config and to
// accounts/<name> with valid values, invalid values and values of the wrong
// JSON type, reads, deletes, forced rotations, creds reads, clock jumps and
// periodic ticks, while upstream faults on the fake Ermeo come and go. After
// every step it checks, and counts (it never stops at the first failure):
//
//  1. chains_replaced_wrongly: a working chain (state active, with a refresh
//     token, as stored before the step) is replaced only by a request that
//     succeeded and started or refreshed a chain (a password or refresh_token
//     write, a creds read, a rotate, or a periodic tick), with a refresh token
//     the fake issued during the step; it is removed only by a delete of the
//     account, or by a refresh of that very token that Ermeo refused
//     (invalid_grant).
//  2. failed_writes_changed_storage: a request that failed leaves storage byte
//     for byte as it was, except the attempt-recording fields of the account
//     entry (last_error, rotation_intent, next_attempt_at; and state and
//     refresh_token when the fake refused the stored refresh token during the
//     step) after a 5xx. A 4xx changes nothing at all. A config write that
//     succeeds while storing client credentials the fake refuses is counted
//     here too: the design says a new secret is proven before it replaces the
//     old one, so that write should have failed and changed nothing.
//  3. secrets_leaked: no secret sent (client secrets, passwords, refresh
//     tokens, in any JSON shape) and no refresh token the fake issued appears
//     in a response, a warning, an error (including the existence check's,
//     which Vault returns and logs), or the backend's log.
//  4. refresh_rule_broken: no refresh token is sent twice (the fake's
//     RefreshTokensUsedTwice, less the presentations of spent tokens that the
//     operator handed in on purpose), and no creds read spends a grant on an
//     access token younger than half its lifetime.
//
// ERMEO_OPERATOR_SEQUENCES (default 300) and ERMEO_OPERATOR_SEED set its size
// and seed. Sequence i runs with seed+i: replay it alone with
// ERMEO_OPERATOR_SEED=<seed+i> ERMEO_OPERATOR_SEQUENCES=1, and add
// ERMEO_OPERATOR_TRACE=1 to print every step and what it stored.
//
// What counts as legitimate, where the properties leave it open:
//   - A request is judged by the status Vault would answer with: the existence
//     check's error first (a UserError is a 400), then the handler's answer
//     through Vault's own mapping (logical.RespondErrorCommon, then a coded
//     error's code). A read that finds nothing is a 404.
//   - A 4xx that follows Ermeo's refusal of the stored chain, and only records
//     it, is still counted (under its own kind): the rule is that a 4xx
//     changes nothing, and an upstream refusal is not bad input.
//   - Spent tokens the operator sends on purpose are sent to Ermeo once more
//     by the plugin; those presentations (and later ones of the same token)
//     are not counted as tokens used twice.
//   - The "young token" rule counts any grant a creds read spends (a refresh,
//     or a password grant from a kept password) while the access token has
//     more than half its lifetime left, whatever min_ttl says.

const (
	// opAccessTokenTTL is the fake's access token lifetime (Ermeo's).
	opAccessTokenTTL = 2 * time.Hour
	// opClientTimeout is how long the plugin's HTTP client waits for an
	// answer while a "timeout" fault is on (the fake then delays every token
	// request by opTimeoutDelay, and processes none).
	opClientTimeout = 50 * time.Millisecond
	opTimeoutDelay  = 2 * time.Second
	opMaxExamples   = 10
)

const (
	propReplaced = "chains_replaced_wrongly"
	propStorage  = "failed_writes_changed_storage"
	propLeaked   = "secrets_leaked"
	propRefresh  = "refresh_rule_broken"
)

var opProperties = []string{propReplaced, propStorage, propLeaked, propRefresh}

// ---- the campaign ----

type opTotals struct {
	sequences, steps, requests, rejected, failed int
	ticks, clockJumps, faultsOn, panics          int
	refreshes, passwordGrants, replaysAfterLost  int
	operatorReplays                              int
	counts                                       map[string]int
	kinds                                        map[string]map[string]int
	examples                                     map[string][]string
}

func TestOperatorCampaign(t *testing.T) {
	sequences := int(envInt("ERMEO_OPERATOR_SEQUENCES", 300))
	seed := envInt("ERMEO_OPERATOR_SEED", time.Now().UnixNano())
	fmt.Printf("operator campaign: %d sequences, seed %d (ERMEO_OPERATOR_SEED=%d to replay)\n", sequences, seed, seed)
	t.Logf("seed %d", seed)
	tot := &opTotals{counts: map[string]int{}, kinds: map[string]map[string]int{}, examples: map[string][]string{}}
	for _, p := range opProperties {
		tot.kinds[p] = map[string]int{}
	}
	ca := opTestCA(t)
	started := time.Now()
	for i := 0; i < sequences; i++ {
		runOperatorSequence(t, i, seed+int64(i), ca, tot)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "operator campaign (seed %d, %s)\n", seed, time.Since(started).Round(time.Millisecond))
	fmt.Fprintf(&b, "  sequences                          %d\n", tot.sequences)
	fmt.Fprintf(&b, "  steps                              %d\n", tot.steps)
	fmt.Fprintf(&b, "  requests made                      %d\n", tot.requests)
	fmt.Fprintf(&b, "    rejected (4xx)                   %d\n", tot.rejected)
	fmt.Fprintf(&b, "    failed (5xx)                     %d\n", tot.failed)
	fmt.Fprintf(&b, "  clock jumps / periodic ticks       %d / %d\n", tot.clockJumps, tot.ticks)
	fmt.Fprintf(&b, "  upstream faults switched on        %d\n", tot.faultsOn)
	fmt.Fprintf(&b, "  refreshes / password grants (fake) %d / %d\n", tot.refreshes, tot.passwordGrants)
	fmt.Fprintf(&b, "  replays after a lost answer        %d   (expected: the fake dropped the answer)\n", tot.replaysAfterLost)
	fmt.Fprintf(&b, "  spent tokens the operator sent     %d presentations (not counted as used twice)\n", tot.operatorReplays)
	fmt.Fprintf(&b, "  plugin panics                      %d\n", tot.panics)
	for _, p := range opProperties {
		fmt.Fprintf(&b, "  %-34s %d\n", p, tot.counts[p])
		kinds := make([]string, 0, len(tot.kinds[p]))
		for k := range tot.kinds[p] {
			kinds = append(kinds, k)
		}
		sort.Slice(kinds, func(i, j int) bool {
			if tot.kinds[p][kinds[i]] != tot.kinds[p][kinds[j]] {
				return tot.kinds[p][kinds[i]] > tot.kinds[p][kinds[j]]
			}
			return kinds[i] < kinds[j]
		})
		for _, k := range kinds {
			fmt.Fprintf(&b, "      %6d  %s\n", tot.kinds[p][k], k)
		}
	}
	for _, p := range opProperties {
		if len(tot.examples[p]) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s: %d, the first %d:\n", p, tot.counts[p], len(tot.examples[p]))
		for _, ex := range tot.examples[p] {
			fmt.Fprintf(&b, "  - %s\n", ex)
		}
	}
	fmt.Print(b.String())

	failed := false
	for _, p := range opProperties {
		if tot.counts[p] != 0 {
			failed = true
		}
	}
	if failed {
		t.Errorf("operator campaign (seed %d): %s %d, %s %d, %s %d, %s %d",
			seed, propReplaced, tot.counts[propReplaced], propStorage, tot.counts[propStorage],
			propLeaked, tot.counts[propLeaked], propRefresh, tot.counts[propRefresh])
	}
	if tot.panics != 0 {
		t.Errorf("the plugin panicked %d times", tot.panics)
	}
}

// opHarness is one sequence: a fresh testEnv whose backend logs into a
// buffer, whose fake Ermeo has this sequence's own client secret and
// passwords, and whose token endpoint is recorded.
type opHarness struct {
	t    *testing.T
	e    *testEnv
	srv  *httptest.Server
	logs *opLogBuffer
	rec  *opRecorder
	ca   string

	// timeouts makes the plugin's connections give up after opClientTimeout.
	timeouts *atomic.Bool
	conns    *opConnSet

	seq, step    int
	rng          *mrand.Rand
	clientSecret string
	users        map[string]string // username -> current password at the fake
	fault        *opFault

	secrets []opSecret
	known   map[string]bool // the needles of secrets
	tainted map[string]bool // spent refresh tokens the operator handed in
}

// opSecret is a secret value sent, and the strings that betray it.
type opSecret struct {
	what    string
	needles []string
}

func newOperatorHarness(t *testing.T, seq int, seed int64, ca string) *opHarness {
	rng := mrand.New(mrand.NewSource(seed))
	h := &opHarness{t: t, seq: seq, rng: rng, ca: ca, logs: &opLogBuffer{}, known: map[string]bool{}, tainted: map[string]bool{}}
	h.clientSecret = h.newSecret("client")
	h.users = map[string]string{
		fakeermeo.DefaultUsername: h.newSecret("password"),
		"joe@example.com":         h.newSecret("password"),
	}
	clock := newTestClock()
	fake := fakeermeo.New(fakeermeo.Options{
		ClientSecret:   h.clientSecret,
		Users:          h.users,
		AccessTokenTTL: opAccessTokenTTL,
		Now:            clock.Now,
	})
	h.rec = &opRecorder{next: fake}
	h.srv = httptest.NewServer(h.rec)

	h.timeouts = &atomic.Bool{}
	h.conns = &opConnSet{conns: map[*opConn]bool{}}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return h.conns.add(&opConn{Conn: c, timeouts: h.timeouts, set: h.conns}), nil
		},
		MaxIdleConnsPerHost: 4,
	}
	client := &http.Client{Transport: transport}

	system := &logical.StaticSystemView{DefaultLeaseTTLVal: 24 * time.Hour, MaxLeaseTTLVal: 32 * 24 * time.Hour}
	conf := logical.TestBackendConfig()
	conf.System = system
	conf.Logger = hclog.New(&hclog.LoggerOptions{Name: "ermeo", Level: hclog.Trace, Output: h.logs})
	storage := &logical.InmemStorage{}
	conf.StorageView = storage
	b := newBackend(clock.Now, client)
	b.store.persistFor = 0
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	// As Vault does when it mounts the engine on the active node.
	if err := b.Initialize(context.Background(), &logical.InitializationRequest{Storage: storage}); err != nil {
		t.Fatal(err)
	}
	h.e = &testEnv{t: t, b: b, storage: storage, view: storage, system: system, clock: clock, fake: fake, url: h.srv.URL, http: client}
	return h
}

func (h *opHarness) close() {
	h.e.b.Cleanup(context.Background())
	h.e.fake.ClearFaults()
	h.timeouts.Store(false)
	h.conns.closeAll()
	h.srv.Close()
}

// newSecret returns a new secret value, unique and recognisable, and
// remembers it.
func (h *opHarness) newSecret(kind string) string {
	s := fmt.Sprintf("SECRET-%s-%d-%d-%016x", kind, h.seq, h.step, h.rng.Uint64())
	h.remember(kind, s)
	return s
}

// remember records a secret value (of any JSON shape) to search for.
func (h *opHarness) remember(what string, v any) {
	var needles []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			if len(v) >= 8 {
				needles = append(needles, v)
			}
			// The random core, so that a truncated or escaped echo is found too.
			if i := strings.LastIndex(v, "-"); strings.HasPrefix(v, "SECRET-") && i > 0 && len(v)-i > 12 {
				needles = append(needles, strings.TrimRight(v[i+1:], "\n"))
			}
		case json.Number:
			if len(v) >= 12 {
				needles = append(needles, string(v))
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		case map[string]any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(v)
	var fresh []string
	for _, n := range needles {
		if !h.known[n] {
			h.known[n] = true
			fresh = append(fresh, n)
		}
	}
	if len(fresh) > 0 {
		h.secrets = append(h.secrets, opSecret{what: what, needles: fresh})
	}
}

// secretShape returns s in a random wrong JSON shape, or as it is.
func (h *opHarness) secretShape(s string) any {
	switch h.rng.Intn(12) {
	case 0:
		return []any{s}
	case 1:
		return map[string]any{"a": s}
	case 2:
		n := json.Number(fmt.Sprintf("%d", 1_000_000_000_000_000+h.rng.Int63n(8_000_000_000_000_000)))
		h.remember("number", n)
		return n
	default:
		return s
	}
}

// freshRefreshToken starts a chain at the fake directly (as an operator who
// holds one from elsewhere), with no fault in the way.
func (h *opHarness) freshRefreshToken() string {
	h.e.fake.ClearFaults()
	defer h.applyFault()
	form := url.Values{
		"grant_type": {"password"}, "client_id": {fakeermeo.DefaultClientID}, "client_secret": {h.clientSecret},
		"username": {fakeermeo.DefaultUsername}, "password": {h.users[fakeermeo.DefaultUsername]},
	}
	req := httptest.NewRequest(http.MethodPost, fakeermeo.TokenPath, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	h.e.fake.ServeHTTP(w, req)
	var tok struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &tok); err != nil || tok.RefreshToken == "" {
		h.t.Fatalf("the fake did not grant a chain: %d %s", w.Code, w.Body.String())
	}
	return tok.RefreshToken
}

// spentRefreshToken returns a refresh token the fake issued and no longer
// accepts, or "" if there is none.
func (h *opHarness) spentRefreshToken() string {
	var spent []string
	for _, tok := range h.e.fake.IssuedRefreshTokens() {
		if !h.e.fake.RefreshTokenLive(tok) {
			spent = append(spent, tok)
		}
	}
	if len(spent) == 0 {
		return ""
	}
	return spent[h.rng.Intn(len(spent))]
}

// ---- upstream faults ----

type opFault struct {
	name    string
	fault   fakeermeo.Fault
	timeout bool
}

func (h *opHarness) randomFault() *opFault {
	grant := []string{"", "refresh_token", "password"}[h.rng.Intn(3)]
	f := &opFault{fault: fakeermeo.Fault{Grant: grant}}
	switch h.rng.Intn(7) {
	case 0:
		f.fault.Kind, f.fault.Status = fakeermeo.FaultStatus, []int{500, 502, 503, 504}[h.rng.Intn(4)]
		f.name = fmt.Sprintf("HTTP %d", f.fault.Status)
	case 1:
		f.fault.Kind, f.fault.RetryAfter = fakeermeo.FaultTooManyRequests, []string{"", "1", "120", "3600", "soon"}[h.rng.Intn(5)]
		f.name = "429 Retry-After " + f.fault.RetryAfter
	case 2:
		f.fault.Kind, f.name = fakeermeo.FaultReset, "reset"
	case 3:
		f.fault.Kind, f.name = fakeermeo.FaultLostAfterCommit, "answer lost after commit"
	case 4:
		// Every token request is held past the client's patience and never
		// processed, so that no answer is lost without the fake knowing.
		f.fault.Kind, f.fault.Delay, f.fault.Grant, f.timeout = fakeermeo.FaultDelay, opTimeoutDelay, "", true
		f.name = "timeout"
		return f
	case 5:
		f.fault.Kind, f.fault.Delay = fakeermeo.FaultDelay, time.Duration(5+h.rng.Intn(30))*time.Millisecond
		f.name = "delay " + f.fault.Delay.String()
	case 6:
		f.fault.Kind, f.name = fakeermeo.FaultNonJSON, "non-JSON 200"
	}
	if grant != "" {
		f.name += " on " + grant + " grants"
	}
	return f
}

// applyFault puts the current fault (if any) on the fake.
func (h *opHarness) applyFault() {
	h.e.fake.ClearFaults()
	if h.fault != nil {
		h.e.fake.InjectFault(h.fault.fault)
	}
}

// toggleFault switches upstream faults on and off between steps.
func (h *opHarness) toggleFault(tot *opTotals) {
	switch {
	case h.fault != nil && h.rng.Intn(3) == 0:
		h.fault = nil
	case h.fault == nil && h.rng.Intn(5) == 0:
		h.fault = h.randomFault()
		tot.faultsOn++
	default:
		return
	}
	h.applyFault()
	timeouts := h.fault != nil && h.fault.timeout
	if h.timeouts.Load() != timeouts {
		h.timeouts.Store(timeouts)
		// Connections idle since before the switch wait without a deadline.
		h.conns.closeAll()
	}
}

// ---- steps ----

type opStep struct {
	kind string // config-write, config-read, config-delete, account-write, account-read, account-delete, list, rotate, creds, clock, tick
	op   logical.Operation
	path string
	data map[string]any
	name string        // the account, for account paths
	jump time.Duration // for clock
}

// label is the step's kind, and for an account write what it carried.
func (s opStep) label() string {
	if s.kind != "account-write" {
		return s.kind
	}
	_, pw := s.data["password"]
	_, rt := s.data["refresh_token"]
	switch {
	case pw && rt:
		return "account-write (password and refresh_token)"
	case pw:
		return "account-write (password)"
	case rt:
		return "account-write (refresh_token)"
	default:
		return "account-write (settings)"
	}
}

func (s opStep) describe() string {
	switch s.kind {
	case "clock":
		return "clock +" + s.jump.String()
	case "tick":
		return "periodic tick"
	}
	op := map[logical.Operation]string{logical.ReadOperation: "read", logical.UpdateOperation: "write", logical.DeleteOperation: "delete", logical.ListOperation: "list"}[s.op]
	d := fmt.Sprintf("%s %q", op, s.path)
	if len(s.data) > 0 {
		j, _ := json.Marshal(opShorten(s.data))
		d += " " + string(j)
	}
	return d
}

// opShorten replaces long strings (certificates) with their start and length.
func opShorten(v any) any {
	switch v := v.(type) {
	case string:
		if len(v) > 120 {
			return fmt.Sprintf("%s...(%d bytes)", v[:40], len(v))
		}
		return v
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = opShorten(x)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = opShorten(x)
		}
		return out
	}
	return v
}

func (h *opHarness) pickName() string {
	switch n := h.rng.Intn(100); {
	case n < 45:
		return "app"
	case n < 78:
		return "ops"
	case n < 92:
		return "rotate"
	default:
		return []string{"a b", "../x", "x.y", "-lead", "ÄPP", strings.Repeat("n", 129), "app;rm"}[h.rng.Intn(7)]
	}
}

func (h *opHarness) nextStep() opStep {
	n := h.rng.Intn(100)
	// An operator without a config, or without accounts, sets them up.
	if e, _ := h.e.storage.Get(context.Background(), configKey); e == nil && h.rng.Intn(100) < 40 {
		n = 0
	} else if keys, _ := h.e.storage.List(context.Background(), accountPrefix); len(keys) == 0 && h.rng.Intn(100) < 30 {
		n = 20
	}
	switch {
	case n < 15:
		return opStep{kind: "config-write", op: logical.UpdateOperation, path: "config", data: h.configWrite()}
	case n < 18:
		return opStep{kind: "config-read", op: logical.ReadOperation, path: "config"}
	case n < 19:
		return opStep{kind: "config-delete", op: logical.DeleteOperation, path: "config"}
	case n < 48:
		name := h.pickName()
		return opStep{kind: "account-write", op: logical.UpdateOperation, path: "accounts/" + name, name: name, data: h.accountWrite(name)}
	case n < 52:
		name := h.pickName()
		return opStep{kind: "account-read", op: logical.ReadOperation, path: "accounts/" + name, name: name}
	case n < 55:
		name := h.pickName()
		return opStep{kind: "account-delete", op: logical.DeleteOperation, path: "accounts/" + name, name: name}
	case n < 56:
		return opStep{kind: "list", op: logical.ListOperation, path: "accounts/"}
	case n < 65:
		name := h.pickName()
		s := opStep{kind: "rotate", op: logical.UpdateOperation, path: "accounts/" + name + "/rotate", name: name}
		if h.rng.Intn(15) == 0 {
			s.data = map[string]any{"force": true}
		}
		return s
	case n < 83:
		name := h.pickName()
		return opStep{kind: "creds", op: logical.ReadOperation, path: "creds/" + name, name: name}
	case n < 93:
		jumps := []time.Duration{time.Minute, 5 * time.Minute, 20 * time.Minute, 31 * time.Minute, 59 * time.Minute,
			time.Hour, 90 * time.Minute, 110 * time.Minute, 2 * time.Hour, 5 * time.Hour, 26 * time.Hour}
		return opStep{kind: "clock", jump: jumps[h.rng.Intn(len(jumps))]}
	default:
		return opStep{kind: "tick"}
	}
}

func (h *opHarness) configWrite() map[string]any {
	data := map[string]any{}
	valid := 45
	if e, _ := h.e.storage.Get(context.Background(), configKey); e == nil {
		valid = 80 // an operator setting up the mount
	}
	if h.rng.Intn(100) < valid {
		data["api_url"], data["client_id"], data["client_secret"] = h.e.url, fakeermeo.DefaultClientID, h.clientSecret
		h.remember("client", h.clientSecret)
	}
	fields := []string{"api_url", "client_id", "client_secret", "body_format", "ca_certificate", "verify_accounts",
		"request_timeout", "default_min_ttl", "default_rotation_period"}
	n := h.rng.Intn(4)
	if len(data) == 0 {
		n = 1 + h.rng.Intn(4)
	}
	for i := 0; i < n; i++ {
		f := fields[h.rng.Intn(len(fields))]
		data[f] = h.configValue(f)
	}
	if h.rng.Intn(20) == 0 {
		switch h.rng.Intn(3) {
		case 0:
			data["client_secert"] = h.newSecret("typo") // an operator's typo, with a real secret in it
		case 1:
			data["apiurl"] = h.e.url
		case 2:
			data["skip_account_check"] = true
		}
	}
	return data
}

// wrongType is a value of another JSON type than the field's.
func (h *opHarness) wrongType(like any) any {
	switch h.rng.Intn(4) {
	case 0:
		return []any{like}
	case 1:
		return map[string]any{"value": like}
	case 2:
		return json.Number("42")
	default:
		return true
	}
}

func (h *opHarness) oneOf(vs ...any) any { return vs[h.rng.Intn(len(vs))] }

func (h *opHarness) configValue(f string) any {
	bad := h.rng.Intn(100) < 35
	switch f {
	case "api_url":
		if !bad {
			return h.oneOf(h.e.url, h.e.url+"/", " "+h.e.url+"\n", h.e.url, h.e.url)
		}
		return h.oneOf("http://127.0.0.1:1", "ftp://127.0.0.1/", "http://example.com", "https://user:pw@api.ermeo.com",
			"https://api.ermeo.com/?x=1", "https://api.ermeo.com/#top", "not a url", "", "https://",
			h.e.url+"\x00/x", h.e.url+"\n/x", h.wrongType(h.e.url))
	case "client_id":
		if !bad {
			return h.oneOf(fakeermeo.DefaultClientID, " "+fakeermeo.DefaultClientID+"\n")
		}
		return h.oneOf("5", "no-underscore", "", "   ", fakeermeo.DefaultClientID+"\x00", "5_abc\ndef", h.wrongType(fakeermeo.DefaultClientID))
	case "client_secret":
		if !bad {
			h.remember("client", h.clientSecret)
			return h.clientSecret
		}
		var s string
		switch h.rng.Intn(6) {
		case 0:
			s = h.clientSecret + "\n" // the valid secret, pasted with its newline
		case 1:
			s = " " + h.clientSecret
		case 2:
			s = h.newSecret("client-wrong")
		case 3:
			s = h.newSecret("client-nul") + "\x00tail"
		case 4:
			s = "line1\n" + h.newSecret("client-nl")
		case 5:
			if h.rng.Intn(3) == 0 {
				return ""
			}
			s = h.newSecret("client-shape")
			switch h.rng.Intn(3) {
			case 0:
				return []any{s}
			case 1:
				return map[string]any{"a": s}
			default:
				return h.secretShape(s)
			}
		}
		h.remember("client", s)
		return s
	case "body_format":
		if !bad {
			return h.oneOf("json", "form")
		}
		return h.oneOf("JSON", "xml", "", "form\n", h.wrongType("json"))
	case "ca_certificate":
		if !bad {
			return h.oneOf(h.ca, "", "\n"+h.ca+"\n")
		}
		return h.oneOf("not a pem", "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n", h.ca+"\x00",
			strings.Repeat("A", 300*1024), h.wrongType(h.ca))
	case "verify_accounts":
		if !bad {
			return h.oneOf(true, false, "true", "false", json.Number("0"))
		}
		return h.oneOf("maybe", "yes please", json.Number("2"), []any{true}, map[string]any{"v": true})
	case "request_timeout":
		if !bad {
			return h.oneOf(json.Number("1"), "2s", json.Number("30"), "5m", "300")
		}
		return h.oneOf(json.Number("0"), json.Number("301"), json.Number("-300"), "maybe", json.Number("1e30"), 1e30,
			"999999999999h", "1h", []any{json.Number("30")})
	case "default_min_ttl":
		if !bad {
			return h.oneOf("10m", json.Number("60"), "1h", "1h30m", "3h", "30m")
		}
		return h.oneOf(json.Number("0"), json.Number("-300"), "maybe", json.Number("1e30"), 1e30, json.Number("1209601"), "", h.wrongType("10m"))
	case "default_rotation_period":
		if !bad {
			return h.oneOf("24h", json.Number("60"), "1m", "312h", "7d")
		}
		return h.oneOf(json.Number("30"), "313h", json.Number("-300"), "maybe", json.Number("1e30"), 1e30, "", h.wrongType("24h"))
	}
	panic("unknown config field " + f)
}

// storedAccount returns the account as storage holds it, or nil.
func (h *opHarness) storedAccount(name string) *opAccount {
	e, err := h.e.storage.Get(context.Background(), accountPrefix+name)
	if err != nil || e == nil {
		return nil
	}
	return decodeOpAccount(e.Value)
}

// accountWrite is a write to accounts/<name>: a clean request about half the
// time (a password grant, an adoption of a live, garbage or spent refresh
// token, or settings), otherwise one with one or two fields made bad.
func (h *opHarness) accountWrite(name string) map[string]any {
	data := map[string]any{}
	stored := h.storedAccount(name)

	// The user whose password a valid write gives.
	user := fakeermeo.DefaultUsername
	if stored != nil {
		if _, ok := h.users[stored.Username]; ok {
			user = stored.Username
		}
	}
	if stored == nil || h.rng.Intn(4) == 0 {
		if h.rng.Intn(5) == 0 {
			user = "joe@example.com"
		}
		data["username"] = user
	}

	// An operator who changed the user's password at Ermeo.
	if h.rng.Intn(30) == 0 {
		h.users[user] = h.newSecret("password")
		h.e.fake.SetUserPassword(user, h.users[user])
	}

	switch n := h.rng.Intn(100); {
	case n < 40: // a password grant
		data["password"] = h.users[user]
		h.remember("password", h.users[user])
		if h.rng.Intn(5) < 2 {
			data["store_password"] = h.oneOf(true, false, true, "true")
		}
	case n < 56: // adopt a live chain
		tok := h.freshRefreshToken()
		h.remember("refresh_token", tok)
		data["refresh_token"] = h.oneOf(tok, tok, tok, tok+"\n", " "+tok)
	case n < 64: // adopt garbage
		data["refresh_token"] = h.newSecret("refresh-garbage")
	case n < 72: // adopt a spent token
		tok := h.spentRefreshToken()
		if tok == "" {
			tok = h.newSecret("refresh-garbage")
		} else {
			h.tainted[tok] = true
		}
		h.remember("refresh_token", tok)
		data["refresh_token"] = tok
	default: // settings only
	}
	if _, ok := data["password"]; !ok || h.rng.Intn(4) == 0 {
		if h.rng.Intn(10) < 6 {
			data["min_ttl"] = h.oneOf("10m", json.Number("60"), "5m", "30m", "1h", "1h30m", "3h", json.Number("1"))
		}
		if h.rng.Intn(10) < 4 {
			data["rotation_period"] = h.oneOf("24h", "1m", json.Number("3600"), "312h", "7d")
		}
		if h.rng.Intn(10) < 3 {
			data["lease"] = h.oneOf(true, false, "false", json.Number("0"))
		}
	}
	if h.rng.Intn(100) < 55 {
		return data
	}
	for n := 1 + h.rng.Intn(2); n > 0; n-- {
		h.spoilAccountField(data, user)
	}
	return data
}

// spoilAccountField gives one field of an account write a bad value.
func (h *opHarness) spoilAccountField(data map[string]any, user string) {
	switch h.rng.Intn(9) {
	case 0:
		data["username"] = h.oneOf("nobody@example.com", "", " "+user+"\n", "jane\x00@example.com", "jane@example.com\nX",
			json.Number("42"), []any{user}, map[string]any{"u": user}, true)
	case 1:
		switch h.rng.Intn(7) {
		case 0:
			data["password"] = h.newSecret("password-wrong")
		case 1:
			data["password"] = h.users[user] + "\n"
			h.remember("password", data["password"])
		case 2:
			data["password"] = h.newSecret("password-nul") + "\x00\n"
		case 3:
			data["password"] = ""
		case 4:
			data["password"] = []any{h.newSecret("password-shape")}
		case 5:
			data["password"] = map[string]any{"a": h.newSecret("password-shape")}
		default:
			data["password"] = h.secretShape(h.newSecret("password-shape"))
		}
	case 2:
		data["store_password"] = h.oneOf("maybe", json.Number("2"), []any{true}, "")
	case 3:
		switch h.rng.Intn(5) {
		case 0:
			data["refresh_token"] = []any{h.newSecret("refresh-shape")}
		case 1:
			data["refresh_token"] = map[string]any{"a": h.newSecret("refresh-shape")}
		case 2:
			data["refresh_token"] = h.secretShape(h.newSecret("refresh-shape"))
		case 3:
			data["refresh_token"] = h.oneOf("", "  \n")
		default:
			// Both a password and a token.
			data["password"] = h.users[user]
			data["refresh_token"] = h.newSecret("refresh-both")
			h.remember("password", h.users[user])
		}
	case 4:
		data["min_ttl"] = h.badDuration()
	case 5:
		data["rotation_period"] = h.badDuration()
	case 6:
		data["lease"] = h.oneOf("maybe", json.Number("7"), []any{false}, map[string]any{"l": false}, "")
	case 7:
		data[h.oneOf("passwd", "refreshtoken", "ttl").(string)] = h.newSecret("typo")
	default:
		delete(data, "username")
	}
}

func (h *opHarness) badDuration() any {
	return h.oneOf(json.Number("0"), json.Number("-300"), "-5m", "maybe", json.Number("1e30"), 1e30, json.Number("99999999999999999999"),
		"1209601s", "313h", "", []any{"10m"}, map[string]any{"d": "10m"}, true)
}

// ---- requests, as Vault makes them ----

type opResult struct {
	request bool
	status  int // 0: success
	resp    *logical.Response
	err     error
	texts   []string // what the caller, or Vault's log, gets to see
}

func (r opResult) describe() string {
	switch {
	case !r.request && r.err != nil:
		return "error: " + truncate(r.err.Error(), 300)
	case !r.request:
		return "done"
	case r.status == 0:
		s := "ok"
		if r.resp != nil && len(r.resp.Warnings) > 0 {
			s += fmt.Sprintf(" with warnings %q", truncate(strings.Join(r.resp.Warnings, " | "), 300))
		}
		return s
	default:
		msg := ""
		if r.err != nil {
			msg = r.err.Error()
		} else if r.resp != nil && r.resp.IsError() {
			msg = r.resp.Error().Error()
		}
		return fmt.Sprintf("%d %s", r.status, truncate(msg, 300))
	}
}

func (h *opHarness) run(s opStep, tot *opTotals) (res opResult) {
	ctx := context.Background()
	switch s.kind {
	case "clock":
		h.e.clock.Advance(s.jump)
		return opResult{}
	case "tick":
		// Vault's periodic function, as Vault's rollback manager calls it; it
		// logs the error.
		_, err := h.e.b.HandleRequest(ctx, &logical.Request{Operation: logical.RollbackOperation, Path: "", Storage: h.e.view, MountPoint: testMount})
		res = opResult{err: err}
		if err != nil {
			res.texts = append(res.texts, err.Error())
		}
		return res
	}
	res.request = true
	defer func() {
		if p := recover(); p != nil {
			tot.panics++
			res.status, res.err = http.StatusInternalServerError, fmt.Errorf("panic: %v", p)
			h.t.Errorf("seq %d step %d: %s: the plugin panicked: %v", h.seq, h.step, s.describe(), p)
		}
	}()
	// A copy, as the HTTP layer would make: the plugin must not keep ours.
	var data map[string]any
	if s.data != nil {
		raw, _ := json.Marshal(s.data)
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		_ = dec.Decode(&data)
	}
	req := &logical.Request{Operation: s.op, Path: s.path, Data: data, Storage: h.e.view, MountPoint: testMount}
	if s.op == logical.UpdateOperation {
		// Vault turns a write into a create or an update with the path's
		// existence check; an error of that check is the answer (and Vault
		// logs it), and the handler is not called.
		found, exists, err := h.e.b.HandleExistenceCheck(ctx, req)
		switch {
		case err == logical.ErrUnsupportedPath:
		case err != nil:
			// Vault answers a UserError of the check with a 400, anything
			// else with a 500.
			res.err = err
			res.texts = append(res.texts, err.Error())
			res.status = http.StatusInternalServerError
			if errors.As(err, new(errutil.UserError)) {
				res.status = http.StatusBadRequest
			}
			return res
		case found && !exists:
			req.Operation = logical.CreateOperation
		}
	}
	resp, err := h.e.b.HandleRequest(ctx, req)
	res.resp, res.err = resp, err
	// The status Vault's HTTP layer answers with.
	res.status, _ = logical.RespondErrorCommon(req, resp, err)
	if err != nil {
		logical.AdjustErrorStatusCode(&res.status, err)
	}
	if err != nil {
		res.texts = append(res.texts, err.Error())
	}
	if resp != nil {
		if j, jerr := json.Marshal(resp); jerr == nil {
			res.texts = append(res.texts, string(j))
		}
		res.texts = append(res.texts, resp.Warnings...)
		if resp.IsError() {
			res.texts = append(res.texts, resp.Error().Error())
		}
		for _, v := range resp.Data {
			if s, ok := v.(string); ok {
				res.texts = append(res.texts, s)
			}
		}
	}
	return res
}

// ---- one sequence ----

func runOperatorSequence(t *testing.T, seq int, seed int64, ca string, tot *opTotals) {
	h := newOperatorHarness(t, seq, seed, ca)
	defer h.close()
	// ERMEO_OPERATOR_TRACE=1 prints every step and what it stored (for
	// replaying one sequence).
	trace := os.Getenv("ERMEO_OPERATOR_TRACE") != ""
	tot.sequences++
	ctx := context.Background()
	logOffset := 0
	steps := 20 + h.rng.Intn(41)
	for step := 0; step < steps; step++ {
		h.step = step
		tot.steps++
		h.toggleFault(tot)
		s := h.nextStep()

		before := h.snapshot(ctx)
		mark := h.rec.mark()
		countersBefore := h.e.fake.Counters()
		issuedBefore := len(h.e.fake.IssuedRefreshTokens())
		now := h.e.clock.Now()

		res := h.run(s, tot)

		after := h.snapshot(ctx)
		calls := h.rec.since(mark)
		countersAfter := h.e.fake.Counters()
		issued := map[string]bool{}
		for _, tok := range h.e.fake.IssuedRefreshTokens()[issuedBefore:] {
			issued[tok] = true
		}
		var logText string
		logText, logOffset = h.logs.since(logOffset)

		switch {
		case s.kind == "clock":
			tot.clockJumps++
		case s.kind == "tick":
			tot.ticks++
		case res.request:
			tot.requests++
			switch {
			case res.status >= 500:
				tot.failed++
			case res.status >= 400:
				tot.rejected++
			}
		}

		// What Ermeo refused during the step: refresh tokens it answered
		// invalid_grant to.
		refused := map[string]bool{}
		presented := map[string]bool{}
		operatorReplays := 0
		for _, c := range calls {
			if c.grant != "refresh_token" {
				continue
			}
			presented[c.refreshToken] = true
			if c.status == http.StatusBadRequest && c.errCode == "invalid_grant" {
				refused[c.refreshToken] = true
			}
			if h.tainted[c.refreshToken] {
				operatorReplays++
			}
		}
		tot.operatorReplays += operatorReplays

		where := fmt.Sprintf("seq %d (ERMEO_OPERATOR_SEED=%d ERMEO_OPERATOR_SEQUENCES=1) step %d: %s -> %s", seq, seed, step, s.describe(), res.describe())
		if h.fault != nil {
			where += " [fault: " + h.fault.name + "]"
		}
		if trace {
			fmt.Printf("step %d at %s: %s -> %s", step, now.Format("01-02 15:04"), s.describe(), res.describe())
			if h.fault != nil {
				fmt.Printf(" [fault: %s]", h.fault.name)
			}
			fmt.Println()
			for _, k := range opSortedSnapKeys(after) {
				if !bytes.Equal(before[k], after[k]) {
					fmt.Printf("    %s: %s\n", k, opSummary(k, after[k]))
				}
			}
			for k := range before {
				if _, ok := after[k]; !ok {
					fmt.Printf("    %s: deleted\n", k)
				}
			}
		}
		report := func(prop, kind, what string) {
			tot.counts[prop]++
			tot.kinds[prop][kind]++
			if len(tot.examples[prop]) < opMaxExamples {
				tot.examples[prop] = append(tot.examples[prop], where+": "+what)
			}
		}

		// 1. A working chain is replaced only by a grant or an adoption that
		// succeeded, and removed only by a delete or by Ermeo's refusal.
		for key, raw := range before {
			if !strings.HasPrefix(key, accountPrefix) {
				continue
			}
			name := strings.TrimPrefix(key, accountPrefix)
			b := decodeOpAccount(raw)
			if b == nil || b.State != stateActive || b.RefreshToken == "" {
				continue
			}
			var a *opAccount
			if raw, ok := after[key]; ok {
				a = decodeOpAccount(raw)
			}
			switch {
			case a == nil || a.RefreshToken == "":
				deleted := s.kind == "account-delete" && s.name == name && res.status == 0
				if !deleted && !refused[b.RefreshToken] {
					how := "the account's refresh token is gone"
					if a == nil {
						how = "the account is gone"
					}
					report(propReplaced, "removed by "+s.label()+" "+statusClass(res),
						fmt.Sprintf("account %q was active with a working chain; after the step %s, though it was not deleted and Ermeo refused no refresh of its token (state now %q)", name, how, stateOf(a)))
				}
			case a.RefreshToken != b.RefreshToken:
				grantOrAdoption := s.kind == "creds" || s.kind == "rotate" || s.kind == "tick"
				if s.kind == "account-write" {
					_, pw := s.data["password"]
					_, rt := s.data["refresh_token"]
					grantOrAdoption = pw || rt
				}
				ok := issued[a.RefreshToken] && grantOrAdoption && (s.kind == "tick" || (s.name == name && res.status == 0))
				if !ok {
					origin := "a token the fake did not issue during the step"
					sent, _ := s.data["refresh_token"].(string)
					switch {
					case sent != "" && a.RefreshToken == strings.TrimSpace(sent):
						origin = "the refresh_token this write sent"
						switch {
						case h.tainted[a.RefreshToken]:
							origin += " (a spent one)"
						case strings.HasPrefix(a.RefreshToken, "SECRET-"):
							origin += " (garbage)"
						default:
							origin += " (live when sent)"
						}
					case issued[a.RefreshToken]:
						origin = "a token the fake issued during the step"
					case h.tainted[a.RefreshToken]:
						origin = "the spent token the operator sent"
					case h.e.fake.RefreshTokenLive(a.RefreshToken):
						origin = "a live token the operator sent"
					case strings.HasPrefix(a.RefreshToken, "SECRET-"):
						origin = "the garbage token the operator sent"
					}
					report(propReplaced, "replaced by "+s.label()+" "+statusClass(res),
						fmt.Sprintf("account %q was active with a working chain; its refresh token was replaced by %s, by a request that did not succeed as a grant or adoption (state now %q)", name, origin, a.State))
				}
			}
		}

		// 2. A failed request changes nothing (a 4xx) or only what records
		// the attempt (a 5xx).
		if res.request && res.status >= 400 {
			allowed := func(key string, b *opAccount) map[string]bool {
				if res.status < 500 || !strings.HasPrefix(key, accountPrefix) {
					return nil
				}
				set := map[string]bool{"last_error": true, "rotation_intent": true, "next_attempt_at": true}
				if b != nil && b.RefreshToken != "" && refused[b.RefreshToken] {
					set["state"], set["refresh_token"] = true, true
				}
				return set
			}
			if diffs := opStorageDiff(before, after, allowed); len(diffs) > 0 {
				kind := fmt.Sprintf("%s answered %d and %s", s.label(), res.status, opDiffCategory(diffs))
				if res.status < 500 && opOnlyRecordsRefusal(before, after, refused) {
					kind = fmt.Sprintf("%s answered %d (not 5xx) after Ermeo refused the stored chain, and recorded it", s.label(), res.status)
				}
				report(propStorage, kind, strings.Join(diffs, "; "))
			}
		}
		if s.kind == "config-write" && res.status == 0 {
			// The design: "a new secret is proven before it replaces the old
			// one". A client secret that Ermeo refuses must not be stored by
			// a write that succeeds (only checked while api_url is the fake).
			_, sentSecret := s.data["client_secret"]
			bc, ac := decodeOpConfig(before[configKey]), decodeOpConfig(after[configKey])
			if sentSecret && ac != nil && (bc == nil || bc.ClientSecret != ac.ClientSecret) &&
				strings.TrimRight(ac.APIURL, "/") == h.e.url && ac.ClientSecret != h.clientSecret {
				kind, what := "a wrong client_secret", "a client_secret that is not the integration's"
				if strings.TrimSpace(ac.ClientSecret) == h.clientSecret {
					kind = "the valid client_secret with whitespace around it"
					what = fmt.Sprintf("the valid client_secret with whitespace kept: %q", strings.Replace(ac.ClientSecret, h.clientSecret, "<secret>", 1))
				}
				report(propStorage, "config write succeeded storing "+kind+", which Ermeo refuses",
					"stored "+what+", which Ermeo refuses (invalid_client) and the write never proved: it should have failed and changed nothing")
			}
		}

		// 3. No secret in any answer, error or log line.
		outputs := map[string]string{"log": logText}
		for i, txt := range res.texts {
			outputs[fmt.Sprintf("answer#%d", i)] = txt
		}
		fakeTokens := h.e.fake.IssuedRefreshTokens()
		secrets := append([]opSecret(nil), h.secrets...)
		for _, tok := range fakeTokens {
			secrets = append(secrets, opSecret{what: "refresh token issued by the fake", needles: []string{tok, tok[:32]}})
		}
		for _, sec := range secrets {
			found := ""
			for _, kind := range sortedKeys(outputs) {
				txt := outputs[kind]
				for _, needle := range sec.needles {
					if i := strings.Index(txt, needle); i >= 0 {
						found = kind
						place := "in the answer"
						if kind == "log" {
							place = "in the log"
						}
						lo, hi := max(0, i-160), min(len(txt), i+len(needle)+40)
						report(propLeaked, fmt.Sprintf("%s %s of %s", sec.what, place, s.label()),
							fmt.Sprintf("%s %s: ...%s...", sec.what, place, strings.ReplaceAll(txt[lo:hi], "\n", "\\n")))
						break
					}
				}
				if found != "" {
					break
				}
			}
		}

		// 4. No refresh token sent twice; no young token refreshed.
		usedTwice := countersAfter.RefreshTokensUsedTwice - countersBefore.RefreshTokensUsedTwice
		if excess := usedTwice - operatorReplays; excess > 0 {
			for i := 0; i < excess; i++ {
				report(propRefresh, "a spent refresh token sent again by "+s.label(),
					fmt.Sprintf("the fake saw %d spent refresh token(s) presented again (%d of them handed in by the operator)", usedTwice, operatorReplays))
			}
		}
		if s.kind == "creds" {
			b := decodeOpAccount(before[accountPrefix+s.name])
			a := decodeOpAccount(after[accountPrefix+s.name])
			if b != nil && b.AccessToken != "" && b.AccessTokenExpiresAt.Sub(now) > opAccessTokenTTL/2 {
				spent := presented[b.RefreshToken] && b.RefreshToken != ""
				if a != nil && (a.Generation != b.Generation || a.RefreshToken != b.RefreshToken || a.attempts() > b.attempts()) {
					spent = true
				}
				if spent {
					age := opAccessTokenTTL - b.AccessTokenExpiresAt.Sub(now)
					minTTL := "the default 10m0s"
					if b.MinTTL > 0 {
						minTTL = "the account's " + b.MinTTL.String()
					} else if c := decodeOpConfig(before[configKey]); c != nil && c.DefaultMinTTL > 0 {
						minTTL = "config's default " + c.DefaultMinTTL.String()
					}
					report(propRefresh, "creds read spent a grant on a young access token",
						fmt.Sprintf("account %q's access token was %s old (lifetime %s, %s left; min_ttl is %s), yet the read spent a grant (generation %d -> %d)",
							s.name, age, opAccessTokenTTL, b.AccessTokenExpiresAt.Sub(now), minTTL, b.Generation, a.generation()))
				}
			}
		}
	}
	c := h.e.fake.Counters()
	tot.refreshes += c.Grants["refresh_token"]["success"]
	tot.passwordGrants += c.Grants["password"]["success"]
	tot.replaysAfterLost += c.ReplaysAfterLostAnswer
}

func statusClass(r opResult) string {
	switch {
	case !r.request:
		return ""
	case r.status == 0:
		return "(ok)"
	default:
		return fmt.Sprintf("(%d)", r.status)
	}
}

func stateOf(a *opAccount) string {
	if a == nil {
		return ""
	}
	return a.State
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ---- storage snapshots ----

func opSortedSnapKeys(m map[string][]byte) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// opSummary shows a stored entry for a trace, with its secrets shortened.
func opSummary(key string, raw []byte) string {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return string(raw)
	}
	for _, f := range []string{"refresh_token", "access_token", "client_secret", "password", "ca_certificate"} {
		if v, ok := m[f].(string); ok && len(v) > 12 {
			m[f] = v[:12] + "..."
		}
	}
	j, _ := json.Marshal(m)
	return string(j)
}

func (h *opHarness) snapshot(ctx context.Context) map[string][]byte {
	keys, err := logical.CollectKeys(ctx, h.e.storage)
	if err != nil {
		h.t.Fatalf("listing storage: %v", err)
	}
	snap := make(map[string][]byte, len(keys))
	for _, k := range keys {
		e, err := h.e.storage.Get(ctx, k)
		if err != nil {
			h.t.Fatalf("reading storage %s: %v", k, err)
		}
		if e != nil {
			snap[k] = append([]byte(nil), e.Value...)
		}
	}
	return snap
}

// opAccount is what the campaign reads of a stored account entry (the
// storage format, which is kept across versions).
type opAccount struct {
	Username             string        `json:"username"`
	RefreshToken         string        `json:"refresh_token"`
	AccessToken          string        `json:"access_token"`
	AccessTokenExpiresAt time.Time     `json:"access_token_expires_at"`
	Generation           uint64        `json:"generation"`
	State                string        `json:"state"`
	MinTTL               time.Duration `json:"min_ttl"`
	RotationIntent       *struct {
		Attempts int `json:"attempts"`
	} `json:"rotation_intent"`
}

func (a *opAccount) attempts() int {
	if a == nil || a.RotationIntent == nil {
		return 0
	}
	return a.RotationIntent.Attempts
}

func (a *opAccount) generation() uint64 {
	if a == nil {
		return 0
	}
	return a.Generation
}

func decodeOpAccount(raw []byte) *opAccount {
	if raw == nil {
		return nil
	}
	var a opAccount
	if json.Unmarshal(raw, &a) != nil {
		return nil
	}
	return &a
}

type opConfig struct {
	APIURL        string        `json:"api_url"`
	ClientID      string        `json:"client_id"`
	ClientSecret  string        `json:"client_secret"`
	DefaultMinTTL time.Duration `json:"default_min_ttl"`
}

func decodeOpConfig(raw []byte) *opConfig {
	if raw == nil {
		return nil
	}
	var c opConfig
	if json.Unmarshal(raw, &c) != nil {
		return nil
	}
	return &c
}

// opStorageDiff lists what changed between two snapshots, leaving out the
// fields of an entry that allowed names for it.
func opStorageDiff(before, after map[string][]byte, allowed func(key string, b *opAccount) map[string]bool) []string {
	keys := map[string]bool{}
	for k := range before {
		keys[k] = true
	}
	for k := range after {
		keys[k] = true
	}
	var diffs []string
	for _, k := range sortedKeySet(keys) {
		b, bok := before[k]
		a, aok := after[k]
		switch {
		case !bok:
			diffs = append(diffs, "created "+k)
		case !aok:
			diffs = append(diffs, "deleted "+k)
		case bytes.Equal(a, b):
		default:
			ok := allowed(k, decodeOpAccount(b))
			var fields []string
			for _, f := range opChangedFields(b, a) {
				if !ok[f] {
					fields = append(fields, f)
				}
			}
			if len(fields) > 0 {
				diffs = append(diffs, fmt.Sprintf("changed %s: %s", k, strings.Join(fields, ", ")))
			}
		}
	}
	return diffs
}

// opDiffCategory says in a few words what a failed request changed.
func opDiffCategory(diffs []string) string {
	seen := map[string]bool{}
	var cats []string
	for _, d := range diffs {
		var c string
		switch {
		case strings.HasPrefix(d, "created "+accountPrefix):
			c = "created the account"
		case strings.HasPrefix(d, "deleted "+passwordPrefix):
			c = "deleted the kept password"
		case strings.HasPrefix(d, "created "+passwordPrefix):
			c = "stored a password"
		case strings.HasPrefix(d, "changed "+accountPrefix):
			fields := map[string]bool{}
			for _, f := range strings.Split(d[strings.Index(d, ": ")+2:], ", ") {
				fields[f] = true
			}
			switch {
			case fields["refresh_token"]:
				c = "replaced the account's refresh token"
			case fields["access_token"]:
				c = "wiped the account's access token"
			case fields["min_ttl"] || fields["rotation_period"] || fields["lease"] || fields["username"]:
				c = "stored the failed write's settings or username"
			default:
				c = "changed the account (" + d[strings.Index(d, ": ")+2:] + ")"
			}
		default:
			c = d
		}
		if !seen[c] {
			seen[c] = true
			cats = append(cats, c)
		}
	}
	return strings.Join(cats, " and ")
}

// opOnlyRecordsRefusal reports whether the only changes are an account's
// recording that Ermeo refused its stored refresh token.
func opOnlyRecordsRefusal(before, after map[string][]byte, refused map[string]bool) bool {
	diffs := opStorageDiff(before, after, func(key string, b *opAccount) map[string]bool {
		if !strings.HasPrefix(key, accountPrefix) || b == nil || !refused[b.RefreshToken] {
			return nil
		}
		return map[string]bool{"last_error": true, "rotation_intent": true, "next_attempt_at": true, "state": true, "refresh_token": true}
	})
	return len(diffs) == 0
}

func opChangedFields(b, a []byte) []string {
	var bm, am map[string]json.RawMessage
	if json.Unmarshal(b, &bm) != nil || json.Unmarshal(a, &am) != nil {
		return []string{"(not JSON)"}
	}
	names := map[string]bool{}
	for k := range bm {
		names[k] = true
	}
	for k := range am {
		names[k] = true
	}
	var changed []string
	for _, k := range sortedKeySet(names) {
		if !bytes.Equal(bm[k], am[k]) {
			changed = append(changed, k)
		}
	}
	return changed
}

func sortedKeySet(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ---- plumbing: log buffer, token recorder, connections, CA ----

// opLogBuffer is the backend's log, searchable while it is written.
type opLogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *opLogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// since returns what was logged from offset on, and the new offset.
func (l *opLogBuffer) since(offset int) (string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	return s[offset:], len(s)
}

// opTokenCall is one request to the fake's token endpoint, recorded when it
// arrives, with the answer the fake gave (status 0: none).
type opTokenCall struct {
	grant, refreshToken string
	status              int
	errCode             string
}

// opRecorder records the token requests in front of the fake.
type opRecorder struct {
	next  http.Handler
	mu    sync.Mutex
	calls []*opTokenCall
}

func (r *opRecorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != fakeermeo.TokenPath || req.Method != http.MethodPost {
		r.next.ServeHTTP(w, req)
		return
	}
	body, _ := io.ReadAll(req.Body)
	req.Body = io.NopCloser(bytes.NewReader(body))
	c := &opTokenCall{}
	mediaType, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type"))
	if mediaType == "application/json" {
		var m map[string]any
		_ = json.Unmarshal(body, &m)
		c.grant, _ = m["grant_type"].(string)
		c.refreshToken, _ = m["refresh_token"].(string)
	} else if v, err := url.ParseQuery(string(body)); err == nil {
		c.grant, c.refreshToken = v.Get("grant_type"), v.Get("refresh_token")
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	r.next.ServeHTTP(&opAnswerWriter{ResponseWriter: w, r: r, c: c}, req)
}

func (r *opRecorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// since returns copies of the calls from mark on.
func (r *opRecorder) since(mark int) []opTokenCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]opTokenCall, 0, len(r.calls)-mark)
	for _, c := range r.calls[mark:] {
		out = append(out, *c)
	}
	return out
}

type opAnswerWriter struct {
	http.ResponseWriter
	r   *opRecorder
	c   *opTokenCall
	buf bytes.Buffer
}

func (w *opAnswerWriter) WriteHeader(code int) {
	w.r.mu.Lock()
	w.c.status = code
	w.r.mu.Unlock()
	w.ResponseWriter.WriteHeader(code)
}

func (w *opAnswerWriter) Write(p []byte) (int, error) {
	w.r.mu.Lock()
	if w.c.status == 0 {
		w.c.status = http.StatusOK
	}
	w.buf.Write(p)
	var body struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(w.buf.Bytes(), &body) == nil {
		w.c.errCode = body.Error
	}
	w.r.mu.Unlock()
	return w.ResponseWriter.Write(p)
}

// Unwrap lets the fake hijack the connection (reset, lost answer).
func (w *opAnswerWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// opConn is a connection of the plugin's HTTP client that, while timeouts
// are on, gives up reading after opClientTimeout. It survives the transport
// clone that a ca_certificate makes.
type opConn struct {
	net.Conn
	timeouts *atomic.Bool
	set      *opConnSet
}

func (c *opConn) Read(p []byte) (int, error) {
	if c.timeouts.Load() {
		_ = c.Conn.SetReadDeadline(time.Now().Add(opClientTimeout))
	} else {
		_ = c.Conn.SetReadDeadline(time.Time{})
	}
	return c.Conn.Read(p)
}

func (c *opConn) Close() error {
	c.set.remove(c)
	return c.Conn.Close()
}

type opConnSet struct {
	mu    sync.Mutex
	conns map[*opConn]bool
}

func (s *opConnSet) add(c *opConn) *opConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[c] = true
	return c
}

func (s *opConnSet) remove(c *opConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

func (s *opConnSet) closeAll() {
	s.mu.Lock()
	conns := make([]*opConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// opTestCA is a self-signed CA certificate in PEM, for valid ca_certificate
// values.
func opTestCA(t *testing.T) string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "operator campaign CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
