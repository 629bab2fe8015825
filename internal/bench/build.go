package bench

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/e2e"
)

// NullPluginName is the null plugin's binary and catalog name. Its first 15
// characters (the process's comm) differ from the Ermeo plugin's, so that
// e2e's PluginPids never counts it.
const NullPluginName = "bench-null-plugin"

// BuildNullPlugin builds the null plugin with version into dir and returns
// its path and sha256.
func BuildNullPlugin(dir, version string) (string, string, error) {
	root, err := e2e.ModuleRoot()
	if err != nil {
		return "", "", err
	}
	bin := filepath.Join(dir, NullPluginName)
	cmd := exec.Command("go", "build", "-ldflags", "-X main.Version="+version, "-o", bin, "./internal/bench/nullplugin")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("building the null plugin: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return "", "", err
	}
	sum := sha256.Sum256(b)
	return bin, hex.EncodeToString(sum[:]), nil
}
