// Package fakeermeo is a fake of Ermeo's OAuth 2.0 token endpoint
// (POST /oauth/v2/token) and of its profile API (GET /api/v1/profile), for
// tests and the demo. It is an http.Handler: run it with httptest.NewServer or
// the cmd/fake-ermeo binary.
//
// # What it is faithful to
//
// It answers like the server library behind Ermeo's token route
// (FriendsOfSymfony/oauth2-php under FOSOAuthServerBundle), as described in
// shared/ermeo-oauth.md and recorded in shared/ermeo-vectors.json:
//
//   - JSON and form bodies (a JSON body is ignored with Options.RefuseJSON, as
//     with the stock library), client credentials from HTTP Basic auth before
//     the body, and the library's check order: grant_type format, client id,
//     client credentials, grant type allowed for the client, the grant's own
//     checks, then the requested scope (only "user" is supported: any other
//     is invalid_scope, and a refresh refused for its scope does not consume
//     its refresh token), with the library's error codes and descriptions;
//   - the response headers (Content-Type: application/json, Cache-Control:
//     no-store, private, Pragma: no-cache) and body shapes, with expires_in a
//     JSON number;
//   - tokens of 86 ASCII letters and digits, crypto-random;
//   - rotation: each refresh token works once; a refresh issues a new pair and
//     consumes the old refresh token; old access tokens stay valid until they
//     expire; a password grant revokes nothing; lifetimes count from issue on
//     the injected clock (Options.Now), and a token is expired only once the
//     clock is strictly past its expiry;
//   - the profile API's Bearer handling: "Bearer" is case-sensitive, a token
//     may also come in the access_token query parameter, and sending it two
//     ways at once is an invalid_request.
//
// By default the fake is stricter than the library: every grant is checked
// and committed under one mutex, so two concurrent refreshes with one token
// never both succeed. With Options.NonAtomicRefresh it is as lax as the
// library, whose refresh grant reads the refresh token, then stores the new
// pair and deletes the old token, without a transaction: two concurrent
// refreshes with one token can both succeed. Either way it counts what a
// correct client never does: presenting an already consumed refresh token
// (Counters.RefreshTokensUsedTwice), and presenting a refresh token while
// another refresh of it is in flight (Counters.ConcurrentRefreshesOfOneToken);
// RefreshTokenPresentations tells how often each token was presented.
// The fake implements only the password and refresh_token grants: any other
// grant type that Options.AllowedGrants allows is answered with
// unsupported_grant_type and a null error_description.
//
// # Fault knobs
//
// InjectFault makes requests to POST /oauth/v2/token misbehave the way proxies
// and outages do: a delay (FaultDelay), a 5xx with an HTML body (FaultStatus),
// a 429 (FaultTooManyRequests), a TCP reset (FaultReset), a 200 that is not
// JSON (FaultNonJSON), all without processing the grant; or an answer lost
// after the grant was committed (FaultLostAfterCommit), and an answer held
// back after the commit until ReleaseHeld (FaultHold). A Fault may be limited
// to one grant type and to a number of requests.
//
// GET /_fake/counters answers the Counters as JSON, for tests and demos that
// run the fake in another process.
package fakeermeo

