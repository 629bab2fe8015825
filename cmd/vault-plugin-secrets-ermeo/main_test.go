package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
