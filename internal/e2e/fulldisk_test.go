package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The full-disk test's shape.
const (
	// fullDiskSize is the tmpfs under the Raft directory. Vault's init,
	// unseal and the plugin's mount take about 150 KB of it, but each
	// refresh here writes two 16 KB entries to Raft's log (which a single
	// node does not compact before 8,192 entries) and to its database, in
	// pages that bbolt does not always reuse, and across the step-downs
	// and the restart both of bbolt's files (raft.db and vault.db, sparse
	// files of 16 MB each) came to occupy all of their 16 MB on the tmpfs:
	// with 2, 8 and 32 MB the disk was full at the end with the filler
	// removed. 64 MB leaves room for the whole test, and fills (in memory)
	// in a few tens of milliseconds.
	fullDiskSize = 64 << 20
	// fullDiskTokenBytes: access tokens of 16 KB make each account write
	// span several storage pages, so that a write on a full disk cannot
	// fit in pages that the Raft log's database (bbolt) freed before.
	fullDiskTokenBytes = 16 << 10
	fullDiskTokenTTL   = 6 * time.Second
	fullDiskMinTTL     = "2s"
	fullDiskReaders    = 4
	// fullDiskAttempts bounds the fills: a write on a full disk may still
	// succeed in pages the database had free, and the next write is then
	// the one refused.
	fullDiskAttempts = 16
)

var fullDiskAccounts = []string{"app", "other"}

// What the plugin's logs and answers say, as the test reads them.
const (
	msgIntentRefused = "could not record the rotation before sending it"
	msgPairRefused   = "storage refused a refreshed token pair"
	msgPairStored    = "stored the refreshed token pair"
	msgVaultStepDown = "leadership lost, stopping active operation"
	msgVaultPanic    = "panic: "
)