import (
	"crypto/rand"
	"encoding/json"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The client credentials and user of shared/ermeo-vectors.json.
const (
	DefaultClientID     = "5_2och3ahuji2owccg8004cwkk8woc8gcggsk0c0scc0s8og4swk"
	DefaultClientSecret = "4ok2x70rlfokc8g0wws8c8kwcokw80k44sg48goc0ok4w0so0k"
	DefaultUsername     = "jane@example.com"
	DefaultPassword     = "correct-horse"
)

// Default lifetimes, as at Ermeo.
const (
	DefaultAccessTokenTTL  = 7200 * time.Second
	DefaultRefreshTokenTTL = 14 * 24 * time.Hour
)

// Paths served by the fake.
const (
	TokenPath    = "/oauth/v2/token"
	ProfilePath  = "/api/v1/profile"
	CountersPath = "/_fake/counters"
)

// Options configures a Server. The zero value gives the defaults of each field.
type Options struct {
	// ClientID and ClientSecret are the one client's credentials; each
	// defaults to the value in ermeo-vectors.json when empty.
	ClientID, ClientSecret string
	// Users maps usernames to passwords; default
	// {"jane@example.com": "correct-horse"}. User ids (in the profile) are
	// given in sorted username order, from 1.
	Users map[string]string
	// AccessTokenTTL is the access token lifetime; default 7200 s. The
	// response's expires_in is it in whole seconds.
	AccessTokenTTL time.Duration
	// RefreshTokenTTL is the refresh token lifetime; default 14 days.
	RefreshTokenTTL time.Duration
	// AccessTokenBytes is the length of the access tokens issued; default
	// 86, as Ermeo's. A larger one (a JWT can be several KB) makes each
	// stored account entry, and each storage write of a refresh, span
	// several storage pages (the full-disk test needs writes that cannot
	// fit in pages a database has freed).
	AccessTokenBytes int
	// Now is the clock for token lifetimes; default time.Now.
	Now func() time.Time
	// RefuseJSON makes the fake ignore JSON bodies, like the stock library:
	// only form fields are read, so a JSON request gets invalid_request
	// "Invalid grant_type parameter or parameter missing".
	RefuseJSON bool
	// AllowedGrants are the grant types allowed for the client; default
	// ["password", "refresh_token"].
	AllowedGrants []string
	// NonAtomicRefresh makes the refresh grant non-atomic, like the
	// library's: it checks the refresh token under the fake's lock, releases
	// the lock for a window (NonAtomicRefreshWindow of real time), then
	// takes it again to issue the new pair and consume the old token without
	// checking it again. Two refreshes presenting one token whose windows
	// overlap both succeed, each with its own new pair. A client must not
	// rely on the server to refuse the second: this option lets a test show
	// that it never sends one (Counters.ConcurrentRefreshesOfOneToken).
	NonAtomicRefresh bool
}

// NonAtomicRefreshWindow is how long a refresh under Options.NonAtomicRefresh
// waits, with the lock released, between its check and its commit: a stand-in
// for the library's two inserts before its delete.
const NonAtomicRefreshWindow = 5 * time.Millisecond

// Counters counts what the token endpoint saw.
type Counters struct {
	// Grants maps a grant type ("password", "refresh_token", or "other")
	// to an outcome ("success", an error code such as "invalid_grant", or
	// "fault_<kind>" for a faulted request that was not processed) to a count.
	Grants map[string]map[string]int `json:"grants"`
	// RefreshTokensUsedTwice counts the presentations, in refresh_token
	// grant requests, of a refresh token already consumed by a successful
	// refresh whose answer was delivered, whatever else the request carried
	// and whether or not a fault stopped it. It stays 0 for a correct client:
	// a client that got the new pair never sends the old token again.
	RefreshTokensUsedTwice int `json:"refresh_tokens_used_twice"`
	// ReplaysAfterLostAnswer counts the presentations of a refresh token
	// consumed by a refresh whose answer the fake dropped
	// (FaultLostAfterCommit, or a held answer whose client gave up): the
	// client could not know the token was spent, and a retry is how it
	// finds out.
	ReplaysAfterLostAnswer int `json:"replays_after_lost_answer"`
	// DistinctTokensReplayed counts the consumed refresh tokens that were
	// presented again at least once: for a client, each is a chain it found
	// gone.
	DistinctTokensReplayed int `json:"distinct_tokens_replayed"`
	// AnswersDropped counts successful refreshes whose answer the fake
	// dropped: each one spent a refresh token the client never heard about.
	AnswersDropped int `json:"answers_dropped"`
	// ConcurrentRefreshesOfOneToken counts the refresh_token grant requests
	// that presented a refresh token while another request presenting the
	// same token was in flight (received, and its handling not finished:
	// not yet answered, refused, or dropped). It stays 0 for a client that
	// serializes its refreshes; under Options.NonAtomicRefresh such a
	// request may succeed.
	ConcurrentRefreshesOfOneToken int `json:"concurrent_refreshes_of_one_token"`
	// LiveRefreshTokens is how many refresh tokens are issued, not
	// consumed, and not expired at Now().
	LiveRefreshTokens int `json:"live_refresh_tokens"`
	// Requests counts the requests received by the token endpoint.
	Requests int `json:"requests"`
}

// TokenRequest is what the fake saw of one token request and how it ended,
// so that a test can tell which client sent it (RemoteAddr: each node of a
// cluster in its own network namespace has its own address) and what came
// of it.
type TokenRequest struct {
	// Received is when the request arrived; Ended when its handling ended
	// (answered, refused, or dropped).
	Received, Ended time.Time
	// RemoteAddr is the client's address and port, as net/http gives it.
	RemoteAddr string
	// GrantType is the request's grant_type.
	GrantType string
	// Presented is the refresh token a refresh_token grant presented, and
	// Issued the refresh token a successful grant issued.
	Presented, Issued string
	// Replay: Presented had already been consumed when the request arrived.
	Replay bool
	// Outcome is the grant's outcome as in Counters.Grants ("success",
	// "invalid_grant", "fault_status", ...).
	Outcome string
	// Fault is the fault applied to the request, if any ("hold", "delay", ...).
	Fault string
	// Delivered: an answer was written (a grant that succeeded or was
	// refused, or a fault's answer); false when the connection was dropped.
	Delivered bool
}

type refreshToken struct {
	clientID string
	username string
	expires  time.Time
	consumed bool
	// answerLost: the refresh that consumed this token never delivered
	// its answer.
	answerLost bool
	// replayed: presented again after it was consumed.
	replayed bool
}

type accessToken struct {
	clientID string
	username string
	expires  time.Time
}

// Server is the fake Ermeo. Create it with New; it is safe for concurrent use.
type Server struct {
	opts    Options
	allowed map[string]bool

	mu            sync.Mutex
	users         map[string]string
	userIDs       map[string]int
	refresh       map[string]*refreshToken
	access        map[string]*accessToken
	refreshIssued []string
	accessIssued  []string
	counters      Counters
	faults        []*activeFault
	release       chan struct{} // closed by ReleaseHeld
	held          int
	// inFlight counts, per presented refresh token, the refresh_token
	// grant requests being handled; presented counts every presentation.
	inFlight  map[string]int
	presented map[string]int
	// requests is every token request, in the order they arrived.
	requests []*TokenRequest

	// inWindow, if set, replaces the wait of a NonAtomicRefresh window
	// (tests make windows overlap with it).
	inWindow func()
}

// New returns a fake Ermeo configured by opts.
func New(opts Options) *Server {
	if opts.ClientID == "" {
		opts.ClientID = DefaultClientID
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = DefaultClientSecret
	}
	if len(opts.Users) == 0 {
		opts.Users = map[string]string{DefaultUsername: DefaultPassword}
	}
	if opts.AccessTokenTTL == 0 {
		opts.AccessTokenTTL = DefaultAccessTokenTTL
	}
	if opts.RefreshTokenTTL == 0 {
		opts.RefreshTokenTTL = DefaultRefreshTokenTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.AllowedGrants == nil {
		opts.AllowedGrants = []string{"password", "refresh_token"}
	}
	s := &Server{
		opts:      opts,
		allowed:   map[string]bool{},
		users:     map[string]string{},
		userIDs:   map[string]int{},
		refresh:   map[string]*refreshToken{},
		access:    map[string]*accessToken{},
		counters:  Counters{Grants: map[string]map[string]int{}},
		release:   make(chan struct{}),
		inFlight:  map[string]int{},
		presented: map[string]int{},
	}
	for _, g := range opts.AllowedGrants {
		s.allowed[g] = true
	}
	names := make([]string, 0, len(opts.Users))
	for name := range opts.Users {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		s.setUserLocked(name, opts.Users[name])
	}
	s.opts.Users = nil // the live copy is s.users
	return s
}

// ServeHTTP serves the token endpoint, the profile API and the counters.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case TokenPath:
		s.serveToken(w, r)
	case ProfilePath:
		s.serveProfile(w, r)
	case CountersPath:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, "GET, HEAD")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.Counters())
	default:
		http.NotFound(w, r)
	}
}

