// Package scripts holds the tests of the shell scripts beside it.
package scripts

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Stand-ins for the programs demo.sh runs, so that the script itself runs
// end to end in a second: vault and the fake answer at once and serve until
// killed, curl prints a profile.
const (
	stubVaultBin = `#!/usr/bin/env bash
echo "$(cd "$(dirname "$0")" && pwd)/vault"
`
	stubVault = `#!/usr/bin/env bash
case "$1" in
  server) exec sleep 30 ;;
  status) exit 0 ;;
  version) echo "Vault v0.0.0-stub" ;;
  read) if [ "$2" = -field=access_token ]; then echo stub-access-token; else echo "access_token    stub-access-token"; fi ;;
  *) echo "Success!" ;;
esac
`
	stubFake = `#!/usr/bin/env bash
while [ $# -gt 0 ]; do
  if [ "$1" = -addr-file ]; then printf 'http://127.0.0.1:1' >"$2"; fi
  shift
done
exec sleep 30
`
	stubCurl = `#!/usr/bin/env bash
echo '{"id":1,"email":"jane@example.com"}'
`
)

// demoTree lays out a copy of demo.sh with the stubs in a temporary
// repository and returns its root and a PATH with the stub curl first.
func demoTree(t *testing.T) (root, path string) {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not found")
	}
	demo, err := os.ReadFile("demo.sh")
	if err != nil {
		t.Fatal(err)
	}
	root = t.TempDir()
	for name, content := range map[string]string{
		"scripts/demo.sh":                string(demo),
		"scripts/vault-bin.sh":           stubVaultBin,
		"scripts/vault":                  stubVault,
		"bin/vault-plugin-secrets-ermeo": "#!/bin/sh\n",
		"bin/fake-ermeo":                 stubFake,
		"stubs/curl":                     stubCurl,
	} {
		file := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root, filepath.Join(root, "stubs") + string(os.PathListSeparator) + os.Getenv("PATH")
}

func demoCommand(ctx context.Context, root, path string, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PATH="+path, "TMPDIR="+root)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// TestDemoPrintsNoEscapeCodesWhenNotATerminal runs demo.sh with its stdout a
// pipe: no ANSI escape code. Under a terminal (script(1), if installed) the
// step titles are still bold.
func TestDemoPrintsNoEscapeCodesWhenNotATerminal(t *testing.T) {
	root, path := demoTree(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cmd := demoCommand(ctx, root, path, "bash", "scripts/demo.sh")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("demo.sh: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.Bytes())
	}
	if !strings.Contains(string(out), "==> Reading an access token") || !strings.Contains(string(out), "==> Done") {
		t.Fatalf("demo.sh did not run its steps:\n%s", out)
	}
	if i := bytes.IndexByte(out, 0x1b); i >= 0 {
		t.Errorf("stdout is a pipe, yet demo.sh printed an escape code at byte %d:\n%q", i, out)
	}

	if _, err := exec.LookPath("script"); err != nil {
		t.Log("script(1) not found: the terminal case is not checked")
		return
	}
	cmd = demoCommand(ctx, root, path, "script", "-qec", "bash scripts/demo.sh", "/dev/null")
	out, err = cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo.sh under script(1): %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "\x1b[1m==> Reading an access token\x1b[0m") {
		t.Errorf("on a terminal the step titles are not bold:\n%q", out)
	}
}
