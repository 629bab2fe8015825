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
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make is not on PATH")
	}
	cmd := exec.Command(makeBin, args...)
	cmd.Dir = repoRoot(t)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
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

// TestMakeReleaseIsReproducibleAndCarriesTheVersion runs make release twice,
// for two platforms, into two directories of its own: the two SHA256SUMS must
// be byte for byte the same. Then make release for every platform must name
// the five binaries with the version and platform, and hash each of them,
// and a new VERSION must replace the binaries of the old one.
// The linux/amd64 binary must carry the requested version, be built with
// -trimpath, without cgo, VCS stamp or build id, and hold no absolute path
// of the repository or the module cache.
//
// The second run reuses the Go build cache's compiled packages (a build from
// an empty cache takes minutes per platform), so it checks that linking and
// the output directory change nothing, not that compiling is deterministic.
// Each platform is compiled once: about 10 s with a warm build cache.
func TestMakeReleaseIsReproducibleAndCarriesTheVersion(t *testing.T) {
	const version = "v0.0.3-test"
	const subset = "linux/amd64 darwin/arm64"
	prefix := "vault-plugin-secrets-ermeo_" + version + "_"

	a, b := t.TempDir(), t.TempDir()
	runMake(t, "DIST="+a, "release", "VERSION="+version, "RELEASE_PLATFORMS="+subset)
	runMake(t, "DIST="+b, "release", "VERSION="+version, "RELEASE_PLATFORMS="+subset)
	sumsA := readSums(t, a, []string{prefix + "darwin_arm64", prefix + "linux_amd64"})
	sumsB := readSums(t, b, []string{prefix + "darwin_arm64", prefix + "linux_amd64"})
	if !bytes.Equal(sumsA, sumsB) {
		t.Fatalf("two make release runs gave different SHA256SUMS:\n%s\n%s", sumsA, sumsB)
	}

	// Every platform, into a: the two binaries above stay as they are.
	runMake(t, "DIST="+a, "release", "VERSION="+version)
	full := readSums(t, a, []string{
		prefix + "darwin_amd64", prefix + "darwin_arm64", prefix + "freebsd_amd64",
		prefix + "linux_amd64", prefix + "linux_arm64",
	})
	for _, line := range strings.SplitAfter(strings.TrimSuffix(string(sumsA), "\n"), "\n") {
		if !strings.Contains(string(full), strings.TrimSuffix(line, "\n")+"\n") {
			t.Errorf("make release for every platform changed %q:\n%s", line, full)
		}
	}

	// A new VERSION into b: dist holds its binary only, and SHA256SUMS lists it.
	runMake(t, "DIST="+b, "release", "VERSION=v0.0.4-test", "RELEASE_PLATFORMS=linux/amd64")
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
	for _, dir := range []string{repoRoot(t), strings.TrimSpace(string(modcache)), a} {
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