// Counters returns a deep copy of the counters.
func (s *Server) Counters() Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.counters
	c.Grants = map[string]map[string]int{}
	for grant, outcomes := range s.counters.Grants {
		c.Grants[grant] = map[string]int{}
		for outcome, n := range outcomes {
			c.Grants[grant][outcome] = n
		}
	}
	now := s.opts.Now()
	for _, rt := range s.refresh {
		if !rt.consumed && !now.After(rt.expires) {
			c.LiveRefreshTokens++
		}
	}
	return c
}

// IssuedRefreshTokens returns every refresh token ever issued, oldest first.
func (s *Server) IssuedRefreshTokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.refreshIssued...)
}

// IssuedAccessTokens returns every access token ever issued, oldest first.
func (s *Server) IssuedAccessTokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.accessIssued...)
}

// RefreshTokenPresentations returns, for each refresh token ever presented in
// a refresh_token grant request (issued by the fake or not), how many
// requests presented it, whatever their outcome, faulted ones included.
func (s *Server) RefreshTokenPresentations() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.presented))
	for tok, n := range s.presented {
		out[tok] = n
	}
	return out
}

// TokenRequests returns a copy of every token request so far, in the order
// they arrived; a request still being handled has a zero Ended.
func (s *Server) TokenRequests() []TokenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TokenRequest, len(s.requests))
	for i, r := range s.requests {
		out[i] = *r
	}
	return out
}

