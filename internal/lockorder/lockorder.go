// Package lockorder checks a program's lock order in test builds. Built with
// -tags lockorder (make test, the campaigns, the e2e tests' plugin binary),
// every Mutex is go-deadlock's, which records per goroutine the order in
// which locks are taken and reports the first time two locks are taken in
// both orders, whether or not that schedule deadlocks; and a goroutine that
// takes a second Outer lock while it holds one is reported at once (what
// go-deadlock cannot see). A report is counted (Inversions; the tests fail on
// any) and written to stderr as one error line of a JSON log, which Vault
// copies into its own log (the e2e tests fail on any). Release builds use
// plain sync and check nothing.
package lockorder

// Outer is a lock of which a goroutine may hold one at a time.
type Outer struct{ mu Mutex }

func (l *Outer) Lock() {
	if Checked {
		takingOuter(l)
	}
	l.mu.Lock()
}

func (l *Outer) Unlock() {
	l.mu.Unlock()
	if Checked {
		releasedOuter(l)
	}
}
