package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/auditlog"
	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// Short tokens, so that several generations pass in well under a minute:
// the plugin hands a token out until it has min_ttl left, so a generation
// lasts about proxyTokenTTL - proxyMinTTL.
//
// min_ttl is 6 s rather than 4 s because of how Vault Proxy renews a cached
// lease (the api package's LifetimeWatcher): it gives up on a lease once a
// renewal returns a TTL of at most about 4 times its grace, which is 10 to
// 20% of the lease it first saw; and Vault's TTLs are whole seconds. A lease
// schedule that keeps one cached answer per token and still hands it out
// with at least min_ttl/2 left needs a lease of at least 2.5 s (so that a
// 1 s renewal ends it) and at most about 0.65 x min_ttl: no whole-second
// lease fits a min_ttl of 4 s. With 6 s, a lease of 3 s does.
const (
	proxyTokenTTL = 12 * time.Second
	proxyMinTTL   = 6 * time.Second
	proxyReaders  = 50
	proxyWindow   = 3 * proxyTokenTTL
)

// proxyPause is each reader's pause between two reads: an application that
// reads creds on every request, at about 50 requests a second per reader,
// without a trace log of hundreds of megabytes. ERMEO_PROXY_PAUSE (a Go
// duration) changes it: at 1ms the proxy lets concurrent misses through
// more often (docs/leases.md, Busy applications).
var proxyPause = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("ERMEO_PROXY_PAUSE")); err == nil && d >= 0 {
		return d
	}
	return 20 * time.Millisecond
}()

// proxyRead is one read of creds/app through the proxy by a reader.
type proxyRead struct {
	at        time.Time // when the answer came
	status    int
	err       string
	token     string
	leaseID   string
	lease     int  // lease_duration of the answer
	renewable bool // the answer's lease is renewable
	hit       bool // X-Cache: HIT
	age       int  // the Age header of a hit
	expiresAt time.Time
	expiresIn int64
	valid     bool      // the fake accepted the token when the answer came
	expires   time.Time // when the fake stops accepting it
}

// left is how long the token had left at the fake when the reader got it.
// (expires_at, truncated to the second and counted from when the plugin sent
// its grant, says up to a second less.)
func (r proxyRead) left() time.Duration { return r.expires.Sub(r.at) }