// RefreshTokenLive reports whether tok was issued and is neither consumed nor
// expired.
func (s *Server) RefreshTokenLive(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.refresh[tok]
	return rt != nil && !rt.consumed && !s.opts.Now().After(rt.expires)
}

// AccessTokenValid reports whether tok was issued and has not expired.
func (s *Server) AccessTokenValid(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	at := s.access[tok]
	return at != nil && !s.opts.Now().After(at.expires)
}

// AccessTokenExpiresAt returns when tok stops being accepted (it is accepted
// up to that instant), and whether it was issued at all.
func (s *Server) AccessTokenExpiresAt(tok string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at := s.access[tok]
	if at == nil {
		return time.Time{}, false
	}
	return at.expires, true
}

// SetUserPassword adds a user or changes a user's password. Tokens already
// issued stay valid.
func (s *Server) SetUserPassword(username, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setUserLocked(username, password)
}

func (s *Server) setUserLocked(username, password string) {
	if _, ok := s.userIDs[username]; !ok {
		s.userIDs[username] = len(s.userIDs) + 1
	}
	s.users[username] = password
}

// ---- token endpoint ----

type tokenSuccess struct {
	AccessToken  string `json:"access_token"`
	ExpiresIn    int64  `json:"expires_in"`
	TokenType    string `json:"token_type"`
	Scope        string `json:"scope"`
	RefreshToken string `json:"refresh_token"`
}

type oauthError struct {
	Error            string  `json:"error"`
	ErrorDescription *string `json:"error_description"`
}

// answer is what the token endpoint replies once a grant is processed.
type answer struct {
	status int
	body   any
}

func fail(code, description string) answer {
	return answer{http.StatusBadRequest, oauthError{code, &description}}
}

