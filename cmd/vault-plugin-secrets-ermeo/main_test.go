package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// repoRoot is where the Makefile is, two directories up.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "Makefile")); err != nil {
		t.Fatal(err)
	}
	return root
}

// runMake runs make in the repository with args and returns its output.
func runMake(t *testing.T, args ...string) string {
	t.Helper()
	return runMakeIn(t, repoRoot(t), args...)
}

// runMakeIn runs make in dir with args and returns its output.
func runMakeIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make is not on PATH")
	}
	cmd := exec.Command(makeBin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s (in %s): %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// copyCheckout copies into each of dsts the files of the repository that git
// does not ignore (tracked or not, as they are in the working tree; not .git,
// bin/ or dist/): checkouts of their own to run make release in. Each file is
// read once, so that the copies are the same even if the repository is being
// edited.
func copyCheckout(t *testing.T, dsts ...string) {
	t.Helper()
	gitBin, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git is not on PATH")
	}
	src := repoRoot(t)
	cmd := exec.Command(gitBin, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = src
	list, err := cmd.Output()
	if err != nil {
		t.Fatalf("git ls-files in %s: %v", src, err)
	}
	for _, rel := range strings.Split(strings.TrimSuffix(string(list), "\x00"), "\x00") {
		from := filepath.Join(src, rel)
		info, err := os.Lstat(from)
		if err != nil || !info.Mode().IsRegular() {
			continue // deleted in the working tree, or not a regular file
		}
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		for _, dst := range dsts {
			to := filepath.Join(dst, rel)
			if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(to, data, info.Mode().Perm()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestMakeBuildRebuildsWhenTheVersionChanges builds the plugin with one
// VERSION, then another, into a directory of its own: the second binary must
// carry the second version, although no source changed in between. A third
// build with the same version must leave the binary alone.
func TestMakeBuildRebuildsWhenTheVersionChanges(t *testing.T) {
	bin := t.TempDir()
	plugin := filepath.Join(bin, "vault-plugin-secrets-ermeo")
	runMake(t, "BIN="+bin, "build", "VERSION=v0.0.1-test")
	runMake(t, "BIN="+bin, "build", "VERSION=v0.0.2-test")

	out, err := exec.Command("go", "version", "-m", plugin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, out)
	}
	var ldflags string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "build" && strings.HasPrefix(f[1], "-ldflags=") {
			ldflags = strings.Join(f[1:], " ")
		}
	}
	if !strings.Contains(ldflags, ".Version=v0.0.2-test") {
		t.Fatalf("after make build VERSION=v0.0.2-test the plugin's -ldflags are %q, want .Version=v0.0.2-test\n%s", ldflags, out)
	}

	before, err := os.Stat(plugin)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // a rebuild would show in the mtime
	runMake(t, "BIN="+bin, "build", "VERSION=v0.0.2-test")
	after, err := os.Stat(plugin)
	if err != nil {
		t.Fatal(err)
	}
	if !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("make build with an unchanged VERSION rebuilt the plugin")
	}
}

// TestMakeReleaseIsReproducibleAndCarriesTheVersion runs make release for
// linux/amd64 in two checkouts of the repository, copies of it in two
// directories of their own: the two binaries, and the two SHA256SUMS, must be
// byte for byte the same. One platform proves this as well as five: every
// platform is built by the same rule. That make release for every platform
// builds the five binaries, named with the version and platform, hashes them
// all, and leaves a binary already built alone, is checked with make -n; a
// new VERSION must replace the binaries of the old one, and of any other
// platform. The linux/amd64 binary must carry the requested version, be built
// with -trimpath, without cgo, VCS stamp or build id, and hold no absolute
// path of either checkout, the repository or the module cache.
//
// The second run reuses the Go build cache's compiled packages (a build from
// an empty cache takes minutes per platform; with -trimpath the checkout's
// directory is not part of a package's cache key), so it checks that linking,
// the checkout's directory and the output directory change nothing, not that
// compiling is deterministic. With a warm build cache the test builds one
// platform and links it three times.
func TestMakeReleaseIsReproducibleAndCarriesTheVersion(t *testing.T) {
	const version = "v0.0.3-test"
	prefix := "vault-plugin-secrets-ermeo_" + version + "_"
	all := []string{
		prefix + "darwin_amd64", prefix + "darwin_arm64", prefix + "freebsd_amd64",
		prefix + "linux_amd64", prefix + "linux_arm64",
	}

	// Two checkouts of the same files: an edit of the repository during the
	// test cannot make them differ.
	checkoutA, checkoutB := t.TempDir(), t.TempDir()
	copyCheckout(t, checkoutA, checkoutB)
	a, b := filepath.Join(checkoutA, "dist"), filepath.Join(checkoutB, "dist")
	runMakeIn(t, checkoutA, "release", "VERSION="+version, "RELEASE_PLATFORMS=linux/amd64")
	runMakeIn(t, checkoutB, "release", "VERSION="+version, "RELEASE_PLATFORMS=linux/amd64")
	sumsA := readSums(t, a, []string{prefix + "linux_amd64"})
	sumsB := readSums(t, b, []string{prefix + "linux_amd64"})
	if !bytes.Equal(sumsA, sumsB) {
		t.Fatalf("make release in two checkouts gave different SHA256SUMS:\n%s\n%s", sumsA, sumsB)
	}
	binA, err := os.ReadFile(filepath.Join(a, prefix+"linux_amd64"))
	if err != nil {
		t.Fatal(err)
	}
	binB, err := os.ReadFile(filepath.Join(b, prefix+"linux_amd64"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(binA, binB) {
		t.Fatalf("make release in two checkouts gave two different linux/amd64 binaries")
	}

	// Every platform (the default RELEASE_PLATFORMS), in a, without building:
	// the four missing binaries are built, each for its platform and named
	// with it, the linux/amd64 one is left as it is, and SHA256SUMS hashes
	// the five.
	plan := runMakeIn(t, checkoutA, "-n", "--no-print-directory", "release", "VERSION="+version)
	for _, name := range all {
		platform := strings.TrimPrefix(name, prefix) // <os>_<arch>
		goos, goarch, _ := strings.Cut(platform, "_")
		build := regexp.MustCompile(`GOOS=` + goos + ` GOARCH=` + goarch + ` \\\s+go build -trimpath -buildvcs=false .* -o dist/` + regexp.QuoteMeta(name) + ` `)
		if built := build.MatchString(plan); built != (platform != "linux_amd64") {
			t.Errorf("make -n release for every platform: building %s is %v, want %v\n%s", name, built, !built, plan)
		}
	}
	sumsLine := regexp.MustCompile(`(?m)^cd dist && sha256sum (.*) \| LC_ALL=C sort -k 2 >SHA256SUMS.tmp`).FindStringSubmatch(plan)
	if sumsLine == nil {
		t.Errorf("make -n release for every platform does not write SHA256SUMS:\n%s", plan)
	} else if hashed := strings.Fields(sumsLine[1]); !slices.Equal(slices.Sorted(slices.Values(hashed)), all) {
		t.Errorf("make -n release for every platform hashes %q, want %q", hashed, all)
	}

	// A new VERSION into b: dist holds its binary only, and SHA256SUMS lists
	// it. The binary of the old VERSION goes, and so does one of the new
	// VERSION for a platform no longer released (a stand-in, not a build).
	other := filepath.Join(b, "vault-plugin-secrets-ermeo_v0.0.4-test_darwin_arm64")
	if err := os.WriteFile(other, []byte("stand-in"), 0o755); err != nil {
		t.Fatal(err)
	}
	runMakeIn(t, checkoutB, "release", "VERSION=v0.0.4-test", "RELEASE_PLATFORMS=linux/amd64")
	readSums(t, b, []string{"vault-plugin-secrets-ermeo_v0.0.4-test_linux_amd64"})
	entries, err := os.ReadDir(b)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if want := []string{".release", "SHA256SUMS", "vault-plugin-secrets-ermeo_v0.0.4-test_linux_amd64"}; !slices.Equal(left, want) {
		t.Errorf("after make release with a new VERSION and one platform, %s holds %q, want %q", b, left, want)
	}

	plugin := filepath.Join(a, prefix+"linux_amd64")
	out, err := exec.Command("go", "version", "-m", plugin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, out)
	}
	settings := map[string]string{}
	var info strings.Builder // out without its dep lines, for the messages
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "build" {
			k, v, _ := strings.Cut(strings.Join(f[1:], " "), "=")
			settings[k] = v
		}
		if len(f) == 0 || f[0] != "dep" {
			info.WriteString(line + "\n")
		}
	}
	for k, want := range map[string]string{"-trimpath": "true", "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64"} {
		if settings[k] != want {
			t.Errorf("go version -m: build %s=%q, want %q\n%s", k, settings[k], want, &info)
		}
	}
	if _, ok := settings["vcs"]; ok {
		t.Errorf("go version -m: the binary is stamped with VCS information (want -buildvcs=false)\n%s", &info)
	}
	if id, err := exec.Command("go", "tool", "buildid", plugin).CombinedOutput(); err != nil || strings.TrimSpace(string(id)) != "" {
		t.Errorf("go tool buildid: %q, %v; want an empty build id", id, err)
	}

	bin, err := os.ReadFile(plugin)
	if err != nil {
		t.Fatal(err)
	}
	// With -trimpath, go version -m does not show -ldflags (go.dev/issue/52372),
	// and -X of a variable that does not exist is silently ignored: the
	// version's bytes are in the binary only if -X set Version.
	if !bytes.Contains(bin, []byte(version)) {
		t.Errorf("%s does not contain %s: -X did not set Version", plugin, version)
	}
	modcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{repoRoot(t), strings.TrimSpace(string(modcache)), checkoutA, checkoutB} {
		if dir != "" && bytes.Contains(bin, []byte(dir)) {
			t.Errorf("%s contains the path %s", plugin, dir)
		}
	}
}

// readSums returns dir's SHA256SUMS after checking that it lists exactly the
// files named, sorted, in sha256sum's format, each with its file's sha256.
func readSums(t *testing.T, dir string, names []string) []byte {
	t.Helper()
	sums, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSuffix(string(sums), "\n"), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok || len(sum) != 64 {
			t.Fatalf("%s/SHA256SUMS: %q is not a sha256sum line\n%s", dir, line, sums)
		}
		file, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if h := sha256.Sum256(file); hex.EncodeToString(h[:]) != sum {
			t.Errorf("%s/SHA256SUMS: %s has sha256 %x, the file lists %s", dir, name, h, sum)
		}
		got = append(got, name)
	}
	if !slices.Equal(got, names) {
		t.Fatalf("%s/SHA256SUMS lists %q, want %q (sorted)\n%s", dir, got, names, sums)
	}
	return sums
}

// TestMakeFuzzSmokeOnlyReplaysTheCorpus checks, with make -n, that make test's
// fuzz step runs the fuzz targets as plain tests (their seeds and saved
// corpus) and never fuzzes, so that make test is deterministic, while make
// fuzz still fuzzes.
func TestMakeFuzzSmokeOnlyReplaysTheCorpus(t *testing.T) {
	smoke := runMake(t, "-n", "--no-print-directory", "fuzz-smoke")
	if !strings.Contains(smoke, `go test -count=1 -run '^(FuzzTokenResponse|FuzzErrorResponse)$' ./internal/ermeo/`) {
		t.Errorf("make fuzz-smoke does not replay the two fuzz targets:\n%s", smoke)
	}
	if strings.Contains(smoke, "-fuzz") {
		t.Errorf("make fuzz-smoke fuzzes (-fuzz), so make test is not deterministic:\n%s", smoke)
	}
	if fuzz := runMake(t, "-n", "--no-print-directory", "fuzz"); !strings.Contains(fuzz, "-fuzz ") || !strings.Contains(fuzz, "-fuzztime 300s") {
		t.Errorf("make fuzz no longer fuzzes:\n%s", fuzz)
	}
	makefile, err := os.ReadFile(filepath.Join(repoRoot(t), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^test:.*\bfuzz-smoke\b`).Match(makefile) {
		t.Errorf("make test does not run fuzz-smoke")
	}
}
