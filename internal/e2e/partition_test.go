package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// The partition test's shape: as the failover test's (3 accounts, 6 s
// tokens, min_ttl 2 s, 50 readers), with the active node cut off from Raft
// for 6 to 12 s, three times. Raft's leader lease is 500 ms with
// performance_multiplier 1: each partition outlasts it many times over.
const (
	partitions       = 3
	partitionMin     = 6 * time.Second
	partitionJitter  = 6 * time.Second
	afterNewActive   = 3 * time.Second // the least a partition lasts once the majority has a new active node
	steadyMin        = 2 * time.Second
	steadyJitter     = 4 * time.Second
	releaseMin       = 200 * time.Millisecond
	releaseJitter    = 2300 * time.Millisecond
	partitionTimeout = 60 * time.Second
)

// partition is what happened around one cut of the active node.
type partition struct {
	isolated    int
	full        bool // the service link was cut too
	cutAt       time.Time
	steppedDown time.Duration // cut to the isolated node's sys/health saying standby (or not answering)
	newActive   int
	newActiveAt time.Duration
	healAt      time.Duration
	healthyAt   time.Duration
	activeAfter int // the active node once healthy again
	w           *window

	// A refresh held in flight at the fake when the cut came, if any.
	held       string // the account rotated on the isolated node
	releasedAt time.Duration
	rotateErr  error
}

// TestPartitionedLeader cuts the active node of a 3-node namespaced cluster
// off from the others' Raft (its cluster link down; its API and its way to
// Ermeo kept), under 50 readers spread over every node, for longer than
// Raft's leader lease, three times at random moments, once while a refresh
// is held in flight at the fake (released after the cut); then heals it.
// The isolated node may still reach Ermeo: it must not spend a refresh
// token whose intent record did not reach a quorum, and no token may be
// sent again after a node stored its successor. At the end every account is
// usable, no chain was lost by the plugin and no token used twice.
func TestPartitionedLeader(t *testing.T) {
	seed := envInt64("ERMEO_PARTITION_SEED", 20261201) // fixed for make test
	rng := rand.New(rand.NewSource(seed))
	fmt.Printf("partition: seed %d (ERMEO_PARTITION_SEED=%d to replay the schedule)\n", seed, seed)
	t.Logf("seed %d", seed)

	nc := startNamespacedCluster(t, fakeermeo.Options{AccessTokenTTL: clusterTokenTTL}, nil)
	writeAccounts(t, nc, clusterAccounts, clusterMinTTL)
	rs := startReaders(t, nc, clusterReaders, clusterAccounts)
	runStart := time.Now()
	holdAt := rng.Intn(partitions)

	var parts []*partition
	for p := 0; p < partitions; p++ {
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		err := nc.WaitHealthy(ctx)
		cancel()
		if err != nil {
			t.Fatalf("before partition %d: %v", p+1, err)
		}
		time.Sleep(steadyMin + time.Duration(rng.Int63n(int64(steadyJitter))))
		pt, err := partitionActive(nc, rs, rng, p == holdAt, false)
		if pt != nil {
			parts = append(parts, pt)
		}
		if err != nil {
			t.Fatalf("partition %d: %v", p+1, err)
		}
	}
	time.Sleep(steadyMin)
	rs.Stop()
	runFor := time.Since(runStart)

	unusable := endCheck(t, nc, clusterAccounts)
	reqs := nc.fake.TokenRequests()
	counters := nc.fake.Counters()
	var ints []interruption
	for _, pt := range parts {
		ints = append(ints, pt.interruption())
	}
	audit := auditChains(nc, reqs, ints)
	lostByPlugin, lostLines := lostByPluginInLogs(nc)

	// The figures.
	served, failed := rs.totals()
	fmt.Printf("partition: %d readers over %d nodes for %s, %d accounts (tokens of %s, min_ttl %s), %d partitions of the active node (cluster link down at both ends; API and Ermeo reachable)\n",
		clusterReaders, len(nc.Nodes), runFor.Round(time.Millisecond), len(clusterAccounts), clusterTokenTTL, clusterMinTTL, len(parts))
	for i, pt := range parts {
		w := rs.snapshot(pt.w)
		fmt.Printf("partition %d: at %s (+%s) cut node%d (active); its sys/health left active at +%s; node%d active at +%s; healed at +%s, healthy at +%s (active then: node%d)\n",
			i+1, pt.cutAt.UTC().Format("15:04:05.000"), pt.cutAt.Sub(runStart).Round(time.Millisecond), pt.isolated+1,
			pt.steppedDown.Round(time.Millisecond), pt.newActive+1, pt.newActiveAt.Round(time.Millisecond),
			pt.healAt.Round(time.Millisecond), pt.healthyAt.Round(time.Millisecond), pt.activeAfter+1)
		fmt.Printf("partition %d:   reads until healthy: node%d (isolated) %d served, %d failed; the majority side %d served, %d failed\n",
			i+1, pt.isolated+1, w.servedNode, w.failedNode, w.servedOn, w.failedOn)
		if pt.held != "" {
			fmt.Printf("partition %d:   a refresh of %s was held at the fake (token spent, answer held) when the cut came; released at +%s; the rotate on node%d got: %v\n",
				i+1, pt.held, pt.releasedAt.Round(time.Millisecond), pt.isolated+1, outcomeOf(pt.rotateErr))
		}
		if kinds := pluginLogKinds(nc.Nodes[pt.isolated], pt.cutAt, pt.cutAt.Add(pt.healAt)); len(kinds) > 0 {
			fmt.Printf("partition %d:   node%d's plugin while cut off: %s\n", i+1, pt.isolated+1, strings.Join(kinds, "; "))
		}
		for _, line := range describeRequests(nc, reqs, pt) {
			fmt.Printf("partition %d:   %s\n", i+1, line)
		}
	}
	fmt.Printf("partition: reads served %d, failed %d; tokens the fake did not accept: %d; tokens expired in transit: %d%s\n",
		served, failed, rs.invalid, rs.expiredInTransit, rs.transitNote())
	rs.printErrorKinds("partition:")
	fmt.Printf("partition: refreshes %d (outcomes %v), password grants %v\n",
		counters.Grants["refresh_token"]["success"], counters.Grants["refresh_token"], counters.Grants["password"])
	fmt.Printf("partition: spent tokens presented again %d: after a dropped answer %d, after an answer that reached only a node cut off from the quorum %d, or killed before it could store it %d; tokens used twice %d (the fake's raw count of presentations after a delivered answer: %d)\n",
		audit.replays, audit.afterDropped, audit.afterCutOff, audit.afterKill, audit.usedTwice, counters.RefreshTokensUsedTwice)
	fmt.Printf("partition: chains lost in flight %d (found gone by a new active node through the intent record), chains lost by the plugin %d; live refresh tokens at the fake %d\n",
		counters.DistinctTokensReplayed, lostByPlugin, counters.LiveRefreshTokens)

	if rs.invalid > 0 {
		t.Errorf("readers got %d tokens the fake does not accept: %s", rs.invalid, strings.Join(rs.invalidSample, "; "))
	}
	if audit.usedTwice > 0 {
		t.Errorf("%d refresh tokens used twice: %s", audit.usedTwice, strings.Join(audit.usedTwiceSamples, "; "))
	}
	if lostByPlugin > 0 {
		t.Errorf("%d chains lost by the plugin (found gone with no intent record):\n%s", lostByPlugin, strings.Join(lostLines, "\n"))
	}
	if unusable > 0 {
		t.Errorf("%d account reads unusable at the end", unusable)
	}
	if counters.Grants["refresh_token"]["success"] < len(parts) {
		t.Errorf("only %d refreshes: the run did not exercise refreshes across partitions", counters.Grants["refresh_token"]["success"])
	}
	for i, pt := range parts {
		if pt.newActive == pt.isolated {
			t.Errorf("partition %d: the isolated node is the new active node", i+1)
		}
	}
	stopAndCheck(t, nc)
}