// grantTypeFormat is the library's GRANT_TYPE_REGEXP.
var grantTypeFormat = regexp.MustCompile(`^(authorization_code|token|password|client_credentials|refresh_token|https?://.+|urn:.+)$`)

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		methodNotAllowed(w, "GET, POST")
		return
	}
	params := s.readParams(r)
	basicUser, basicPass, _ := r.BasicAuth()

	rec := &TokenRequest{Received: time.Now(), RemoteAddr: r.RemoteAddr, GrantType: params["grant_type"]}
	s.mu.Lock()
	s.counters.Requests++
	if rec.GrantType == "refresh_token" {
		rec.Presented = params["refresh_token"]
		rt := s.refresh[rec.Presented]
		rec.Replay = rt != nil && rt.consumed
	}
	s.requests = append(s.requests, rec)
	defer s.noteRequest(rec, func(rec *TokenRequest) { rec.Ended = time.Now() })
	// A replay is judged when the request arrives: one sent before its
	// token was consumed is not a replay, however long a fault delays it.
	s.noteReplayLocked(params)
	if tok := params["refresh_token"]; params["grant_type"] == "refresh_token" && tok != "" {
		s.presented[tok]++
		if s.inFlight[tok] > 0 {
			s.counters.ConcurrentRefreshesOfOneToken++
		}
		s.inFlight[tok]++
		defer s.doneInFlight(tok)
	}
	var f *Fault
	if r.Method == http.MethodPost {
		f = s.takeFaultLocked(params["grant_type"])
	}
	s.mu.Unlock()

	if f != nil {
		s.noteRequest(rec, func(rec *TokenRequest) { rec.Fault = f.Kind.String() })
	}
	if f != nil && !f.Kind.processes() {
		s.notProcessed(params, f.Kind)
		s.noteRequest(rec, func(rec *TokenRequest) {
			rec.Outcome, rec.Delivered = "fault_"+f.Kind.String(), f.Kind != FaultReset
		})
		switch f.Kind {
		case FaultStatus:
			status := f.Status
			if status == 0 {
				status = http.StatusBadGateway
			}
			writeHTML(w, status, "")
		case FaultTooManyRequests:
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			writeHTML(w, http.StatusTooManyRequests, "")
		case FaultReset:
			dropConnection(w, true)
		case FaultNonJSON:
			writeHTML(w, http.StatusOK, "<html><body><h1>Welcome</h1><p>Please sign in.</p></body></html>\n")
		}
		return
	}
	if f != nil && f.Kind == FaultDelay {
		if !sleepContext(r.Context(), f.Delay) {
			s.notProcessed(params, f.Kind)
			s.noteRequest(rec, func(rec *TokenRequest) { rec.Outcome = "fault_" + f.Kind.String() })
			return
		}
	}

	a := s.grant(params, basicUser, basicPass)
	s.noteRequest(rec, func(rec *TokenRequest) {
		rec.Outcome = "success"
		switch b := a.body.(type) {
		case oauthError:
			rec.Outcome = b.Error
		case tokenSuccess:
			rec.Issued = b.RefreshToken
		}
	})

	if f != nil && f.Kind == FaultLostAfterCommit {
		s.noteAnswerLost(params, a)
		dropConnection(w, false)
		return
	}
	if f != nil && f.Kind == FaultHold && !s.hold(r.Context()) {
		s.noteAnswerLost(params, a)
		dropConnection(w, false)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store, private")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(a.status)
	json.NewEncoder(w).Encode(a.body)
	s.noteRequest(rec, func(rec *TokenRequest) { rec.Delivered = true })
}

// noteRequest changes a request's record under the lock.
func (s *Server) noteRequest(rec *TokenRequest, change func(*TokenRequest)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	change(rec)
}

