// Package e2e runs the plugin inside a real Vault server: it finds a vault
// binary, builds the plugin, starts `vault server -dev` on 127.0.0.1 with a
// plugin directory, registers the plugin by sha256 with a version, and stops
// exactly the process it started.
package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"
)

// PluginName is the name the plugin is registered under in Vault's catalog.
const PluginName = "vault-plugin-secrets-ermeo"

// PluginVersion is the version the tests build and register the plugin with.
const PluginVersion = "v0.1.0-e2e"

// FindVault returns the path of a vault binary that is 1.15 or newer: $VAULT_BIN,
// the one on PATH, or the one scripts/vault-bin.sh caches. If there is none it
// returns "" and why.
func FindVault() (string, string) {
	for _, c := range toolCandidates("VAULT_BIN", "vault", "ERMEO_VAULT_CACHE") {
		if v, err := VaultVersion(c); err == nil && newEnough(v) {
			return c, ""
		}
	}
	return "", "no vault binary 1.15 or newer ($VAULT_BIN, PATH, or " + toolCache("ERMEO_VAULT_CACHE") + "): run `make test`, which obtains one with scripts/vault-bin.sh"
}

var versionRe = regexp.MustCompile(`Vault v(\d+)\.(\d+)\.(\d+)`)

// VaultVersion returns what `vault version` prints, e.g. "Vault v1.21.1 (...)".
func VaultVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

func newEnough(version string) bool {
	m := versionRe.FindStringSubmatch(version)
	if m == nil {
		return false
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return major > 1 || (major == 1 && minor >= 15)
}

// ModuleRoot is the directory of the repository's go.mod.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the module")
	}
	return filepath.Dir(gomod), nil
}

// BuildPlugin builds the plugin into dir, with PluginBuildTags, and returns
// its path and sha256.
func BuildPlugin(dir, version string) (string, string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", "", err
	}
	bin := filepath.Join(dir, PluginName)
	args := []string{"build", "-ldflags", "-X github.com/ermeo-community/vault-plugin-secrets-ermeo.Version=" + version}
	if PluginBuildTags != "" {
		args = append(args, "-tags", PluginBuildTags)
	}
	cmd := exec.Command("go", append(args, "-o", bin, "./cmd/vault-plugin-secrets-ermeo")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("building the plugin: %v\n%s", err, out)
	}
	sum, err := fileSHA256(bin)
	return bin, sum, err
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Vault is one `vault server -dev` process that this package started.
type Vault struct {
	Addr    string
	Token   string
	Version string
	Client  *api.Client
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
}

// DevOptions say how to start a dev server.
type DevOptions struct {
	VaultBin  string
	PluginDir string
	WorkDir   string // for the config file, the log and HOME
	LogLevel  string // default "debug"
}

// StartDev starts `vault server -dev` on a free 127.0.0.1 port with the given
// plugin directory and waits until it answers. Call Stop when done.
func StartDev(opts DevOptions) (*Vault, error) {
	version, err := VaultVersion(opts.VaultBin)
	if err != nil {
		return nil, fmt.Errorf("vault version: %w", err)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	token := "root-" + randomHex(12)
	cfgPath := filepath.Join(opts.WorkDir, "vault.hcl")
	cfg := fmt.Sprintf("plugin_directory = %q\ndisable_mlock = true\n", opts.PluginDir)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	level := opts.LogLevel
	if level == "" {
		level = "debug"
	}
	logPath := filepath.Join(opts.WorkDir, "vault.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(opts.VaultBin, "server", "-dev",
		"-dev-root-token-id="+token,
		"-dev-listen-address="+addr,
		"-dev-no-store-token",
		"-config="+cfgPath,
		"-log-level="+level)
	cmd.Env = append(cleanEnv(), "HOME="+opts.WorkDir)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	v := &Vault{Addr: "http://" + addr, Token: token, Version: version, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(v.done)
	}()

	conf := api.DefaultConfig()
	conf.Address = v.Addr
	conf.MaxRetries = 0
	client, err := api.NewClient(conf)
	if err != nil {
		v.Stop()
		return nil, err
	}
	client.SetToken(token)
	v.Client = client
	if err := v.waitReady(30 * time.Second); err != nil {
		v.Stop()
		return nil, fmt.Errorf("%w\n--- vault log ---\n%s", err, v.Log())
	}
	return v, nil
}

// cleanEnv is the environment without VAULT_* variables, so that the
// operator's own Vault settings never reach the test server.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VAULT_") {
			env = append(env, kv)
		}
	}
	return env
}

