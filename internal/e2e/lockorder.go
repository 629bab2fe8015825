package e2e

import (
	"bufio"
	"os"
	"sort"
	"strings"
	"sync"
)

// PluginBuildTags are the build tags BuildPlugin builds the plugin with. The
// e2e tests set "lockorder", so that the plugin checks its lock order in
// every real Vault they start (internal/lockorder); the
// bench and make cluster build it as released.
var PluginBuildTags = ""

// lockOrderMarker starts the log line the plugin writes for a lock-order
// inversion; Vault copies the plugin's log lines into its own log.
const lockOrderMarker = "lock-order inversion"

var lockOrderFound struct {
	sync.Mutex
	byLog map[string][]string // log path -> the report lines found in it
}

// checkLockOrder reads a server's log, when the server has stopped, for the
// plugin's lock-order reports.
func checkLockOrder(logPath string) {
	f, err := os.Open(logPath)
	if err != nil {
		return
	}
	defer f.Close()
	var found []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), lockOrderMarker) {
			found = append(found, sc.Text())
		}
	}
	lockOrderFound.Lock()
	defer lockOrderFound.Unlock()
	if lockOrderFound.byLog == nil {
		lockOrderFound.byLog = map[string][]string{}
	}
	lockOrderFound.byLog[logPath] = found
}

// LockOrderReports returns the plugin's lock-order reports found in the logs
// of the servers stopped so far, each prefixed with its log's path.
func LockOrderReports() []string {
	lockOrderFound.Lock()
	defer lockOrderFound.Unlock()
	var out []string
	for path, lines := range lockOrderFound.byLog {
		for _, l := range lines {
			out = append(out, path+": "+l)
		}
	}
	sort.Strings(out)
	return out
}