// readParams returns the token request's fields: the query string for GET;
// for POST, the form body, or the JSON body unless RefuseJSON. Fields that
// are absent, empty or not scalars are left out. A field repeated in a query
// string or a form takes its last value, as in PHP (url.Values.Get would
// take the first); so does a repeated JSON key, as with json_decode.
func (s *Server) readParams(r *http.Request) map[string]string {
	params := map[string]string{}
	if r.Method == http.MethodGet {
		lastValues(params, r.URL.Query())
		return params
	}
	mediaType, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mediaType {
	case "application/x-www-form-urlencoded", "multipart/form-data":
		r.ParseMultipartForm(1 << 20)
		lastValues(params, r.PostForm)
	case "application/json":
		if s.opts.RefuseJSON {
			return params
		}
		var body map[string]any
		dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
		dec.UseNumber()
		if dec.Decode(&body) != nil {
			return params
		}
		for k, v := range body {
			switch v := v.(type) {
			case string:
				if v != "" {
					params[k] = v
				}
			case json.Number:
				params[k] = v.String()
			case bool:
				if v {
					params[k] = "1" // PHP's string form of true
				}
			}
		}
	}
	return params
}

// lastValues puts each field's last value into params, unless it is empty.
func lastValues(params map[string]string, values url.Values) {
	for k, v := range values {
		if len(v) > 0 && v[len(v)-1] != "" {
			params[k] = v[len(v)-1]
		}
	}
}

// doneInFlight ends the handling of a request that presented tok.
func (s *Server) doneInFlight(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inFlight[tok]--; s.inFlight[tok] <= 0 {
		delete(s.inFlight, tok)
	}
}

// grant runs the library's checks on a token request and commits the
// result: atomically, except for a refresh under Options.NonAtomicRefresh,
// whose check and commit are apart.
func (s *Server) grant(params map[string]string, basicUser, basicPass string) answer {
	s.mu.Lock()
	defer s.mu.Unlock()
	grantType := params["grant_type"]
	g, refused := s.checkLocked(grantType, params, basicUser, basicPass)
	a := refused
	if refused.status == 0 {
		if g.oldRefresh != nil && s.opts.NonAtomicRefresh {
			wait := s.inWindow
			s.mu.Unlock()
			if wait == nil {
				time.Sleep(NonAtomicRefreshWindow)
			} else {
				wait()
			}
			s.mu.Lock()
		}
		a = s.commitLocked(g)
	}
	outcome := "success"
	if e, ok := a.body.(oauthError); ok {
		outcome = e.Error
	}
	s.countLocked(grantType, outcome)
	return a
}

// checked is a grant that passed every check, ready to be committed.
type checked struct {
	clientID, username string
	// scope is the answer's scope: the requested one, or the default.
	scope string
	// oldRefresh is the refresh token a refresh grant consumes on commit.
	oldRefresh *refreshToken
	now        time.Time
}

// supportedScope is the one scope of Ermeo's tokens (the library's
// supported_scopes, and the scope of every token it issues).
const supportedScope = "user"

// checkLocked runs grantAccessToken's checks in the library's order: the
// grant_type format, the client, the grant type allowed for the client, the
// grant's own checks, then the requested scope. It returns the grant to
// commit, or the refusal (status != 0).
func (s *Server) checkLocked(grantType string, params map[string]string, basicUser, basicPass string) (checked, answer) {
	if !grantTypeFormat.MatchString(grantType) {
		return checked{}, fail("invalid_request", "Invalid grant_type parameter or parameter missing")
	}
	clientID, secret := basicUser, basicPass
	if basicUser == "" {
		clientID, secret = params["client_id"], params["client_secret"]
		if clientID == "" {
			return checked{}, fail("invalid_client", "Client id was not found in the headers or body")
		}
	}
	if clientID != s.opts.ClientID || secret != s.opts.ClientSecret {
		return checked{}, fail("invalid_client", "The client credentials are invalid")
	}
	if !s.allowed[grantType] {
		return checked{}, fail("unauthorized_client", "The grant type is unauthorized for this client_id")
	}

	g := checked{clientID: clientID, scope: supportedScope, now: s.opts.Now()}
	switch grantType {
	case "password":
		username, password := params["username"], params["password"]
		if username == "" || password == "" {
			return checked{}, fail("invalid_request", `Missing parameters. "username" and "password" required`)
		}
		stored, ok := s.users[username]
		if !ok || stored != password {
			return checked{}, fail("invalid_grant", "Invalid username and password combination")
		}
		g.username = username
	case "refresh_token":
		tok := params["refresh_token"]
		if tok == "" {
			return checked{}, fail("invalid_request", `No "refresh_token" parameter found`)
		}
		rt := s.refresh[tok]
		if rt == nil || rt.consumed || rt.clientID != clientID {
			return checked{}, fail("invalid_grant", "Invalid refresh token")
		}
		if g.now.After(rt.expires) {
			return checked{}, fail("invalid_grant", "Refresh token has expired")
		}
		// Like the library's $this->oldRefreshToken: noted here, consumed
		// only by the commit.
		g.username, g.oldRefresh = rt.username, rt
	default:
		return checked{}, answer{http.StatusBadRequest, oauthError{Error: "unsupported_grant_type"}}
	}

	// The scope is checked after the grant's own checks and before any token
	// is created or consumed, as in grantAccessToken: a refresh refused here
	// leaves its refresh token live. PHP's truthiness: "" and "0" ask for
	// no scope.
	if requested := params["scope"]; requested != "" && requested != "0" {
		if !scopeSupported(requested) {
			return checked{}, fail("invalid_scope", "An unsupported scope was requested.")
		}
		g.scope = requested
	}
	return g, answer{}
}