// TestFullDisk runs a single-node Raft Vault whose Raft directory is a small
// tmpfs, with readers reading steadily and tokens of a few seconds, and
// fills the disk so that a refresh falls into it: (a) before a refresh is
// due, so that its intent record is refused and nothing may be sent; (b)
// while Ermeo holds a refresh's answer, so that the new pair's write is
// refused and must not be lost; then (c) frees it for good and restarts the
// vault process on the same disk. Nothing may be lost or spent twice.
func TestFullDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e full disk: skipped with -short (it starts a Raft Vault of its own)")
	}
	if os.Geteuid() != 0 {
		t.Skip("e2e full disk: needs root, to mount a tmpfs")
	}
	bin, why := FindVault()
	if bin == "" {
		t.Skip("e2e full disk: " + why)
	}
	begin := time.Now()
	work := t.TempDir()
	disk, err := MountSmallDisk(filepath.Join(work, "node1", "raft"), fullDiskSize)
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the cluster's Stop, so run after it; t.TempDir's
	// removal, registered first, runs last, on an unmounted directory.
	t.Cleanup(func() {
		if err := disk.Unmount(); err != nil {
			t.Errorf("unmounting the small disk: %v", err)
		}
		if mounts, _ := os.ReadFile("/proc/self/mounts"); strings.Contains(string(mounts), disk.Dir) {
			t.Errorf("%s is still mounted", disk.Dir)
		}
	})
	pluginBin, sha, err := BuildPlugin(work, PluginVersion)
	if err != nil {
		t.Fatal(err)
	}
	fake := fakeermeo.New(fakeermeo.Options{AccessTokenTTL: fullDiskTokenTTL, AccessTokenBytes: fullDiskTokenBytes})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	t.Cleanup(fake.ReleaseHeld) // never leave a refresh held
	c, err := StartCluster(ClusterOptions{
		VaultBin: bin, PluginBin: pluginBin, PluginSHA: sha, PluginVersion: PluginVersion,
		WorkDir: work, Nodes: 1, Timeout: time.Minute, RaftPerformanceMultiplier: 1, LogLevel: "info",
	})
	if err != nil {
		t.Fatal(err)
	}
	node := c.Nodes[0]
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("--- last lines of %s ---\n%s", node.LogPath, lastLines(node.Log(), 60))
		}
	})
	used, _ := disk.Used()
	fmt.Printf("full disk: %s, single-node Raft on a %d KB tmpfs (%d KB used after init and mount), up in %s\n",
		c.Version, fullDiskSize>>10, used>>10, time.Since(begin).Round(time.Millisecond))

	admin := c.Client(0)
	mount := c.Mount + "/"
	// No leases: a read writes nothing to storage, so that the writes on the
	// full disk are the plugin's own refreshes, and the test can tell which
	// one the disk refused.
	if _, err := admin.Logical().Write(mount+"config", map[string]any{
		"api_url": srv.URL, "client_id": testClientID, "client_secret": testClientSecret, "default_lease": false,
	}); err != nil {
		t.Fatalf("config: %v", err)
	}
	for _, name := range fullDiskAccounts {
		if _, err := admin.Logical().Write(mount+"accounts/"+name, map[string]any{
			"username": testUser, "password": testPassword, "store_password": true, "min_ttl": fullDiskMinTTL,
		}); err != nil {
			t.Fatalf("accounts/%s: %v", name, err)
		}
	}

	d := &diskRun{t: t, c: c, disk: disk, fake: fake, mount: mount, reads: map[string]*stepReads{}}
	stop := d.startReaders()
	defer stop()

	// (a) The intent record is refused: the disk fills just after a
	// refresh of app, so that the next one falls due on the full disk.
	// (b) The new pair is refused: the disk fills while Ermeo holds the
	// answer of a refresh of app whose intent record is stored.
	// A write on a full disk may still fit in pages that the database
	// (bbolt) had free, and the next write is then the one refused: the
	// two are tried in turn until each has been seen.
	var sawIntent, sawPair bool
	for i := 1; i <= fullDiskAttempts && !(sawIntent && sawPair); i++ {
		hold := i%2 == 0
		if sawIntent != sawPair {
			hold = sawIntent
		}
		row := d.episode(fmt.Sprintf("%d", i), hold)
		sawIntent = sawIntent || row.refused == "intent" && row.appSent == 0
		sawPair = sawPair || hold && row.refused == "pair"
	}
	// (c) Space for good: the vault process is restarted on the same
	// disk, and every account must be usable with the chain it stored.
	d.restartAndCheck()
	stop()
	d.print()
	used, _ = disk.Used()
	fmt.Printf("full disk: %d KB of the %d KB used at the end, filler removed:%s\n", used>>10, fullDiskSize>>10, diskFiles(disk.Dir))
	d.check()
	fmt.Printf("full disk: done in %s\n", time.Since(begin).Round(time.Millisecond))
}

// diskRun is the state of TestFullDisk.
type diskRun struct {
	t     *testing.T
	c     *Cluster
	disk  *SmallDisk
	fake  *fakeermeo.Server
	mount string

	mu    sync.Mutex
	step  string
	reads map[string]*stepReads
	rows  []*diskRow
	// panics is how many Vault panics the log held at the last recovery.
	panics int
	// generationSeen is the generation generation last read.
	generationSeen int64
}

// stepReads is what the readers got during one step.
type stepReads struct {
	valid, stale, invalid int
	errs                  map[string]int
	intentRefused         map[string]int // per account, answers naming its refused intent record
}

// diskRow is one line of the printed table.
type diskRow struct {
	step     string
	filled   string // what was full when
	refused  string // the write the disk refused: intent, pair, or another one
	requests int    // refresh_token requests at the fake while the disk was full
	appSent  int    // of which presenting the refresh token (when the disk filled) of refusedAccount (-1: not known)
	// refusedAccount is the account whose intent record was refused, or app.
	refusedAccount string
	vault          string // what Vault did
	storage        string // what storage held after recovery
	plugin         string // what the plugin did with the pair
	// for the checks
	wantGen   any // the generation the held rotate answered with
	storedGen any
	inFlight  any
}

func (d *diskRun) setStep(s string) {
	d.mu.Lock()
	d.step = s
	if d.reads[s] == nil {
		d.reads[s] = &stepReads{errs: map[string]int{}, intentRefused: map[string]int{}}
	}
	d.mu.Unlock()
}

