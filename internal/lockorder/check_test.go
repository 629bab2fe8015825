//go:build lockorder

package lockorder

import "testing"

// Under -tags lockorder, a goroutine that takes a second Outer lock (for the
// plugin: two account locks, or an account lock and the config lock) is
// reported at once, even though no other goroutine takes them the other way
// round.
func TestASecondOuterLockIsReported(t *testing.T) {
	var locks struct{ locks [2]Outer }
	var config Outer
	before := Inversions()
	defer inversions.Store(before) // this test's reports are meant: TestMain must not count them

	locks.locks[0].Lock()
	locks.locks[1].Lock()
	locks.locks[1].Unlock()
	locks.locks[0].Unlock()
	if n := Inversions() - before; n != 1 {
		t.Errorf("two account locks at once: %d reports, want 1", n)
	}
	locks.locks[0].Lock()
	config.Lock()
	config.Unlock()
	locks.locks[0].Unlock()
	if n := Inversions() - before; n != 2 {
		t.Errorf("an account lock and the config lock at once: %d reports in all, want 2", n)
	}
	// One at a time, as the order wants: nothing.
	locks.locks[0].Lock()
	locks.locks[0].Unlock()
	config.Lock()
	config.Unlock()
	if n := Inversions() - before; n != 2 {
		t.Errorf("one outer lock at a time: %d reports in all, want still 2", n)
	}
}
