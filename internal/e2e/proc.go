package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
)

// Every read of Linux's /proc, by this harness and by internal/bench, is in
// this file, through github.com/prometheus/procfs.

// userHZ is the unit of the CPU times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const userHZ = 100

// procFS is /proc, opened once.
var procFS = sync.OnceValues(procfs.NewDefaultFS)

// proc returns process pid of /proc, or an error if it has no directory
// there.
func proc(pid int) (procfs.Proc, error) {
	fs, err := procFS()
	if err != nil {
		return procfs.Proc{}, err
	}
	return fs.Proc(pid)
}

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
	p, err := proc(pid)
	if err != nil {
		return Process{}, err
	}
	return readProcess(p)
}

// readProcess reads p's stat. procfs ends comm at the last ')', as comm may
// hold spaces and parentheses.
func readProcess(p procfs.Proc) (Process, error) {
	st, err := p.Stat()
	if err != nil {
		return Process{}, fmt.Errorf("process %d: %w", p.PID, err)
	}
	return Process{
		Pid: p.PID, Comm: st.Comm, State: st.State, PPid: st.PPID,
		CPU: time.Duration(st.UTime+st.STime) * time.Second / userHZ,
	}, nil
}

// ChildProcesses returns the processes whose parent is ppid.
func ChildProcesses(ppid int) ([]Process, error) {
	fs, err := procFS()
	if err != nil {
		return nil, err
	}
	procs, err := fs.AllProcs()
	if err != nil {
		return nil, err
	}
	var children []Process
	for _, pr := range procs {
		if p, err := readProcess(pr); err == nil && p.PPid == ppid {
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
	p, err := proc(pid)
	if err != nil {
		return "", err
	}
	exe, err := p.Executable()
	if err == nil && exe == "" {
		// procfs returns "" for a /proc/<pid>/exe that does not exist (a
		// kernel thread, or a process that has just exited): an error here.
		err = &os.PathError{Op: "readlink", Path: fmt.Sprintf("/proc/%d/exe", pid), Err: os.ErrNotExist}
	}
	return exe, err
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
	p, err := proc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0, fmt.Errorf("process %d: %w", pid, err)
	}
	// procfs leaves VmRSS at 0 when the line is missing (a kernel thread, a
	// zombie); a process that runs has at least a page resident.
	if st.VmRSS == 0 {
		return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return int64(st.VmRSS), nil
}

// LoadAverage returns the machine's load averages over 1, 5 and 15 minutes,
// as /proc/loadavg writes them ("0.52 0.58 0.59").
func LoadAverage() (string, error) {
	fs, err := procFS()
	if err != nil {
		return "", err
	}
	l, err := fs.LoadAvg()
	if err != nil {
		return "", fmt.Errorf("/proc/loadavg: %w", err)
	}
	// The kernel writes each with two decimals.
	return fmt.Sprintf("%.2f %.2f %.2f", l.Load1, l.Load5, l.Load15), nil
}
