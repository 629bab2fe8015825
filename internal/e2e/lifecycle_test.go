package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/procfs"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// Two mounts of the plugin; a refresh on the first is committed at Ermeo and
// its answer held while an operator reloads the second. Each mount has a
// process of its own, so the reload replaces only the second's: the held
// answer reaches the first mount's process, its pair is stored, and no
// refresh token is sent twice. (Served multiplexed, one process for both,
// the reload killed that process and lost the pair: a spent token was sent
// again and the chain lost, in each of 4 runs.)
func TestReloadOfOneMountLosesNothingOnAnother(t *testing.T) {
	held := newEnvAt(t, fakeermeo.Options{AccessTokenTTL: time.Hour}, "-a")
	other := newEnvAt(t, fakeermeo.Options{AccessTokenTTL: time.Hour}, "-b")
	for _, e := range []*env{held, other} {
		e.configure()
		e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword})
		e.mustRead("creds/app")
	}
	gen := held.mustRead("accounts/app").Data["generation"]

	pidsBefore, err := vault.PluginPids()
	if err != nil {
		t.Fatal(err)
	}
	rss := residentMemory(t, pidsBefore)

	before := held.fake.Counters() // the config write's credentials check got one invalid_grant
	held.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})
	rotated := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := held.write("accounts/app/rotate", nil)
		rotated <- err
	}()
	waitUntil(t, 10*time.Second, func() bool { return held.fake.Held() == 1 })

	reloadStart := time.Now()
	if _, err := vault.Client.Logical().Write("sys/plugins/reload/backend", map[string]any{"mounts": []string{other.mount + "/"}}); err != nil {
		t.Fatalf("reloading %s/: %v", other.mount, err)
	}
	reloadTook := time.Since(reloadStart)
	// The reloaded mount serves again before the held answer is let go.
	other.mustRead("creds/app")
	time.Sleep(500 * time.Millisecond)
	held.fake.ReleaseHeld()
	err = <-rotated
	rotateTook := time.Since(start)
	if err != nil {
		t.Errorf("the rotate on %s/, in flight during the reload of %s/: %v", held.mount, other.mount, err)
	}

	after := held.mustRead("accounts/app").Data
	c := held.fake.Counters()
	twice := c.RefreshTokensUsedTwice + c.ReplaysAfterLostAnswer - before.RefreshTokensUsedTwice - before.ReplaysAfterLostAnswer
	lost := c.Grants["refresh_token"]["invalid_grant"] - before.Grants["refresh_token"]["invalid_grant"]
	stored := fmt.Sprint(after["generation"]) != fmt.Sprint(gen) && after["state"] == "active"
	fmt.Printf("reload of %s/ during a held refresh on %s/: reload %s, rotate %s; held pair stored: %v; tokens sent twice: %d; chains lost: %d\n",
		other.mount, held.mount, reloadTook.Round(time.Millisecond), rotateTook.Round(time.Millisecond), stored, twice, lost)
	fmt.Printf("plugin processes before the reload: %d, resident memory %s\n", len(pidsBefore), rss)
	if !stored {
		t.Errorf("the held pair was not stored: generation %v -> %v, state %v", gen, after["generation"], after["state"])
	}
	if twice != 0 || lost != 0 {
		t.Errorf("a refresh token was sent twice (%d), or a chain lost (%d): %+v", twice, lost, c)
	}
	if tok := held.mustRead("creds/app").Data["access_token"].(string); !held.fake.AccessTokenValid(tok) {
		t.Errorf("%s/ serves a token Ermeo refuses", held.mount)
	}
	if tok := other.mustRead("creds/app").Data["access_token"].(string); !other.fake.AccessTokenValid(tok) {
		t.Errorf("%s/ serves a token Ermeo refuses after its reload", other.mount)
	}
}

