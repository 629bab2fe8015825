package fakeermeo

import (
	"sync"
	"time"
)

// Clock is a clock that moves only when told, for tests: its Now goes to
// Options.Now, and to the code under test, so that the fake and the client
// see the same time and no test sleeps for a token to expire. It is the one
// test clock of the module's tests.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock that reads start until it is advanced.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
