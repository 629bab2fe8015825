package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"
)

// The soak's full-disk fault (see soakFullDisk): every node's Raft
// directory is a tmpfs of soakDiskSize, and the fault fills one node's
// (the active one half the time) for 2-6 s, then frees it. A node whose
// vault exited meanwhile (Vault panics when a log entry is stored but its
// database write fails: TestFullDisk saw it) is restarted, as after a kill.

// soakDiskSize is each node's Raft tmpfs: far more than a 30-minute soak
// writes (TestFullDisk saw the two Raft databases grow to 16 MB each), so
// that only the fault fills it. A tmpfs takes memory only as it fills.
const soakDiskSize = 256 << 20

// soakDiskRecovery is how long a node whose disk was freed may take to
// catch up before the soak restarts it.
const soakDiskRecovery = 30 * time.Second

var soakDisks struct {
	sync.Mutex
	byNode map[int]*SmallDisk
}

func init() {
	soakPrepareNode = func(n *Node) error {
		d, err := MountSmallDisk(filepath.Join(n.Dir, "raft"), soakDiskSize)
		if err != nil {
			return err
		}
		soakDisks.Lock()
		defer soakDisks.Unlock()
		if soakDisks.byNode == nil {
			soakDisks.byNode = map[int]*SmallDisk{}
		}
		soakDisks.byNode[n.Index] = d
		return nil
	}
	soakFullDisk = (*soak).fullDisk
}

// unmountSoakDisks unmounts every node's tmpfs; TestSoak registers it
// before the cluster's own cleanup, so that it runs after the cluster stops.
func unmountSoakDisks() error {
	soakDisks.Lock()
	defer soakDisks.Unlock()
	var first error
	for i, d := range soakDisks.byNode {
		if err := d.Unmount(); err != nil && first == nil {
			first = err
		}
		delete(soakDisks.byNode, i)
	}
	return first
}

func (s *soak) fullDisk() (string, error) {
	i, _, role, err := s.pickNode()
	if err != nil {
		return "", err
	}
	soakDisks.Lock()
	d := soakDisks.byNode[s.nc.Nodes[i].Index]
	soakDisks.Unlock()
	if d == nil {
		return "", fmt.Errorf("node%d has no small disk", i+1)
	}
	hold := time.Duration(2+s.rng.Intn(5)) * time.Second
	w := s.rs.begin(i)
	defer s.rs.end(w)
	from := time.Now()
	if err := d.Fill(); err != nil {
		return "", fmt.Errorf("filling node%d's disk: %w", i+1, err)
	}
	time.Sleep(hold)
	if err := d.Free(); err != nil {
		return "", fmt.Errorf("freeing node%d's disk: %w", i+1, err)
	}
	s.ints = append(s.ints, interruption{node: i, from: from, to: time.Now(), kind: "full disk"})
	what := fmt.Sprintf("node%d's (%s) Raft disk full for %s", i+1, role, hold)
	if !s.nc.Nodes[i].Running() {
		s.counts["full disk, vault exited"]++
		what += "; its vault exited (a panic on a failed database write?), restarted"
		if err := s.nc.Restart(i); err != nil {
			return what, err
		}
	} else {
		// A follower whose log write failed can stay behind for good
		// (seen: hashicorp/raft's "failed to get previous log ... log not
		// found", then nothing), until its vault is restarted, which is
		// what an operator would do after a disk incident.
		ctx, cancel := context.WithTimeout(context.Background(), soakDiskRecovery)
		err := s.nc.WaitHealthy(ctx)
		cancel()
		if err != nil {
			s.counts["full disk, node restarted to catch up"]++
			at := time.Now()
			if err := s.nc.Kill(i); err != nil {
				return what, err
			}
			s.ints = append(s.ints, interruption{node: i, from: at, to: at, kind: "kill"})
			if err := s.nc.Restart(i); err != nil {
				return what, err
			}
			what += fmt.Sprintf("; not caught up %s after freeing (%v): restarted", soakDiskRecovery, err)
		}
	}
	ww := s.rs.snapshot(w)
	return what + fmt.Sprintf("; reads failed meanwhile: %d on it, %d on the others", ww.failedNode, ww.failedOn), nil
}
