package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Every read of Linux's /proc, by this harness and by internal/bench, is in
// this file.

// userHZ is the unit of the CPU times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const userHZ = 100

// Process is what /proc/<pid>/stat says of a process.
type Process struct {
	Pid int
	// Comm is the name of its executable, cut to 15 bytes by the kernel.
	Comm string
	// State is R, S, D, Z (a zombie: dead, waiting to be reaped), ...
	State string
	PPid  int
	// CPU is the user plus system CPU time it has used so far (utime +
	// stime), at a resolution of 10 ms.
	CPU time.Duration
}

// ReadProcess reads /proc/<pid>/stat.
func ReadProcess(pid int) (Process, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Process{}, err
	}
	// pid (comm) state ppid ... utime stime ...; comm may hold spaces and
	// parentheses, so it ends at the last ')'.
	lp, rp := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if lp < 0 || rp < lp {
		return Process{}, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	// After "pid (comm)": state(0) ppid(1) ... utime(11) stime(12).
	f := strings.Fields(string(b[rp+1:]))
	if len(f) < 13 {
		return Process{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ppid, err1 := strconv.Atoi(f[1])
	ut, err2 := strconv.ParseInt(f[11], 10, 64)
	st, err3 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return Process{}, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return Process{
		Pid: pid, Comm: string(b[lp+1 : rp]), State: f[0], PPid: ppid,
		CPU: time.Duration(ut+st) * time.Second / userHZ,
	}, nil
}

// ChildProcesses returns the processes whose parent is ppid.
func ChildProcesses(ppid int) ([]Process, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var children []Process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, err := ReadProcess(pid); err == nil && p.PPid == ppid {
			children = append(children, p)
		}
	}
	return children, nil
}

// namedLikePlugin reports whether the process's name is the plugin's (as cut
// by the kernel).
func (p Process) namedLikePlugin() bool {
	return p.Comm != "" && strings.HasPrefix(PluginName, p.Comm)
}

// ProcessExe returns the path of the executable of process pid.
func ProcessExe(pid int) (string, error) {
	return os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
}

// InDir reports whether the executable of the running process pid is in dir.
func InDir(pid int, dir string) bool {
	exe, err := ProcessExe(pid)
	return err == nil && filepath.Dir(exe) == filepath.Clean(dir)
}

// ChildrenIn returns the pids of the running children of parent whose
// executable is in dir: the plugin processes that a vault server started from
// a plugin directory, and nothing else.
func ChildrenIn(parent int, dir string) []int {
	children, _ := ChildProcesses(parent)
	var pids []int
	for _, p := range children {
		if InDir(p.Pid, dir) {
			pids = append(pids, p.Pid)
		}
	}
	return pids
}

// ProcessRSS returns the resident set size of process pid (VmRSS in
// /proc/<pid>/status).
func ProcessRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024, err
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// LoadAverage returns the machine's load averages over 1, 5 and 15 minutes,
// as /proc/loadavg writes them ("0.52 0.58 0.59").
func LoadAverage() (string, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "", fmt.Errorf("bad /proc/loadavg: %q", b)
	}
	return strings.Join(f[:3], " "), nil
}