func (v *Vault) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-v.done:
			return errors.New("vault exited during start-up")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		h, err := v.Client.Sys().HealthWithContext(ctx)
		cancel()
		if err == nil && h.Initialized && !h.Sealed {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("vault did not become ready in time")
}

// Pid is the process id of the vault server.
func (v *Vault) Pid() int { return v.cmd.Process.Pid }

// Log returns the server's log so far.
func (v *Vault) Log() string {
	b, _ := os.ReadFile(v.LogPath)
	return string(b)
}

// Stop ends the vault server this package started (SIGTERM, then SIGKILL
// after 15 s) and waits for it. Vault stops its plugin processes on shutdown.
func (v *Vault) Stop() {
	if v == nil || v.cmd == nil || v.cmd.Process == nil {
		return
	}
	StopProcess(v.cmd.Process, v.done, 15*time.Second)
	checkLockOrder(v.LogPath)
}

// StopProcess ends a process this package started, by its pid: SIGTERM, then
// SIGKILL after grace. done is closed once the process's Wait has returned.
func StopProcess(p *os.Process, done <-chan struct{}, grace time.Duration) {
	select {
	case <-done:
		return
	default:
	}
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = p.Kill()
		<-done
	}
}

// RegisterAndMount registers the plugin binary by sha256 with a version and
// enables it at path.
func (v *Vault) RegisterAndMount(ctx context.Context, sha, version, path string) error {
	err := v.Client.Sys().RegisterPluginWithContext(ctx, &api.RegisterPluginInput{
		Name:    PluginName,
		Type:    api.PluginTypeSecrets,
		Command: PluginName,
		SHA256:  sha,
		Version: version,
	})
	if err != nil {
		return fmt.Errorf("registering the plugin: %w", err)
	}
	err = v.Client.Sys().MountWithContext(ctx, path, &api.MountInput{
		Type:   PluginName,
		Config: api.MountConfigInput{PluginVersion: version},
	})
	if err != nil {
		return fmt.Errorf("enabling the plugin at %s: %w", path, err)
	}
	return nil
}

// PluginPids returns the pids of the running plugin processes whose parent
// is this vault server.
func (v *Vault) PluginPids() ([]int, error) {
	children, err := ChildProcesses(v.Pid())
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range children {
		if p.namedLikePlugin() {
			pids = append(pids, p.Pid)
		}
	}
	return pids, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// EnableFileAudit enables a file audit device at path that writes to file,
// with log_raw=false (Vault's default, said explicitly): string values of
// requests and responses are HMAC'd, and Vault's own error field is not.
func EnableFileAudit(ctx context.Context, c *api.Client, path, file string) error {
	err := c.Sys().EnableAuditWithOptionsWithContext(ctx, path, &api.EnableAuditOptions{
		Type:    "file",
		Options: map[string]string{"file_path": file, "log_raw": "false"},
	})
	if err != nil {
		return fmt.Errorf("enabling the file audit device at %s: %w", path, err)
	}
	return nil
}

// toolCandidates lists where a tool the project obtains may be, in the order
// the scripts look: $binEnv, the PATH, then what scripts/<name>-bin.sh cached
// ($cacheEnv, or the user's cache directory) as <name>-v*.
func toolCandidates(binEnv, name, cacheEnv string) []string {
	var candidates []string
	if v := os.Getenv(binEnv); v != "" {
		candidates = append(candidates, v)
	}
	if p, err := exec.LookPath(name); err == nil {
		candidates = append(candidates, p)
	}
	cached, _ := filepath.Glob(filepath.Join(toolCache(cacheEnv), name+"-v*"))
	return append(candidates, cached...)
}

// toolCache is the directory the scripts cache built tools in: $cacheEnv, or
// vault-plugin-secrets-ermeo in the user's cache directory.
func toolCache(cacheEnv string) string {
	if cache := os.Getenv(cacheEnv); cache != "" {
		return cache
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "vault-plugin-secrets-ermeo")
}