// startReaders starts readers that read every account's creds in turn,
// steadily, until the returned function is called.
func (d *diskRun) startReaders() func() {
	d.setStep("start")
	done := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < fullDiskReaders; r++ {
		client, err := d.c.NewClient(0)
		if err != nil {
			d.t.Fatal(err)
		}
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			for i := r; ; i++ {
				select {
				case <-done:
					return
				case <-time.After(100 * time.Millisecond): // pacing, not an assertion
				}
				name := fullDiskAccounts[i%len(fullDiskAccounts)]
				s, err := client.Logical().Read(d.mount + "creds/" + name)
				d.note(name, s, err)
			}
		}(r)
	}
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

func (d *diskRun) note(name string, s *api.Secret, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sr := d.reads[d.step]
	if err == nil && s == nil {
		err = errors.New("empty answer")
	}
	if err != nil {
		sr.errs[errorKind(err)]++
		if strings.Contains(err.Error(), msgIntentRefused) {
			sr.intentRefused[name]++
		}
		return
	}
	tok, _ := s.Data["access_token"].(string)
	switch {
	case !d.fake.AccessTokenValid(tok):
		sr.invalid++
	case len(s.Warnings) > 0:
		sr.stale++
		if strings.Contains(strings.Join(s.Warnings, " "), msgIntentRefused) {
			sr.intentRefused[name]++
		}
	default:
		sr.valid++
	}
}

// intentRefusals is how many answers of the step, for any account, named a
// refused intent record; with the account named most.
func (d *diskRun) intentRefusals(step string) (int, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, most, account := 0, 0, ""
	for _, name := range fullDiskAccounts {
		k := d.reads[step].intentRefused[name]
		n += k
		if k > most {
			most, account = k, name
		}
	}
	return n, account
}

// generation is the generation of an account's chain, as read now (a read
// that writes nothing), or -1.
func (d *diskRun) generation(name string) int64 {
	s, err := d.c.Client(0).Logical().Read(d.mount + "accounts/" + name)
	if err != nil || s == nil {
		return -1
	}
	g, _ := s.Data["generation"].(json.Number).Int64()
	d.generationSeen = g
	return g
}

func (d *diskRun) logCount(s string) int { return strings.Count(d.c.Nodes[0].Log(), s) }

func (d *diskRun) refreshRequests() int {
	n := 0
	for _, v := range d.fake.Counters().Grants["refresh_token"] {
		n += v
	}
	return n
}

func (d *diskRun) refreshSuccesses() int { return d.fake.Counters().Grants["refresh_token"]["success"] }