// scopeSupported is the library's checkScope against the supported scope:
// every space-separated word of the trimmed request must be that scope.
func scopeSupported(requested string) bool {
	for _, word := range strings.Split(strings.Trim(requested, " \t\n\r\x00\x0b"), " ") {
		if word != supportedScope {
			return false
		}
	}
	return true
}

// commitLocked issues the new pair of a checked grant, then consumes the
// refresh token it presented, if any (the library's createAccessToken). The
// token is not checked again: under NonAtomicRefresh another refresh may have
// consumed it since the check, and this one succeeds all the same.
func (s *Server) commitLocked(g checked) answer {
	a := s.issueLocked(g.clientID, g.username, g.scope, g.now)
	if g.oldRefresh != nil {
		g.oldRefresh.consumed = true
	}
	return a
}

func (s *Server) issueLocked(clientID, username, scope string, now time.Time) answer {
	at, rt := newTokenOf(s.opts.AccessTokenBytes), newToken()
	s.access[at] = &accessToken{clientID, username, now.Add(s.opts.AccessTokenTTL)}
	s.refresh[rt] = &refreshToken{clientID: clientID, username: username, expires: now.Add(s.opts.RefreshTokenTTL)}
	s.accessIssued = append(s.accessIssued, at)
	s.refreshIssued = append(s.refreshIssued, rt)
	return answer{http.StatusOK, tokenSuccess{
		AccessToken:  at,
		ExpiresIn:    int64(s.opts.AccessTokenTTL / time.Second),
		TokenType:    "bearer",
		Scope:        scope,
		RefreshToken: rt,
	}}
}

// noteReplayLocked counts a refresh_token grant request that presents an
// already consumed refresh token.
func (s *Server) noteReplayLocked(params map[string]string) {
	if params["grant_type"] != "refresh_token" {
		return
	}
	if rt := s.refresh[params["refresh_token"]]; rt != nil && rt.consumed {
		if !rt.replayed {
			rt.replayed = true
			s.counters.DistinctTokensReplayed++
		}
		if rt.answerLost {
			s.counters.ReplaysAfterLostAnswer++
		} else {
			s.counters.RefreshTokensUsedTwice++
		}
	}
}