// TestProxyCachesCredsForBusyReaders runs a real `vault proxy` with the
// example configuration (examples/proxy/proxy.hcl, with the test's
// addresses and paths): it logs in with AppRole under the example policy,
// and 50 readers with no Vault token of their own read <mount>/creds/app
// through it continuously for three token lifetimes. The fake Ermeo issues
// 12 s tokens and the account's min_ttl is 4 s.
//
// It checks that every token a reader got was valid at the fake when the
// reader got it and had at least half of min_ttl left, and counts, from a
// file audit device on the server, how many creds reads reached the plugin
// and how many leases Vault created per token generation: the goal is at most
// 2 of each per generation, leaving out the leases Vault Proxy makes while it
// still renews another of the same generation (overlappingLeases), which
// only its uncoalesced concurrent misses start. It prints the figures and,
// from the proxy's trace log and the audit log, what the proxy did with each
// lease.
func TestProxyCachesCredsForBusyReaders(t *testing.T) {
	if vault == nil {
		t.Skip("e2e: " + skipReason)
	}
	bin, why := FindVault()
	if bin == "" {
		t.Skip("e2e: " + why)
	}
	ctx := context.Background()
	e := newEnv(t, fakeermeo.Options{AccessTokenTTL: proxyTokenTTL})
	e.configure()
	dir := t.TempDir()

	// A file audit device of this test's own: the server is shared, so
	// its entries are picked by path (and, for renewals, by the policy of
	// the proxy's token).
	auditDevice := "proxy-" + randomHex(4)
	auditFile := filepath.Join(dir, "audit.log")
	if err := EnableFileAudit(ctx, vault.Client, auditDevice, auditFile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vault.Client.Sys().DisableAudit(auditDevice) })

	e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword, "min_ttl": int(proxyMinTTL.Seconds())})
	role := newAppRole(t, e)
	writeFile(t, filepath.Join(dir, "role-id"), role.roleID)
	writeFile(t, filepath.Join(dir, "secret-id"), role.secretID)
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	cfgPath := filepath.Join(dir, "proxy.hcl")
	writeFile(t, cfgPath, exampleFile(t, "examples/proxy/proxy.hcl",
		`"https://vault.example.com:8200"`, `"`+vault.Addr+`"`,
		`"auth/approle"`, `"auth/`+role.mount+`"`,
		`"/etc/vault-proxy/role-id"`, `"`+filepath.Join(dir, "role-id")+`"`,
		`"/etc/vault-proxy/secret-id"`, `"`+filepath.Join(dir, "secret-id")+`"`,
		`"127.0.0.1:8100"`, `"`+listen+`"`))

	proxy := startProxy(t, bin, dir, cfgPath)
	defer proxy.stop()
	proxyURL := "http://" + listen
	hc := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 2 * proxyReaders, MaxIdleConnsPerHost: 2 * proxyReaders},
	}
	defer hc.CloseIdleConnections()
	waitProxyAuth(t, hc, proxy, proxyURL)
	credsPath := e.mount + "/creds/app"
	defer func() {
		if t.Failed() {
			t.Logf("vault proxy's lines about %s, its warnings and errors:\n%s", credsPath, proxyLogExcerpt(proxy.log(), credsPath, 80))
		}
	}()

	// The leases of creds/app, polled while the readers run: Vault revokes
	// an expired lease, so a list at the end would miss most of them.
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	leases := map[string]*leaseSeen{}
	prefix := credsPath + "/"
	started := time.Now()
	go func() {
		defer close(pollDone)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			pollLeases(prefix, leases)
			select {
			case <-stopPoll:
				return
			case <-tick.C:
			}
		}
	}()

	// The readers: no X-Vault-Token, the proxy adds its own.
	url := proxyURL + "/v1/" + credsPath
	perReader := make([][]proxyRead, proxyReaders)
	deadline := started.Add(proxyWindow)
	var wg sync.WaitGroup
	for i := range perReader {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for time.Now().Before(deadline) {
				perReader[i] = append(perReader[i], readThroughProxy(hc, url, e.fake))
				time.Sleep(proxyPause)
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(started)
	close(stopPoll)
	<-pollDone
	pollLeases(prefix, leases)
	proxy.stop()

	var reads []proxyRead
	for _, rs := range perReader {
		reads = append(reads, rs...)
	}
	sort.Slice(reads, func(i, j int) bool { return reads[i].at.Before(reads[j].at) })
	if len(reads) == 0 {
		t.Fatal("no reads")
	}

	gens, st := tallyProxyReads(reads)
	audit := parseProxyAudit(t, auditFile, credsPath, role.policy, started)
	audit.attribute(t, auditDevice, gens, leases)
	st.elapsed = elapsed
	st.pluginReads = len(audit.creds)
	st.leases = len(audit.leaseIDs)
	st.generations = len(gens)
	st.refreshes = e.fake.Counters().Grants["refresh_token"]["success"]
	st.renewals, st.renewalsFailed = audit.renewalCounts()
	if keep := os.Getenv("ERMEO_PROXY_LOG"); keep != "" {
		// The proxy's trace log outlives the test's temporary directory.
		if err := os.WriteFile(keep, []byte(proxy.log()), 0o600); err != nil {
			t.Errorf("ERMEO_PROXY_LOG: %v", err)
		}
	}
	pl := parseProxyLog(proxy.log(), credsPath)
	st.evictions = pl.count("evict")
	st.concurrentMisses = pl.concurrentMisses()
	st.overlappingIDs = overlappingLeases(gens, audit)
	st.overlapping = len(st.overlappingIDs)
	st.proxysIDs = proxysLeases(gens, audit, st.missRenewable)
	st.proxys = len(st.proxysIDs)

	fmt.Print(proxyReport(t.Name(), gens, audit, pl, leases, st, renewalRefusal(vault.Log(), prefix, started)))

	if st.failed > 0 {
		t.Errorf("%d reads through the proxy failed; the first: %s", st.failed, st.firstFailure)
	}
	if st.invalid > 0 {
		t.Errorf("%d reads got a token the fake did not accept", st.invalid)
	}
	if st.low > 0 {
		t.Errorf("%d reads got a token with less than half of min_ttl (%s) left", st.low, proxyMinTTL/2)
	}
	if st.generations < int(proxyWindow/proxyTokenTTL) {
		t.Errorf("the readers saw %d token generations in %s of %s tokens", st.generations, elapsed.Round(time.Second), proxyTokenTTL)
	}
	// Why there were more: the plugin's leases made the proxy drop its
	// answer more than once per token (evictions), or the proxy sent
	// concurrent misses to Vault instead of one. Those get a lease that is
	// not renewable (path_creds.go's credsLease), which the proxy passes
	// through: the one lease per miss that no schedule can prevent, and
	// the only ones left out. Every renewable lease counts, so that the
	// cascade (a superseded renewer evicting the next answer) counts too:
	// at most 2 per generation, in each generation.
	cause := fmt.Sprintf("the proxy evicted its answer %d times, refused renewals: %d, concurrent misses: %d, leases made while it renewed another of their generation: %d, not renewable answers to its concurrent misses (the proxy's): %d",
		st.evictions, st.renewalsFailed, st.concurrentMisses, st.overlapping, st.proxys)
	for _, g := range gens {
		own, renewable := g.leaseCounts(st)
		if own > 2 || renewable > 2 {
			t.Errorf("generation %d: %d leases, %d of them the plugin's (all but the not renewable answers to the proxy's concurrent misses), %d renewable: want at most 2 of each (%s)",
				g.n, len(g.leases), own, renewable, cause)
		}
	}
	if own := st.pluginReads - st.proxys; own > 2*st.generations {
		t.Errorf("%d creds reads reached the plugin for %d generations (%d leaving out the proxy's concurrent misses): more than 2 per generation (%s)",
			st.pluginReads, st.generations, own, cause)
	}
	// Each of the proxy's leases starts with a miss the proxy did not
	// coalesce: if its log shows fewer, something else made them, and the
	// test cannot tell the plugin is not the cause.
	if st.proxys > st.concurrentMisses {
		t.Errorf("%d leases that are not renewable were made within %s of a renewable lease of their generation, but the proxy's log shows only %d concurrent misses that would explain them (%s)",
			st.proxys, proxyMissSpan, st.concurrentMisses, cause)
	}
}

// leaseCounts are the generation's leases that are the plugin's (all but
// the proxy's, proxysLeases) and those that were renewable.
func (g *proxyGen) leaseCounts(st proxyStats) (own, renewable int) {
	for id := range g.leases {
		if !st.proxysIDs[id] {
			own++
		}
		if r, ok := st.missRenewable[id]; r || !ok {
			renewable++
		}
	}
	return own, renewable
}

// proxysLeases are the leases that are the proxy's own: not renewable, and
// made within proxyMissSpan of a renewable lease of the same generation. The
// plugin answers so a read by the proxy's token within 2 s of the renewable
// lease it gave it (path_creds.go's credsLease), which only a miss its
// in-flight guard let through makes; the proxy passes such an answer through
// without caching or renewing it. The audit log may list one before the
// renewable lease: Vault registers the leases of concurrent reads in any
// order. A renewable lease, or one whose answer no reader reported, is never
// the proxy's.
func proxysLeases(gens []*proxyGen, a *proxyAudit, renewable map[string]bool) map[string]bool {
	byHash := gensByHash(gens)
	renewableAt := map[*proxyGen][]time.Time{}
	for _, c := range a.creds {
		if g := byHash[c.tokenHash]; g != nil && c.leaseID != "" && renewable[c.leaseID] {
			renewableAt[g] = append(renewableAt[g], c.at)
		}
	}
	out := map[string]bool{}
	for _, c := range a.creds {
		g := byHash[c.tokenHash]
		if r, ok := renewable[c.leaseID]; g == nil || c.leaseID == "" || !ok || r {
			continue
		}
		for _, at := range renewableAt[g] {
			if d := c.at.Sub(at); d > -proxyMissSpan && d < proxyMissSpan {
				out[c.leaseID] = true
				break
			}
		}
	}
	return out
}

// gensByHash names each generation by its token's HMAC in the audit log.
func gensByHash(gens []*proxyGen) map[string]*proxyGen {
	byHash := map[string]*proxyGen{}
	for _, g := range gens {
		byHash[g.hash] = g
	}
	return byHash
}

// proxyMissSpan is how far from the renewable lease a lease that is not
// renewable may be made and still be counted as the proxy's: the plugin's 2 s,
// and half a second for the audit log's order.
const proxyMissSpan = 2500 * time.Millisecond

// overlappingLeases are the leases of creds/app created while the proxy
// was still renewing another lease of the same token generation. With the
// plugin's schedule, a correct cache renews one lease per generation: it
// evicts its answer only when that lease's renewer lets go, after the
// token's usable end, and the next read gets a new token. Vault Proxy 1.21
// makes more in two ways (command/agentproxyshared/cache/lease_cache.go):
// its in-flight guard can let concurrent misses through, each of whose
// answers it caches and renews under the one index ID of the request; and
// then each of those renewers, when it lets go, evicts whatever answer that
// ID holds, the newer generation's included, so that the next read makes
// another lease of that generation, and so on.
func overlappingLeases(gens []*proxyGen, a *proxyAudit) map[string]bool {
	lastRenewal := map[string]time.Time{}
	for _, r := range a.renewals {
		if r.err == "" && r.leaseID != "" && r.at.After(lastRenewal[r.leaseID]) {
			lastRenewal[r.leaseID] = r.at
		}
	}
	byHash := gensByHash(gens)
	type created struct {
		id string
		at time.Time
	}
	perGen := map[*proxyGen][]created{}
	for _, c := range a.creds {
		if g := byHash[c.tokenHash]; g != nil && c.leaseID != "" {
			perGen[g] = append(perGen[g], created{c.leaseID, c.at})
		}
	}
	out := map[string]bool{}
	for _, ls := range perGen {
		sort.Slice(ls, func(i, j int) bool { return ls[i].at.Before(ls[j].at) })
		for i, l := range ls {
			for _, earlier := range ls[:i] {
				if lastRenewal[earlier.id].After(l.at) {
					out[l.id] = true
					break
				}
			}
		}
	}
	return out
}

// readThroughProxy reads creds once through the proxy, without a Vault
// token, and asks the fake whether the token it got is valid.
func readThroughProxy(hc *http.Client, url string, fake *fakeermeo.Server) proxyRead {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return proxyRead{at: time.Now(), err: err.Error()}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return proxyRead{at: time.Now(), err: err.Error()}
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	r := proxyRead{at: time.Now(), status: resp.StatusCode, hit: resp.Header.Get("X-Cache") == "HIT"}
	fmt.Sscan(resp.Header.Get("Age"), &r.age)
	if err != nil {
		r.err = err.Error()
		return r
	}
	var answer struct {
		LeaseID       string   `json:"lease_id"`
		LeaseDuration int      `json:"lease_duration"`
		Renewable     bool     `json:"renewable"`
		Errors        []string `json:"errors"`
		Data          struct {
			AccessToken string `json:"access_token"`
			ExpiresAt   string `json:"expires_at"`
			ExpiresIn   int64  `json:"expires_in"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		r.err = err.Error()
		return r
	}
	if resp.StatusCode != http.StatusOK {
		r.err = strings.Join(answer.Errors, "; ")
		return r
	}
	r.token, r.leaseID, r.lease, r.renewable = answer.Data.AccessToken, answer.LeaseID, answer.LeaseDuration, answer.Renewable
	r.expiresIn = answer.Data.ExpiresIn
	r.expiresAt, _ = time.Parse(time.RFC3339, answer.Data.ExpiresAt)
	r.valid = fake.AccessTokenValid(r.token)
	r.expires, _ = fake.AccessTokenExpiresAt(r.token)
	return r
}

// startProxy starts `vault proxy` with the config at cfgPath (see
// startVaultCommand).
func startProxy(t *testing.T, bin, dir, cfgPath string) *agentProc {
	t.Helper()
	return startVaultCommand(t, bin, "proxy", dir, cfgPath)
}

// waitProxyAuth waits until the proxy answers a request without a token
// with its auto-auth token: token/lookup-self, which it passes through.
func waitProxyAuth(t *testing.T, hc *http.Client, p *agentProc, proxyURL string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.exited() {
			t.Fatalf("vault proxy exited:\n%s", tail(p.log(), 40))
		}
		resp, err := hc.Get(proxyURL + "/v1/auth/token/lookup-self")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("vault proxy did not answer with its auto-auth token in 30 s (last: %v %v):\n%s", resp, err, tail(p.log(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// leaseSeen is what polling sys/leases/lookup saw of one lease of creds/app.
type leaseSeen struct {
	issued time.Time
	// expires maps each last_renewal seen (zero before the first
	// renewal) to the expire_time it set.
	expires map[time.Time]time.Time
}

// pollLeases records the leases under prefix and their renewals.
func pollLeases(prefix string, seen map[string]*leaseSeen) {
	for _, l := range lookupLeases(prefix, nil) {
		ls := seen[l.id]
		if ls == nil {
			ls = &leaseSeen{issued: l.issued, expires: map[time.Time]time.Time{}}
			seen[l.id] = ls
		}
		ls.expires[l.renewed] = l.expires
	}
}

// proxyGen is one token generation, as the readers saw it.
type proxyGen struct {
	n                   int
	token, hash         string // hash: its HMAC in the audit log
	firstSeen, lastSeen time.Time
	expiresAt           time.Time
	reads, hits         int
	invalid, low        int
	minLeft             time.Duration // at the fake
	minLeftExpiresAt    time.Duration // by expires_at
	pluginReads         int
	leases              map[string]bool
	renewals, failed    int
	expires             time.Time // at the fake
}

// proxyStats are the test's figures.
type proxyStats struct {
	elapsed                  time.Duration
	served, hits, failed     int
	invalid, low             int
	firstFailure             string
	staleExpiresIn           int
	maxStale                 time.Duration
	pluginReads, leases      int
	generations, refreshes   int
	renewals, renewalsFailed int
	evictions                int
	// concurrentMisses: requests the proxy forwarded with no eviction
	// since the one before (its in-flight guard let them through);
	// overlapping: leases created while the proxy renewed another of the
	// same generation (overlappingLeases).
	concurrentMisses, overlapping int
	overlappingIDs                map[string]bool
	// proxys: the leases that are the proxy's own, not the plugin's
	// (proxysLeases).
	proxys    int
	proxysIDs map[string]bool
	// missLease is the lease_duration of the answer of each lease, and
	// missRenewable whether it was renewable, as the reader whose read
	// reached Vault got it.
	missLease     map[string]int
	missRenewable map[string]bool
}

// tallyProxyReads groups the readers' reads by token, in the order the
// readers first got each token.
func tallyProxyReads(reads []proxyRead) ([]*proxyGen, proxyStats) {
	st := proxyStats{missLease: map[string]int{}, missRenewable: map[string]bool{}}
	var gens []*proxyGen
	byToken := map[string]*proxyGen{}
	for _, r := range reads {
		if r.status != http.StatusOK || r.token == "" {
			st.failed++
			if st.firstFailure == "" {
				st.firstFailure = fmt.Sprintf("%s: status %d %s", r.at.Format("15:04:05.000"), r.status, r.err)
			}
			continue
		}
		st.served++
		g := byToken[r.token]
		if g == nil {
			g = &proxyGen{n: len(gens) + 1, token: r.token, firstSeen: r.at, expiresAt: r.expiresAt,
				minLeft: r.left(), minLeftExpiresAt: r.expiresAt.Sub(r.at), leases: map[string]bool{}, expires: r.expires}
			gens = append(gens, g)
			byToken[r.token] = g
		}
		g.lastSeen = r.at
		g.reads++
		if r.hit {
			st.hits++
			g.hits++
		} else if _, ok := st.missLease[r.leaseID]; !ok {
			st.missLease[r.leaseID] = r.lease
			st.missRenewable[r.leaseID] = r.renewable
		}
		if !r.valid {
			st.invalid++
			g.invalid++
		}
		g.minLeft = min(g.minLeft, r.left())
		g.minLeftExpiresAt = min(g.minLeftExpiresAt, r.expiresAt.Sub(r.at))
		if r.left() < proxyMinTTL/2 {
			st.low++
			g.low++
		}
		// expires_in is counted from when the plugin answered: a cached
		// answer keeps it while the token ages.
		if stale := time.Duration(r.expiresIn)*time.Second - r.expiresAt.Sub(r.at); stale > time.Second {
			st.staleExpiresIn++
			st.maxStale = max(st.maxStale, stale)
		}
	}
	return gens, st
}

// auditCreds is one creds read that reached the plugin, and an auditRenewal
// one renewal of a creds lease by the proxy, from the audit log's responses.
type auditCreds struct {
	at                 time.Time
	leaseID, tokenHash string
	err                string
}

type auditRenewal struct {
	at                 time.Time
	leaseID, leaseHash string // leaseID: of a successful renewal only
	err                string
}

type proxyAudit struct {
	creds    []auditCreds
	renewals []auditRenewal
	leaseIDs map[string]bool
}

// parseProxyAudit reads the audit log's responses to the reads of credsPath
// and to the renewals made with a token of policy, from since on.
func parseProxyAudit(t *testing.T, file, credsPath, policy string, since time.Time) *proxyAudit {
	t.Helper()
	entries, err := auditlog.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	a := &proxyAudit{leaseIDs: map[string]bool{}}
	for _, e := range entries {
		if e.Type != "response" || e.Time.Before(since) {
			continue
		}
		switch {
		case e.Path == credsPath && e.Operation == "read":
			a.creds = append(a.creds, auditCreds{at: e.Time, leaseID: e.LeaseID, tokenHash: e.AccessToken, err: e.Error})
			if e.LeaseID != "" {
				a.leaseIDs[e.LeaseID] = true
			}
		case (e.Path == "sys/leases/renew" || e.Path == "sys/renew") && hasString(e.Policies, policy):
			a.renewals = append(a.renewals, auditRenewal{at: e.Time, leaseID: e.LeaseID, leaseHash: e.RenewOf, err: e.Error})
		}
	}
	return a
}

func hasString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// attribute gives each generation its plugin reads, leases and renewals:
// the audit device's HMAC of a token or a lease id (sys/audit-hash) names it
// in the audit log. leases adds the lease ids that polling saw.
func (a *proxyAudit) attribute(t *testing.T, device string, gens []*proxyGen, leases map[string]*leaseSeen) {
	t.Helper()
	sys := vault.Client.Sys()
	byHash := map[string]*proxyGen{}
	for _, g := range gens {
		h, err := sys.AuditHash(device, g.token)
		if err != nil {
			t.Fatalf("sys/audit-hash: %v", err)
		}
		g.hash = h
		byHash[h] = g
	}
	leaseGen := map[string]*proxyGen{}
	for _, c := range a.creds {
		if g := byHash[c.tokenHash]; g != nil {
			g.pluginReads++
			if c.leaseID != "" {
				g.leases[c.leaseID] = true
				leaseGen[c.leaseID] = g
			}
		}
	}
	for id := range leases {
		a.leaseIDs[id] = true
	}
	leaseByHash := map[string]string{}
	for id := range a.leaseIDs {
		h, err := sys.AuditHash(device, id)
		if err != nil {
			t.Fatalf("sys/audit-hash: %v", err)
		}
		leaseByHash[h] = id
	}
	for i := range a.renewals {
		r := &a.renewals[i]
		if r.leaseID == "" {
			r.leaseID = leaseByHash[r.leaseHash]
		}
		if g := leaseGen[r.leaseID]; g != nil {
			g.renewals++
			if r.err != "" {
				g.failed++
			}
		}
	}
}

func (a *proxyAudit) renewalCounts() (all, failed int) {
	for _, r := range a.renewals {
		all++
		if r.err != "" {
			failed++
		}
	}
	return all, failed
}

// proxyEvent is one line of the proxy's trace log about the cached creds.
type proxyEvent struct {
	at   time.Time
	kind string // "forward", "store", "renewed", "renew-failed", "halted", "evict", "pass-through"
	line string
}

type proxyLog struct{ events []proxyEvent }

func (p *proxyLog) count(kind string) int {
	n := 0
	for _, e := range p.events {
		if e.kind == kind {
			n++
		}
	}
	return n
}

// concurrentMisses counts the requests for creds the proxy forwarded to
// Vault with no eviction since the one it forwarded before: misses its
// in-flight guard did not hold back, each its own read at the plugin.
func (p *proxyLog) concurrentMisses() int {
	n, forwarded, evicted := 0, false, false
	for _, e := range p.events {
		switch e.kind {
		case "evict":
			evicted = true
		case "forward":
			if forwarded && !evicted {
				n++
			}
			forwarded, evicted = true, false
		}
	}
	return n
}

// proxyLogKinds are the messages of Vault Proxy's lease cache
// (command/agentproxyshared/cache/lease_cache.go, Vault 1.21) that say what
// it did with a cached lease.
var proxyLogKinds = []struct{ msg, kind string }{
	{"forwarding request from cache", "forward"},
	{"storing dynamic secret response into the cache", "store"},
	{"pass-through response; secret not renewable", "pass-through"},
	{"cache.leasecache: secret renewed", "renewed"},
	{"cache.leasecache: failed to renew secret", "renew-failed"},
	{"renewal halted; evicting from cache", "halted"},
	{"evicting index from cache", "evict"},
}

// parseProxyLog picks the proxy's lines about what it did with the cached
// answers of credsPath.
func parseProxyLog(log, credsPath string) *proxyLog {
	p := &proxyLog{}
	for _, line := range strings.Split(log, "\n") {
		m := agentLogTime.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			continue
		}
		for _, k := range proxyLogKinds {
			// "failed to renew secret" names no path; the proxy
			// caches nothing else.
			if strings.Contains(line, k.msg) && (k.kind == "renew-failed" || strings.Contains(line, credsPath)) {
				p.events = append(p.events, proxyEvent{at: at, kind: k.kind, line: line})
				break
			}
		}
	}
	return p
}

// proxyLogExcerpt is the last n of the proxy's lines about what it did
// with the cached creds (proxyLogKinds), its warnings and its errors, for a
// failed test.
func proxyLogExcerpt(log, credsPath string, n int) string {
	var keep []string
	for _, line := range strings.Split(log, "\n") {
		keepIt := strings.Contains(line, "[WARN]") || strings.Contains(line, "[ERROR]")
		for _, k := range proxyLogKinds {
			keepIt = keepIt || strings.Contains(line, k.msg) && (k.kind == "renew-failed" || strings.Contains(line, credsPath))
		}
		if keepIt {
			keep = append(keep, line)
		}
	}
	return tail(strings.Join(keep, "\n"), n)
}

// proxyLease is what happened to one lease of creds/app: the read that
// created it, its renewals, and the proxy's eviction of the cached answer.
type proxyLease struct {
	id      string
	gen     *proxyGen
	read    time.Time
	lease   int // lease_duration of the answer
	renewed []string
	refused int
	// firstRefused, lastRefused: the span of the refused renewals.
	firstRefused, lastRefused time.Time
	halted, evicted           time.Time
	renewFailedLogged         bool
}

// proxyLeases puts the audit log's reads and renewals and the proxy's log
// lines together, lease by lease: the proxy caches one answer at a time, so
// each of its lines is about the lease of the last read before it.
func proxyLeases(gens []*proxyGen, a *proxyAudit, pl *proxyLog, leases map[string]*leaseSeen, missLease map[string]int) []*proxyLease {
	byHash := gensByHash(gens)
	var out []*proxyLease
	byID := map[string]*proxyLease{}
	for _, c := range a.creds {
		if c.leaseID == "" {
			continue
		}
		l := &proxyLease{id: c.leaseID, gen: byHash[c.tokenHash], read: c.at, lease: missLease[c.leaseID]}
		out = append(out, l)
		byID[c.leaseID] = l
	}
	sort.Slice(out, func(i, j int) bool { return out[i].read.Before(out[j].read) })
	for _, r := range a.renewals {
		l := byID[r.leaseID]
		if l == nil {
			continue
		}
		if r.err != "" {
			if l.refused == 0 {
				l.firstRefused = r.at
			}
			l.refused++
			l.lastRefused = r.at
			continue
		}
		what := r.at.Format("05.000")
		if ls := leases[r.leaseID]; ls != nil {
			for renewed, exp := range ls.expires {
				if d := renewed.Sub(r.at); d > -time.Second && d < time.Second && !renewed.IsZero() {
					what += fmt.Sprintf(" ttl %.0fs", exp.Sub(renewed).Seconds())
				}
			}
		}
		l.renewed = append(l.renewed, what)
	}
	for _, ev := range pl.events {
		var l *proxyLease
		for _, x := range out {
			if !x.read.After(ev.at) {
				l = x
			}
		}
		if l == nil {
			continue
		}
		switch ev.kind {
		case "halted":
			if l.halted.IsZero() {
				l.halted = ev.at
			}
		case "evict":
			if l.evicted.IsZero() {
				l.evicted = ev.at
			}
		case "renew-failed":
			l.renewFailedLogged = true
		}
	}
	return out
}

// proxyReport prints each generation and its leases (what reached the
// plugin and what the proxy did with each lease), and the figures.
func proxyReport(name string, gens []*proxyGen, a *proxyAudit, pl *proxyLog, leases map[string]*leaseSeen, st proxyStats, refusal string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n=== %s: vault proxy, %d readers (a read every %s each), tokens of %s, min_ttl %s\n",
		name, proxyReaders, proxyPause, proxyTokenTTL, proxyMinTTL)
	short := func(id string) string {
		id = id[strings.LastIndex(id, "/")+1:]
		return id[:min(6, len(id))]
	}
	all := proxyLeases(gens, a, pl, leases, st.missLease)
	for _, g := range gens {
		issued := g.expires.Add(-proxyTokenTTL)
		own, renewable := g.leaseCounts(st)
		fmt.Fprintf(&b, "generation %d (at the fake until %s): readers got it from age %.1fs to %.1fs, %d reads (%d hits), %d creds reads at the plugin, %d leases (%d renewable; %d the plugin's, %d the proxy's concurrent misses), %d renewals (%d refused); least life left %.1fs at the fake (%.1fs by expires_at); %d invalid, %d under min_ttl/2\n",
			g.n, g.expires.Format("15:04:05.000"), g.firstSeen.Sub(issued).Seconds(), g.lastSeen.Sub(issued).Seconds(),
			g.reads, g.hits, g.pluginReads, len(g.leases), renewable, own, len(g.leases)-own, g.renewals, g.failed, g.minLeft.Seconds(), g.minLeftExpiresAt.Seconds(), g.invalid, g.low)
		for _, l := range all {
			if l.gen != g {
				continue
			}
			left := func(t time.Time) string { return fmt.Sprintf("%.1fs left", g.expires.Sub(t).Seconds()) }
			fmt.Fprintf(&b, "    lease %s: read at %s (%s), lease_duration %ds", short(l.id), l.read.Format("15:04:05.000"), left(l.read), l.lease)
			if len(l.renewed) > 0 {
				fmt.Fprintf(&b, "; renewed at %s", strings.Join(l.renewed, ", "))
			}
			if l.refused > 0 {
				span := l.lastRefused.Sub(l.firstRefused)
				fmt.Fprintf(&b, "; %d renewals refused from %s (%s) to %s, %.0f a second", l.refused,
					l.firstRefused.Format("05.000"), left(l.firstRefused), l.lastRefused.Format("05.000"), float64(l.refused)/max(span.Seconds(), 0.001))
			}
			if !l.halted.IsZero() {
				fmt.Fprintf(&b, "; proxy: renewal halted with no error at %s", l.halted.Format("05.000"))
			}
			if !l.evicted.IsZero() {
				fmt.Fprintf(&b, "; evicted at %s (%s), cached for %.1fs", l.evicted.Format("05.000"), left(l.evicted), l.evicted.Sub(l.read).Seconds())
			}
			if r, ok := st.missRenewable[l.id]; ok && !r {
				b.WriteString("; not renewable")
			}
			if st.overlappingIDs[l.id] {
				b.WriteString("; made while the proxy renewed another lease of this generation")
			}
			b.WriteString("\n")
		}
	}
	nG := max(st.generations, 1)
	fmt.Fprintf(&b, "reads: %d served (%d cache hits, %d misses), %d failed; renewals: %d (%d refused); refreshes at the fake: %d\n",
		st.served, st.hits, st.served-st.hits, st.failed, st.renewals, st.renewalsFailed, st.refreshes)
	fmt.Fprintf(&b, "proxy's log: %d creds requests forwarded to Vault, %d answers stored, %d passed through (not renewable), %d evictions, %d renewals halted with no error, %d failed-renewal lines\n",
		pl.count("forward"), pl.count("store"), pl.count("pass-through"), st.evictions, pl.count("halted"), pl.count("renew-failed"))
	maxOwn, maxRenewable, maxAll := 0, 0, 0
	for _, g := range gens {
		own, renewable := g.leaseCounts(st)
		maxOwn, maxRenewable, maxAll = max(maxOwn, own), max(maxRenewable, renewable), max(maxAll, len(g.leases))
	}
	fmt.Fprintf(&b, "proxy: %d concurrent misses its in-flight guard let through to Vault; %d leases made while it renewed another of the same generation; %d not renewable answers to its concurrent misses (the proxy's); the plugin's leases (all the others, the cascade's included): %d, %.1f per generation, at most %d in one (all leases: at most %d in one; renewable: at most %d in one)\n",
		st.concurrentMisses, st.overlapping, st.proxys, st.leases-st.proxys, float64(st.leases-st.proxys)/float64(nG), maxOwn, maxAll, maxRenewable)
	if refusal != "" {
		fmt.Fprintf(&b, "first refused renewal in vault's log: %s\n", refusal)
	}
	if st.staleExpiresIn > 0 {
		fmt.Fprintf(&b, "expires_in: %d answers (cache hits) said more than a second more than expires_at, up to %.1fs: a cached answer keeps the expires_in of when the plugin answered\n",
			st.staleExpiresIn, st.maxStale.Seconds())
	}
	fmt.Fprintf(&b, "proxy: %d readers for %.0fs (%.0f token lifetimes of %s): %d reads served, %d creds reads reached the plugin, %d leases, %d generations (%.1f reads and %.1f leases per generation), %d invalid, %d with less than half of min_ttl\n",
		proxyReaders, st.elapsed.Seconds(), st.elapsed.Seconds()/proxyTokenTTL.Seconds(), proxyTokenTTL,
		st.served, st.pluginReads, st.leases, st.generations,
		float64(st.pluginReads)/float64(nG), float64(st.leases)/float64(nG), st.invalid, st.low)
	return b.String()
}

// renewalRefusal is Vault's first error line about a renewal of a lease
// under prefix, from since on: the plugin's message if it was the plugin's
// refusal, or "".
func renewalRefusal(log, prefix string, since time.Time) string {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "[ERROR]") || !strings.Contains(line, "renew") || !strings.Contains(line, prefix) {
			continue
		}
		if m := agentLogTime.FindStringSubmatch(line); m == nil {
			continue
		} else if at, err := time.Parse(time.RFC3339Nano, m[1]); err != nil || at.Before(since) {
			continue
		}
		const key = `\"error\":\"`
		if i := strings.Index(line, key); i >= 0 {
			msg := line[i+len(key):]
			if j := strings.Index(msg, `\"`); j >= 0 {
				msg = msg[:j]
			}
			return "the plugin: " + msg
		}
		if i := strings.Index(line, "[ERROR]"); i >= 0 {
			line = line[i:]
		}
		return truncateLine(line, 300)
	}
	return ""
}