// pollUntil polls cond until it holds or d passes; it reports whether it held.
func pollUntil(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// episode drives one refresh into the full disk. Without hold, the disk is
// filled just after a refresh of app, and the readers' next refresh falls
// due on it; with hold, Ermeo holds the answer of an operator's rotate of
// app (its intent record is stored) while the disk is filled, then lets it
// go. The episode ends when the disk refused a write (or Vault died), and
// the space is freed and Vault waited for.
func (d *diskRun) episode(step string, hold bool) *diskRow {
	t := d.t
	d.setStep(step)
	row := &diskRow{step: step}
	intentsBefore, _ := d.intentRefusals(step)
	pairsBefore, storedBefore := d.logCount(msgPairRefused), d.logCount(msgPairStored)
	stepDownsBefore, panicsBefore := d.logCount(msgVaultStepDown), d.logCount(msgVaultPanic)
	pidsBefore := d.c.Nodes[0].PluginPids()

	var rotateDone chan struct{}
	var rotateGen any
	var rotateErr error
	if hold {
		d.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})
		rotateDone = make(chan struct{})
		client, _ := d.c.NewClient(0)
		client.SetClientTimeout(60 * time.Second)
		go func() {
			defer close(rotateDone)
			s, err := client.Logical().Write(d.mount+"accounts/app/rotate", nil)
			if s != nil {
				rotateGen = s.Data["generation"]
			}
			rotateErr = err
		}()
		if !pollUntil(15*time.Second, func() bool { return d.fake.Held() == 1 }) {
			t.Fatalf("%s: the rotate did not reach the fake", step)
		}
		row.filled = "while Ermeo held app's refresh (intent stored)"
	} else {
		// Just after a refresh of app, so that none is in flight and the
		// next is due a few seconds on.
		gen := d.generation("app")
		if !pollUntil(15*time.Second, func() bool { return d.generation("app") != gen }) {
			t.Fatalf("%s: no refresh of app by the readers", step)
		}
		row.filled = "after a refresh of app, before the next was due"
	}
	// app's refresh token now: the last one issued (with hold, the held
	// refresh's successor: issued, and stored once the answer is let go).
	issued := d.fake.IssuedRefreshTokens()
	appToken := issued[len(issued)-1]
	// Every account's refresh token now: app's, and the other live one.
	tokens := map[string]string{"app": appToken}
	if !hold {
		for _, tok := range issued {
			if tok != appToken && d.fake.RefreshTokenLive(tok) {
				tokens["other"] = tok
			}
		}
	}
	requestsBefore := d.refreshRequests()
	if hold {
		requestsBefore-- // the held refresh was sent before the disk filled
	}
	if err := d.disk.Fill(); err != nil {
		t.Fatal(err)
	}
	if !hold && d.generation("app") != d.generationSeen {
		// Another refresh of app slipped in before the fill: its
		// token is not the one looked at.
		delete(tokens, "app")
	}
	filledAt := time.Now()
	if hold {
		d.fake.ReleaseHeld()
	}

	// Until the disk refuses something.
	refused := func() string {
		switch {
		case d.logCount(msgPairRefused) > pairsBefore:
			return "pair"
		case func() bool { n, _ := d.intentRefusals(step); return n > intentsBefore }():
			return "intent"
		case !d.c.Nodes[0].Running() || d.logCount(msgVaultPanic) > panicsBefore:
			return "vault died"
		case d.logCount(msgVaultStepDown) > stepDownsBefore:
			return "another write"
		}
		return ""
	}
	if !pollUntil(20*time.Second, func() bool { return refused() != "" }) {
		// Every write found room in pages the databases had freed (seen:
		// 8 rotations in 20 s on the full disk, in one fresh clone's run
		// of four): a miss, as a write that fits is, and the next fill
		// tries again (fullDiskAttempts; d.check fails a run where steps
		// a or b were never seen).
		t.Logf("%s: nothing refused within 20s of filling the disk; the next fill tries again", step)
	}
	// The Vault log line of a refused intent may come a moment after the
	// step-down's; give the readers' answers a moment to land.
	pollUntil(time.Second, func() bool { r := refused(); return r == "pair" || r == "intent" })
	row.refused = refused()
	row.requests = d.refreshRequests() - requestsBefore
	// The account whose intent record was refused (app if both were), and
	// how often its refresh token was sent while the disk was full.
	row.refusedAccount, row.appSent = "app", -1
	if row.refused == "intent" {
		d.mu.Lock()
		appRefused := d.reads[step].intentRefused["app"]
		d.mu.Unlock()
		if _, most := d.intentRefusals(step); appRefused == 0 {
			row.refusedAccount = most
		}
	}
	if tok, ok := tokens[row.refusedAccount]; ok {
		row.appSent = d.fake.RefreshTokenPresentations()[tok]
	}
	fullFor := time.Since(filledAt)

	if err := d.disk.Free(); err != nil {
		t.Fatal(err)
	}
	if hold {
		select {
		case <-rotateDone:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: the held rotate did not return", step)
		}
		row.wantGen = rotateGen
	}
	row.vault = d.recover(step, fullFor)
	var did []string
	switch {
	case row.refused == "pair" && d.logCount(msgPairStored) > storedBefore:
		did = append(did, "pair refused, tried again, stored once freed")
	case row.refused == "pair":
		did = append(did, "pair refused, not stored")
	case row.refused == "intent":
		did = append(did, "intent of "+row.refusedAccount+" refused: nothing sent for it, last token served while valid")
	}
	if hold && rotateErr != nil {
		did = append(did, "held rotate failed: "+errorKind(rotateErr))
	} else if hold {
		did = append(did, fmt.Sprintf("held rotate answered gen %v", rotateGen))
	}
	row.plugin = strings.Join(did, "; ")
	if pids := d.c.Nodes[0].PluginPids(); len(pids) > 0 && len(pidsBefore) > 0 && pids[0] != pidsBefore[0] {
		row.vault += "; new plugin process"
	}
	s, err := d.c.Client(0).Logical().Read(d.mount + "accounts/app")
	if err != nil || s == nil {
		t.Fatalf("%s: accounts/app after recovery: %v", step, err)
	}
	row.storedGen, row.inFlight = s.Data["generation"], s.Data["rotation_in_flight"]
	row.storage = fmt.Sprintf("app gen %v, in flight %v", row.storedGen, row.inFlight)
	d.mu.Lock()
	d.rows = append(d.rows, row)
	d.mu.Unlock()
	return row
}