// noteAnswerLost records that a successful refresh's answer is being dropped,
// so that the client's retry with the consumed token is not counted as a
// token used twice.
func (s *Server) noteAnswerLost(params map[string]string, a answer) {
	if params["grant_type"] != "refresh_token" || a.status != http.StatusOK {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rt := s.refresh[params["refresh_token"]]; rt != nil && rt.consumed && !rt.answerLost {
		rt.answerLost = true
		s.counters.AnswersDropped++
	}
}

func (s *Server) countLocked(grantType, outcome string) {
	if grantType != "password" && grantType != "refresh_token" {
		grantType = "other"
	}
	if s.counters.Grants[grantType] == nil {
		s.counters.Grants[grantType] = map[string]int{}
	}
	s.counters.Grants[grantType][outcome]++
}

// notProcessed counts a request that a fault stopped before its grant ran.
func (s *Server) notProcessed(params map[string]string, kind FaultKind) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.countLocked(params["grant_type"], "fault_"+kind.String())
}

const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// tokenBytes is the length of the tokens Ermeo issues.
const tokenBytes = 86

// newToken returns 86 crypto-random ASCII letters and digits.
func newToken() string { return newTokenOf(tokenBytes) }

// newTokenOf returns n crypto-random ASCII letters and digits (86 if n <= 0).
func newTokenOf(n int) string {
	if n <= 0 {
		n = tokenBytes
	}
	out := make([]byte, 0, n)
	buf := make([]byte, 2*n)
	for len(out) < n {
		rand.Read(buf) // never fails (crypto/rand)
		for _, b := range buf {
			// 248 = 4*62: reject the top bytes so each letter is uniform.
			if b < 248 && len(out) < n {
				out = append(out, tokenAlphabet[b%62])
			}
		}
	}
	return string(out)
}

// ---- profile API ----

// bearerHeader is the library's case-sensitive, unanchored match.
var bearerHeader = regexp.MustCompile(`Bearer\s(\S+)`)

func (s *Server) serveProfile(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET, HEAD")
		return
	}
	var tokens []string
	if m := bearerHeader.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		tokens = append(tokens, m[1])
	}
	if tok := r.URL.Query().Get("access_token"); tok != "" {
		tokens = append(tokens, tok)
	}
	switch len(tokens) {
	case 0:
		// No usable Bearer token (no Authorization header, a lowercase
		// "bearer", another scheme): FOSOAuthServerBundle's entry point
		// (OAuthEntryPoint::start) answers an OAuth2AuthenticateException,
		// with the same headers as the library's other 401s.
		authenticateError(w, http.StatusUnauthorized, "access_denied", "OAuth2 authentication required")
		return
	case 1:
	default:
		authenticateError(w, http.StatusBadRequest, "invalid_request",
			"Only one method may be used to authenticate at a time (Auth header, GET or POST).")
		return
	}

	s.mu.Lock()
	at := s.access[tokens[0]]
	now := s.opts.Now()
	var id int
	if at != nil {
		id = s.userIDs[at.username]
	}
	s.mu.Unlock()
	switch {
	case at == nil:
		authenticateError(w, http.StatusUnauthorized, "invalid_grant", "The access token provided is invalid.")
	case now.After(at.expires):
		authenticateError(w, http.StatusUnauthorized, "invalid_grant", "The access token provided has expired.")
	default:
		w.Header().Set("Cache-Control", "no-cache, private")
		writeJSON(w, http.StatusOK, struct {
			ID    int    `json:"id"`
			Email string `json:"email"`
		}{id, at.username})
	}
}

// authenticateError writes the library's OAuth2AuthenticateException.
func authenticateError(w http.ResponseWriter, status int, code, description string) {
	h := w.Header()
	h.Set("WWW-Authenticate", `Bearer realm="Service", error=`+strconv.Quote(code)+`, error_description=`+strconv.Quote(description))
	h.Set("Cache-Control", "no-store, private")
	h.Set("Pragma", "no-cache")
	writeJSON(w, status, oauthError{code, &description})
}

// ---- helpers ----

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}

func writeHTML(w http.ResponseWriter, status int, body string) {
	if body == "" {
		text := strconv.Itoa(status) + " " + http.StatusText(status)
		body = "<html><head><title>" + text + "</title></head><body><h1>" + text + "</h1></body></html>\n"
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write([]byte(body))
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
}