// residentMemory says each process's resident memory, in MB.
func residentMemory(t *testing.T, pids []int) string {
	var mbs []float64
	for _, pid := range pids {
		p, err := procfs.NewProc(pid)
		if err != nil {
			continue
		}
		st, err := p.Stat()
		if err != nil {
			continue
		}
		mbs = append(mbs, float64(st.ResidentMemory())/(1<<20))
	}
	sort.Float64s(mbs)
	total := 0.0
	out := ""
	for _, mb := range mbs {
		total += mb
		out += fmt.Sprintf(" %.1f", mb)
	}
	return fmt.Sprintf("%.1f MB in all (per process:%s MB)", total, out)
}

// The life cycle on production's storage: one single-node Raft server and
// one fake Ermeo for a seal landing on a refresh in flight, then a snapshot
// restore after rotations.
func TestLifeCycleOnRaft(t *testing.T) {
	c, e := startSingleRaftEnv(t, fakeermeo.Options{AccessTokenTTL: time.Hour})
	fake, client := e.fake, e.c
	e.configure()
	node := c.Nodes[0]

	t.Run("upgrade from v0.1.0 under traffic", func(t *testing.T) {
		e.t = t
		upgradeFromFirstRelease(t, c, e)
	})

	t.Run("seal during a held refresh", func(t *testing.T) {
		e.t = t
		e.mustWrite("accounts/sealed", map[string]any{"username": testUser, "password": testPassword})
		gen := e.mustRead("accounts/sealed").Data["generation"]
		before := fake.Counters()
		fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})
		rotated := make(chan error, 1)
		go func() {
			_, err := e.write("accounts/sealed/rotate", nil)
			rotated <- err
		}()
		waitUntil(t, 10*time.Second, func() bool { return fake.Held() == 1 })
		sealed := make(chan error, 1)
		sealStart := time.Now()
		go func() { sealed <- client.Sys().Seal() }()
		time.Sleep(time.Second)
		fake.ReleaseHeld()
		rotateErr, sealErr := <-rotated, <-sealed
		sealTook := time.Since(sealStart)
		if sealErr != nil {
			t.Fatalf("seal: %v", sealErr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.unseal(ctx, node); err != nil {
			t.Fatal(err)
		}
		if err := c.waitActive(ctx, node); err != nil {
			t.Fatal(err)
		}
		var after map[string]any
		waitUntil(t, 30*time.Second, func() bool {
			s, err := e.read("accounts/sealed")
			if err == nil && s != nil {
				after = s.Data
			}
			return after != nil
		})
		cnt := fake.Counters()
		twice := cnt.RefreshTokensUsedTwice + cnt.ReplaysAfterLostAnswer - before.RefreshTokensUsedTwice - before.ReplaysAfterLostAnswer
		lost := cnt.Grants["refresh_token"]["invalid_grant"] - before.Grants["refresh_token"]["invalid_grant"]
		stored := fmt.Sprint(after["generation"]) != fmt.Sprint(gen) && after["rotation_in_flight"] == false
		fmt.Printf("seal during a held refresh (Raft): seal took %s (held 1 s); the rotate got %v; held pair stored: %v; tokens sent twice: %d; chains lost: %d\n",
			sealTook.Round(time.Millisecond), rotateErr, stored, twice, lost)
		if !stored || twice != 0 || lost != 0 {
			t.Errorf("after the seal: stored %v (generation %v -> %v, in flight %v), sent twice %d, lost %d",
				stored, gen, after["generation"], after["rotation_in_flight"], twice, lost)
		}
		if tok := e.mustRead("creds/sealed").Data["access_token"].(string); !fake.AccessTokenValid(tok) {
			t.Errorf("after the unseal, creds serves a token Ermeo refuses")
		}
	})

	t.Run("snapshot restore after rotations", func(t *testing.T) {
		e.t = t
		e.mustWrite("accounts/kept", map[string]any{"username": testUser, "password": testPassword, "store_password": true})
		e.mustWrite("accounts/bare", map[string]any{"username": testUser, "password": testPassword})
		var snap bytes.Buffer
		if err := client.Sys().RaftSnapshot(&snap); err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		for range 3 {
			e.mustWrite("accounts/kept/rotate", nil)
			e.mustWrite("accounts/bare/rotate", nil)
		}
		before := fake.Counters()
		if err := client.Sys().RaftSnapshotRestore(bytes.NewReader(snap.Bytes()), true); err != nil {
			t.Fatalf("restore: %v", err)
		}
		restored := map[string]any{}
		waitUntil(t, 30*time.Second, func() bool {
			s, err := e.read("accounts/bare")
			if err == nil && s != nil {
				restored = s.Data
			}
			return err == nil && s != nil
		})

		// The runbook: rotate every account now.
		list, err := client.Logical().List(e.mount + "/accounts")
		if err != nil || list == nil {
			t.Fatalf("list: %v", err)
		}
		states := map[string]string{}
		for _, n := range list.Data["keys"].([]any) {
			name := n.(string)
			_, _ = e.write("accounts/"+name+"/rotate", nil)
			st := e.mustRead("accounts/" + name).Data
			states[name] = fmt.Sprint(st["state"])
			if name == "bare" {
				if le := fmt.Sprint(st["last_error"]); !strings.Contains(le, "restored from a snapshot") || st["chain_lost_how"] != "refused" {
					t.Errorf("bare after the restore: chain_lost_how %v, last_error %q", st["chain_lost_how"], le)
				}
			}
		}
		cnt := fake.Counters()
		presented := cnt.RefreshTokensUsedTwice - before.RefreshTokensUsedTwice
		fmt.Printf("snapshot restore after 3 rotations (Raft): accounts came back at generation %v; the runbook's rotations: %v; spent tokens presented: %d (one per rewound chain, unavoidable)\n",
			restored["generation"], states, presented)
		if states["kept"] != "active" || states["bare"] != "needs_reauth" || states["sealed"] != "active" {
			t.Errorf("after the runbook: %v; want kept active (its kept password), bare needs_reauth, sealed active (not rotated since the snapshot)", states)
		}
		if presented != 2 {
			t.Errorf("spent tokens presented: %d, want 2 (kept and bare, once each)", presented)
		}
		// The command the error names brings bare back.
		e.mustWrite("accounts/bare", map[string]any{"password": testPassword})
		if st := e.mustRead("accounts/bare").Data; st["state"] != "active" {
			t.Errorf("bare after a new password: %v", st["state"])
		}
		for _, name := range []string{"kept", "bare"} {
			if tok := e.mustRead("creds/" + name).Data["access_token"].(string); !fake.AccessTokenValid(tok) {
				t.Errorf("%s serves a token Ermeo refuses after the runbook", name)
			}
		}
	})
}