// recover waits for Vault after the space is freed: restarted if it died,
// active, and every account's creds valid. It says what Vault did.
func (d *diskRun) recover(step string, fullFor time.Duration) string {
	t := d.t
	node := d.c.Nodes[0]
	freed := time.Now()
	what := ""
	if strings.Count(node.Log(), msgVaultPanic) > d.panics {
		pollUntil(5*time.Second, func() bool { return !node.Running() })
	}
	d.panics = strings.Count(node.Log(), msgVaultPanic)
	if !node.Running() {
		what = "crashed (" + firstPanic(node.Log()) + "); restarted"
		if err := d.c.Restart(0); err != nil {
			t.Fatalf("%s: restarting vault: %v", step, err)
		}
	}
	client := d.c.Client(0)
	ok := pollUntil(60*time.Second, func() bool {
		for _, name := range fullDiskAccounts {
			s, err := client.Logical().Read(d.mount + "creds/" + name)
			if err != nil || s == nil || !d.fake.AccessTokenValid(fmt.Sprint(s.Data["access_token"])) {
				return false
			}
		}
		return true
	})
	if !ok {
		used, _ := d.disk.Used()
		t.Fatalf("%s: the accounts were not usable within 60s of freeing the disk (%d KB used:%s)", step, used>>10, diskFiles(d.disk.Dir))
	}
	if what == "" {
		if strings.Count(node.Log(), msgVaultStepDown) > 0 && d.standbySeen(step) {
			what = "stepped down to standby (500 to every request)"
		} else {
			what = "stayed active"
		}
	}
	return fmt.Sprintf("%s; full %s, usable %s after freeing", what, fullFor.Round(100*time.Millisecond), time.Since(freed).Round(100*time.Millisecond))
}

// standbySeen reports whether readers of the step were told that the node
// is not active.
func (d *diskRun) standbySeen(step string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k := range d.reads[step].errs {
		if strings.Contains(k, "local node not active") {
			return true
		}
	}
	return false
}

func firstPanic(log string) string {
	i := strings.Index(log, msgVaultPanic)
	if i < 0 {
		return "exited"
	}
	line := log[i:]
	if j := strings.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	return line
}

// restartAndCheck is step (c): the vault process is stopped and started
// again on the same disk (the plugin with it), and every account must have
// the chain it stored: rotating it spends a live refresh token.
func (d *diskRun) restartAndCheck() {
	t := d.t
	d.setStep("c")
	row := &diskRow{step: "c", filled: "nothing (space freed for good)", refused: "-", appSent: -1}
	before := d.refreshRequests()
	d.c.Nodes[0].stop()
	if err := d.c.Restart(0); err != nil {
		t.Fatalf("restarting vault: %v", err)
	}
	row.vault = d.recover("c", 0)
	var gens []string
	for _, name := range fullDiskAccounts {
		s, err := d.c.Client(0).Logical().Write(d.mount+"accounts/"+name+"/rotate", nil)
		if err != nil || s == nil {
			t.Errorf("rotate of %s after the restart: %v", name, err)
			continue
		}
		gens = append(gens, fmt.Sprintf("%s gen %v", name, s.Data["generation"]))
	}
	row.requests = d.refreshRequests() - before
	row.plugin = "vault restarted on the same disk; each account rotated"
	row.storage = strings.Join(gens, ", ")
	d.mu.Lock()
	d.rows = append(d.rows, row)
	d.mu.Unlock()
}

