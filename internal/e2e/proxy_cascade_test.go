package e2e

import (
	"reflect"
	"sort"
	"testing"
	"time"
)

// The proxy test's accounting of Vault Proxy's extra leases, on a timeline
// shaped like the one a fresh clone's run printed: one lease per generation,
// then 50 concurrent misses (here 3) that each made a lease of generation 3,
// then each of their renewers letting go and evicting generation 4's answer,
// and a plugin-made eviction in the middle of generation 5 (a lease cut
// short), which must stay the plugin's. No vault needed.
func TestOverlappingLeasesCountOnlyTheProxysExtras(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 14, 26, 43, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	gens := []*proxyGen{{n: 1, hash: "g1"}, {n: 2, hash: "g2"}, {n: 3, hash: "g3"}, {n: 4, hash: "g4"}, {n: 5, hash: "g5"}}
	a := &proxyAudit{}
	lease := func(id, gen string, read float64, renewals ...float64) {
		a.creds = append(a.creds, auditCreds{at: at(read), leaseID: id, tokenHash: gen})
		for _, r := range renewals {
			a.renewals = append(a.renewals, auditRenewal{at: at(r), leaseID: id})
		}
	}
	lease("A", "g1", 0, 0.002, 2.1, 4.2, 6.3)
	lease("B", "g2", 6.31, 6.312, 8.4, 10.5, 12.28)
	// Three misses the in-flight guard let through, 3 ms apart.
	lease("C1", "g3", 12.30, 12.31, 14.4, 16.5, 18.33)
	lease("C2", "g3", 12.302, 12.31, 14.45, 16.6, 18.36)
	lease("C3", "g3", 12.305, 12.32, 14.5, 16.7, 18.40)
	// C1 lets go at 18.33 (generation 3's usable end): D1 is the read that
	// refreshes. C2 and C3 then evict D1's and D2's answers.
	lease("D1", "g4", 18.34, 18.345, 20.4, 22.5, 24.6)
	lease("D2", "g4", 18.37, 18.375, 20.45, 22.55, 24.65)
	lease("D3", "g4", 18.41, 18.415, 20.5, 22.6, 24.7)
	// A refused renewal does not count as the proxy still renewing.
	a.renewals = append(a.renewals, auditRenewal{at: at(30), leaseID: "E1", err: "refused"})
	// E1's renewer lets go at 26 s, mid-generation: E2 is the plugin's.
	lease("E1", "g5", 24.71, 24.72, 26.0)
	lease("E2", "g5", 26.01, 26.02, 28.1)

	got := sortedIDs(overlappingLeases(gens, a))
	if want := []string{"C2", "C3", "D2", "D3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("overlapping leases %v, want %v", got, want)
	}

	// The proxy's own leases are those not renewable made within
	// proxyMissSpan of a renewable one of their generation: C2, and C0,
	// which the audit log lists before C1. The cascade's D2 and D3 are
	// renewable, C3's answer no reader reported, and E1 (not renewable)
	// came 3 s before E2, its generation's renewable lease: all the plugin's.
	lease("C0", "g3", 12.299)
	renewable := map[string]bool{"A": true, "B": true, "C0": false, "C1": true, "C2": false, "D1": true, "D2": true, "D3": true, "E1": false, "E2": true}
	for i := range a.creds {
		if a.creds[i].leaseID == "E2" {
			a.creds[i].at = at(27.71) // 3 s after E1
		}
	}
	if got, want := sortedIDs(proxysLeases(gens, a, renewable)), []string{"C0", "C2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("the proxy's leases %v, want %v", got, want)
	}

	ev := func(s float64, kind string) proxyEvent { return proxyEvent{at: at(s), kind: kind} }
	pl := &proxyLog{events: []proxyEvent{
		ev(0, "forward"), ev(0.001, "store"),
		ev(6.301, "halted"), ev(6.301, "evict"), ev(6.302, "forward"), ev(6.31, "store"),
		ev(12.281, "evict"), ev(12.29, "forward"), ev(12.291, "forward"), ev(12.292, "forward"),
		ev(18.331, "evict"), ev(18.335, "forward"), ev(18.361, "evict"), ev(18.365, "forward"),
		ev(18.401, "evict"), ev(18.405, "forward"),
		ev(26.001, "evict"), ev(26.005, "forward"),
	}}
	if n := pl.concurrentMisses(); n != 2 {
		t.Errorf("concurrent misses %d, want 2 (the two forwards after the first of three with no eviction between)", n)
	}
}

func sortedIDs(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