// partitionActive cuts the active node's cluster link (with full, its
// service link too: then its clients and its plugin's way to Ermeo are cut
// as well), with, if hold, a
// refresh held in flight at the fake (its intent record committed, its
// token spent, its answer released at a random moment after the cut); waits
// for a new active node on the majority side; heals the link after
// partitionMin plus up to partitionJitter (at least afterNewActive after
// the new active node) and waits until the cluster is healthy. It returns
// what happened, also on error (when it could not go on).
func partitionActive(nc *nsCluster, rs *nsReaders, rng *rand.Rand, hold, full bool) (*partition, error) {
	active, err := nc.Leader()
	if err != nil {
		return nil, err
	}
	pt := &partition{isolated: active, newActive: -1, activeAfter: -1, full: full}
	release := releaseMin + time.Duration(rng.Int63n(int64(releaseJitter)))
	length := partitionMin + time.Duration(rng.Int63n(int64(partitionJitter)))

	var rotated sync.WaitGroup
	defer rotated.Wait()
	if hold {
		// A refresh whose intent record is committed, and whose answer
		// the fake holds back once it has spent the token.
		pt.held = clusterAccounts[rng.Intn(len(clusterAccounts))]
		nc.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultHold, Grant: "refresh_token", Times: 1})
		rotated.Add(1)
		go func() {
			defer rotated.Done()
			_, err := nc.Client(active).Logical().Write(nc.Mount+"/accounts/"+pt.held+"/rotate", nil)
			pt.rotateErr = err
		}()
		deadline := time.Now().Add(15 * time.Second)
		for nc.fake.Held() == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if nc.fake.Held() == 0 {
			nc.fake.ClearFaults()
			nc.fake.ReleaseHeld()
			return pt, errors.New("no refresh reached the fake to be held")
		}
	}

	pt.w = rs.begin(active)
	pt.cutAt = pt.w.start
	defer rs.end(pt.w)
	if err := nc.Partition(active, full); err != nil {
		return pt, err
	}
	if hold {
		time.AfterFunc(release, nc.fake.ReleaseHeld)
		pt.releasedAt = release
	}

	// The isolated node steps down; the majority elects a new leader.
	var watched sync.WaitGroup
	watched.Add(1)
	go func() {
		defer watched.Done()
		for time.Since(pt.cutAt) < partitionTimeout {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			still := nc.isActive(ctx, nc.Nodes[active])
			cancel()
			if !still {
				pt.steppedDown = time.Since(pt.cutAt)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	var at time.Time
	pt.newActive, at = waitNewActive(nc, active, partitionTimeout)
	watched.Wait()
	if pt.newActive < 0 {
		_ = nc.Heal(active)
		return pt, fmt.Errorf("no new active node on the majority side %s after cutting node%d", partitionTimeout, active+1)
	}
	pt.newActiveAt = at.Sub(pt.cutAt)
	if length < pt.newActiveAt+afterNewActive {
		length = pt.newActiveAt + afterNewActive
	}
	time.Sleep(time.Until(pt.cutAt.Add(length)))
	if err := nc.Heal(active); err != nil {
		return pt, fmt.Errorf("healing: %w", err)
	}
	pt.healAt = time.Since(pt.cutAt)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	err = nc.WaitHealthy(ctx)
	cancel()
	if err != nil {
		return pt, fmt.Errorf("after healing node%d: %w", active+1, err)
	}
	pt.healthyAt = time.Since(pt.cutAt)
	pt.activeAfter, _ = nc.Leader()
	return pt, nil
}

// interruptions lists the partitions as interruptions, for auditChains.
func (pt *partition) interruption() interruption {
	return interruption{node: pt.isolated, from: pt.cutAt, to: pt.cutAt.Add(pt.healAt), kind: "partition"}
}

// describeRequests lists the token requests that the isolated node sent
// from the cut to the heal, and the held one, with how each ended and what
// became of the token it presented.
func describeRequests(nc *nsCluster, reqs []fakeermeo.TokenRequest, pt *partition) []string {
	var lines []string
	heal := pt.cutAt.Add(pt.healAt)
	n := 0
	for i, r := range reqs {
		held := r.Fault == "hold" && r.Received.Before(pt.cutAt) && !r.Ended.Before(pt.cutAt)
		during := nc.nodeOfRequest(r) == pt.isolated && !r.Received.Before(pt.cutAt) && !r.Received.After(heal)
		if !held && !during {
			continue
		}
		n++
		what := fmt.Sprintf("node%d sent a %s grant at %+.3fs", nc.nodeOfRequest(r)+1, r.GrantType, r.Received.Sub(pt.cutAt).Seconds())
		if held {
			what = fmt.Sprintf("the held refresh, sent by node%d at %+.3fs", nc.nodeOfRequest(r)+1, r.Received.Sub(pt.cutAt).Seconds())
		}
		how := r.Outcome
		if r.Fault != "" {
			how += " (fault " + r.Fault + ")"
		}
		if r.Delivered {
			how += fmt.Sprintf(", answer delivered at %+.3fs", r.Ended.Sub(pt.cutAt).Seconds())
		} else {
			how += fmt.Sprintf(", answer dropped at %+.3fs", r.Ended.Sub(pt.cutAt).Seconds())
		}
		// What became of the chain: was its new refresh token ever used,
		// and who presented the spent one again?
		fate := ""
		if r.GrantType == "refresh_token" && r.Outcome == "success" {
			for _, later := range reqs[i+1:] {
				if later.GrantType != "refresh_token" {
					continue
				}
				if later.Presented == r.Issued {
					fate = fmt.Sprintf("; its new refresh token was next sent by node%d at %+.3fs (%s): the pair was stored", nc.nodeOfRequest(later)+1, later.Received.Sub(pt.cutAt).Seconds(), later.Outcome)
					break
				}
				if later.Presented == r.Presented {
					fate = fmt.Sprintf("; the spent token was sent again by node%d at %+.3fs (%s): the pair never reached a quorum, the intent record did, and the new active node found out",
						nc.nodeOfRequest(later)+1, later.Received.Sub(pt.cutAt).Seconds(), later.Outcome)
					break
				}
			}
			if fate == "" {
				fate = "; neither its new refresh token nor the spent one was sent again"
			}
		}
		lines = append(lines, what+": "+how+fate)
	}
	if n == 0 {
		lines = append(lines, fmt.Sprintf("node%d sent no token request to the fake while cut off", pt.isolated+1))
	}
	return lines
}

func outcomeOf(err error) string {
	if err == nil {
		return "success"
	}
	return errorKind(err)
}

func envInt64(name string, def int64) int64 {
	if v, err := strconv.ParseInt(strings.TrimSpace(os.Getenv(name)), 10, 64); err == nil {
		return v
	}
	return def
}