func (d *diskRun) print() {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "step\tfull when\trefused write\trefreshes sent while full (of the refused account's token)\tplugin\tVault\treaders (valid/stale/invalid/errors)\tstorage after")
	for _, r := range d.rows {
		sr := d.reads[r.step]
		errs := 0
		var kinds []string
		for k, n := range sr.errs {
			errs += n
			kinds = append(kinds, fmt.Sprintf("%d× %s", n, k))
		}
		app := "?"
		if r.appSent >= 0 {
			app = fmt.Sprint(r.appSent)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d (%s)\t%s\t%s\t%d/%d/%d/%d\t%s\n", r.step, r.filled, r.refused, r.requests, app, r.plugin, r.vault,
			sr.valid, sr.stale, sr.invalid, errs, r.storage)
		for _, k := range kinds {
			fmt.Fprintf(w, "\t\t\t\t\t\t  %s\t\n", k)
		}
	}
	w.Flush()
	c := d.fake.Counters()
	fmt.Printf("full disk: what happened at each step\n%s", b.String())
	fmt.Printf("full disk: at the fake: %v; refresh tokens used twice %d, replayed after a lost answer %d, chains found gone %d, live refresh tokens %d (accounts %d)\n",
		c.Grants, c.RefreshTokensUsedTwice, c.ReplaysAfterLostAnswer, c.DistinctTokensReplayed, c.LiveRefreshTokens, len(fullDiskAccounts))
}

func (d *diskRun) check() {
	t := d.t
	var sawIntent, sawPair bool
	for _, r := range d.rows {
		switch r.refused {
		case "intent":
			sawIntent = sawIntent || r.appSent == 0
			if r.appSent > 0 {
				t.Errorf("%s: %s's intent record was refused, but its refresh token was sent %d time(s) while the disk was full", r.step, r.refusedAccount, r.appSent)
			}
		case "pair":
			sawPair = sawPair || strings.Contains(r.filled, "held")
			if r.inFlight != false || !strings.Contains(r.plugin, "stored once freed") {
				t.Errorf("%s: a refused pair was not stored once the disk was freed (%s; storage: %s)", r.step, r.plugin, r.storage)
			}
		}
		// What a held rotate answered is what storage holds, or older.
		if want, ok := r.wantGen.(json.Number); ok {
			w, _ := want.Int64()
			if got, _ := r.storedGen.(json.Number).Int64(); got < w {
				t.Errorf("%s: the rotate answered generation %d, storage holds %d: the pair handed out was lost", r.step, w, got)
			}
		}
	}
	if !sawIntent {
		t.Errorf("in %d fills, the disk never refused an intent record whose token is known unsent (step a not exercised)", fullDiskAttempts)
	}
	if !sawPair {
		t.Errorf("in %d fills, the disk never refused the pair of a held refresh (step b not exercised)", fullDiskAttempts)
	}
	for step, sr := range d.reads {
		if sr.invalid > 0 {
			t.Errorf("%s: readers got %d tokens the fake does not accept", step, sr.invalid)
		}
	}
	c := d.fake.Counters()
	if c.RefreshTokensUsedTwice != 0 || c.ReplaysAfterLostAnswer != 0 || c.ConcurrentRefreshesOfOneToken != 0 {
		t.Errorf("refresh tokens used twice %d, replayed after a lost answer %d, concurrent %d: want 0",
			c.RefreshTokensUsedTwice, c.ReplaysAfterLostAnswer, c.ConcurrentRefreshesOfOneToken)
	}
	if c.DistinctTokensReplayed != 0 || c.Grants["password"]["success"] != len(fullDiskAccounts) {
		t.Errorf("chains found gone %d, password grants %d (want 0 and one per account): a chain was lost",
			c.DistinctTokensReplayed, c.Grants["password"]["success"])
	}
	if c.LiveRefreshTokens != len(fullDiskAccounts) {
		t.Errorf("live refresh tokens at the fake %d, want one per account (%d)", c.LiveRefreshTokens, len(fullDiskAccounts))
	}
}

// diskFiles lists the files under dir with the space each takes.
func diskFiles(dir string) string {
	var b strings.Builder
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		blocks := int64(0)
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			blocks = st.Blocks * 512
		}
		rel, _ := filepath.Rel(dir, path)
		fmt.Fprintf(&b, " %s %d KB;", rel, blocks>>10)
		return nil
	})
	return b.String()
}
