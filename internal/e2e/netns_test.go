package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNamespacedStartFailureLeavesNothing: a namespaced cluster whose
// start-up fails (here: PrepareNode refuses the second node, before any
// vault starts) removes its namespaces, links and bridges.
func TestNamespacedStartFailureLeavesNothing(t *testing.T) {
	bin, why := FindVault()
	if bin == "" {
		t.Skip("e2e: " + why)
	}
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	var seen []*Node
	refused := errors.New("refused by the test")
	_, err := StartCluster(ClusterOptions{
		VaultBin: bin, WorkDir: t.TempDir(), Mount: "-", Namespaced: true,
		PrepareNode: func(n *Node) error {
			seen = append(seen, n)
			if _, err := os.Stat(filepath.Join("/run/netns", n.NS)); err != nil {
				t.Errorf("%s's namespace %q is not there when PrepareNode runs: %v", n.ID, n.NS, err)
			}
			if _, err := os.Stat(filepath.Join(n.Dir, "raft")); err != nil {
				t.Errorf("%s's raft directory is not there when PrepareNode runs: %v", n.ID, err)
			}
			if n.Index == 1 {
				return refused
			}
			return nil
		},
	})
	if !errors.Is(err, refused) {
		t.Fatalf("StartCluster: %v, want the PrepareNode error", err)
	}
	if len(seen) != 2 {
		t.Fatalf("PrepareNode called for %d nodes, want 2 (it stops at the refusal)", len(seen))
	}
	links, _ := exec.Command("ip", "-o", "link", "show").Output()
	id := strings.TrimSuffix(strings.TrimPrefix(seen[0].NS, "ermeo-"), "-node1")
	for _, name := range []string{"ebc" + id, "ebs" + id, "vc" + id + "n1", "vs" + id + "n1"} {
		if strings.Contains(string(links), " "+name+":") || strings.Contains(string(links), " "+name+"@") {
			t.Errorf("link %s left after the failed start", name)
		}
	}
	for i := 1; i <= 3; i++ {
		ns := "ermeo-" + id + "-node" + string(rune('0'+i))
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("namespace %s left after the failed start", ns)
		}
	}
}
