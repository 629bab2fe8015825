package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The /proc readers, on the test process itself: no vault needed.
func TestProcReadersOnThisProcess(t *testing.T) {
	self, err := ReadProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if self.Pid != os.Getpid() || self.PPid != os.Getppid() || self.State == "" || self.State == "Z" ||
		!strings.HasPrefix(filepath.Base(exe), self.Comm) || self.Comm == "" {
		t.Errorf("ReadProcess(self) = %+v (executable %s, parent %d)", self, exe, os.Getppid())
	}
	if self.namedLikePlugin() {
		t.Errorf("the test binary %q is named like the plugin", self.Comm)
	}
	siblings, err := ChildProcesses(os.Getppid())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range siblings {
		found = found || p.Pid == os.Getpid()
	}
	if !found {
		t.Errorf("ChildProcesses(parent) = %+v, without this process", siblings)
	}
	if got, err := ProcessExe(os.Getpid()); err != nil || got != exe {
		t.Errorf("ProcessExe(self) = %q, %v; want %q", got, err, exe)
	}
	if !InDir(os.Getpid(), filepath.Dir(exe)) || InDir(os.Getpid(), t.TempDir()) {
		t.Errorf("InDir(self) is wrong about %s", filepath.Dir(exe))
	}
	if pids := ChildrenIn(os.Getppid(), filepath.Dir(exe)); len(pids) == 0 {
		t.Errorf("ChildrenIn(parent, the test binary's dir) found nothing")
	}
	if rss, err := ProcessRSS(os.Getpid()); err != nil || rss < 1<<20 {
		t.Errorf("ProcessRSS(self) = %d, %v", rss, err)
	}
	if load, err := LoadAverage(); err != nil || len(strings.Fields(load)) != 3 {
		t.Errorf("LoadAverage() = %q, %v", load, err)
	}
	if _, err := ReadProcess(-1); err == nil {
		t.Errorf("ReadProcess(-1) succeeded")
	}
}