// firstRelease is v0.1.0 as released: the commit its binaries were built from.
const firstRelease, firstReleaseCommit = "v0.1.0", "9d2d922"

// buildFirstRelease builds the plugin of v0.1.0 from the repository's
// history (git archive of its commit) into bin.
func buildFirstRelease(t *testing.T, bin string) string {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", "git archive --format=tar "+firstReleaseCommit+" | tar -x -C "+src)
	archive.Dir = root
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("extracting %s (commit %s) from the repository's history: %v\n%s", firstRelease, firstReleaseCommit, err, out)
	}
	build := exec.Command("go", "build", "-ldflags", "-X github.com/ermeo-community/vault-plugin-secrets-ermeo.Version="+firstRelease,
		"-o", bin, "./cmd/vault-plugin-secrets-ermeo")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", firstRelease, err, out)
	}
	sum, err := fileSHA256(bin)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// upgradeFromFirstRelease: accounts written by v0.1.0, then the current build
// registered, the mount tuned to it and reloaded, while readers read and
// while a refresh is held at Ermeo. Nothing is lost: the held pair is
// stored, no refresh token is sent twice, every v0.1.0 entry is read and
// served.
func upgradeFromFirstRelease(t *testing.T, c *Cluster, base *env) {
	node := c.Nodes[0]
	command := PluginName + "-" + firstRelease
	sha := buildFirstRelease(t, filepath.Join(node.PluginDir, command))
	client := base.c
	if err := client.Sys().RegisterPlugin(&api.RegisterPluginInput{Name: PluginName, Type: api.PluginTypeSecrets,
		Command: command, SHA256: sha, Version: firstRelease}); err != nil {
		t.Fatalf("registering %s: %v", firstRelease, err)
	}
	mount := "ermeo-upgrade"
	if err := client.Sys().Mount(mount, &api.MountInput{Type: PluginName, Config: api.MountConfigInput{PluginVersion: firstRelease}}); err != nil {
		t.Fatalf("enabling %s at %s/: %v", firstRelease, mount, err)
	}
	e := &env{t: t, mount: mount, fake: base.fake, url: base.url, c: client}
	e.configure()
	e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword})
	e.mustWrite("accounts/kept", map[string]any{"username": testUser, "password": testPassword, "store_password": true})
	e.mustRead("creds/app")
	gen := e.mustRead("accounts/app").Data["generation"]
	before := e.fake.Counters()

	// Readers, as applications would be.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var reads, failed int
	var longest time.Duration
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				s, err := client.Logical().Read(mount + "/creds/app")
				took := time.Since(t0)
				mu.Lock()
				reads++
				if err != nil || s == nil || !e.fake.AccessTokenValid(fmt.Sprint(s.Data["access_token"])) {
					failed++
				}
				longest = max(longest, took)
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}

	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})
	rotated := make(chan error, 1)
	go func() {
		_, err := e.write("accounts/app/rotate", nil)
		rotated <- err
	}()
	waitUntil(t, 10*time.Second, func() bool { return e.fake.Held() == 1 })
	if err := client.Sys().TuneMount(mount, api.MountConfigInput{PluginVersion: PluginVersion}); err != nil {
		t.Fatalf("tuning %s/ to %s: %v", mount, PluginVersion, err)
	}
	reloaded := make(chan error, 1)
	reloadStart := time.Now()
	go func() {
		_, err := client.Logical().Write("sys/plugins/reload/backend", map[string]any{"mounts": []string{mount + "/"}})
		reloaded <- err
	}()
	time.Sleep(time.Second)
	e.fake.ReleaseHeld()
	rotateErr, reloadErr := <-rotated, <-reloaded
	reloadTook := time.Since(reloadStart)
	if reloadErr != nil {
		t.Fatalf("reload: %v", reloadErr)
	}
	time.Sleep(500 * time.Millisecond) // the readers go on against the new build
	close(stop)
	wg.Wait()

	mounts, err := client.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	running := mounts[mount+"/"].RunningVersion
	after := e.mustRead("accounts/app").Data
	cnt := e.fake.Counters()
	twice := cnt.RefreshTokensUsedTwice + cnt.ReplaysAfterLostAnswer - before.RefreshTokensUsedTwice - before.ReplaysAfterLostAnswer
	lost := cnt.Grants["refresh_token"]["invalid_grant"] - before.Grants["refresh_token"]["invalid_grant"]
	stored := fmt.Sprint(after["generation"]) != fmt.Sprint(gen) && after["rotation_in_flight"] == false
	fmt.Printf("upgrade %s -> %s under traffic (Raft): reload %s with a refresh held 1 s; the rotate got %v; held pair stored: %v; tokens sent twice: %d; chains lost: %d; reads %d (failed %d), longest stall %s\n",
		firstRelease, running, reloadTook.Round(time.Millisecond), rotateErr, stored, twice, lost, reads, failed, longest.Round(time.Millisecond))
	if running != PluginVersion {
		t.Errorf("running_plugin_version %q after the reload, want %q", running, PluginVersion)
	}
	if !stored || twice != 0 || lost != 0 || failed != 0 {
		t.Errorf("upgrade under traffic: stored %v (generation %v -> %v), sent twice %d, lost %d, failed reads %d", stored, gen, after["generation"], twice, lost, failed)
	}
	for _, name := range []string{"app", "kept"} {
		st := e.mustRead("accounts/" + name).Data
		if st["state"] != "active" || st["username"] != testUser {
			t.Errorf("%s's %s entry read by %s: %v", firstRelease, name, PluginVersion, st)
		}
		if tok := e.mustRead("creds/" + name).Data["access_token"].(string); !e.fake.AccessTokenValid(tok) {
			t.Errorf("%s: the upgraded mount serves a token Ermeo refuses", name)
		}
	}
	_ = os.Remove(filepath.Join(node.PluginDir, command))
}
