package fakeermeo

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"
)

// FaultKind is a way for the token endpoint to misbehave.
type FaultKind int

const (
	// FaultDelay waits Fault.Delay (real time; it gives up, without
	// processing the grant, if the request's context ends first), then
	// processes the request normally.
	FaultDelay FaultKind = iota + 1
	// FaultStatus does not process the grant: it answers Fault.Status
	// (default 502) with an HTML body.
	FaultStatus
	// FaultTooManyRequests does not process the grant: it answers 429 with
	// an HTML body, and Retry-After: Fault.RetryAfter if that is not empty.
	FaultTooManyRequests
	// FaultReset does not process the grant: it closes the connection with
	// SO_LINGER 0 (a TCP reset), without an answer.
	FaultReset
	// FaultLostAfterCommit processes and commits the grant (a refresh
	// consumes the old refresh token and the new pair exists), then closes
	// the connection without an answer.
	FaultLostAfterCommit
	// FaultNonJSON does not process the grant: it answers 200 with a
	// text/html body.
	FaultNonJSON
	// FaultHold processes and commits the grant, then holds the answer back
	// until ReleaseHeld is called (then answers) or the request's context
	// ends (then closes the connection without an answer).
	FaultHold
)

var faultNames = map[FaultKind]string{
	FaultDelay:           "delay",
	FaultStatus:          "status",
	FaultTooManyRequests: "too_many_requests",
	FaultReset:           "reset",
	FaultLostAfterCommit: "lost_after_commit",
	FaultNonJSON:         "non_json",
	FaultHold:            "hold",
}

// String returns the kind's name as used in the counters' "fault_<name>"
// outcomes: "delay", "status", "too_many_requests", "reset",
// "lost_after_commit", "non_json" or "hold".
func (k FaultKind) String() string {
	if name, ok := faultNames[k]; ok {
		return name
	}
	return "unknown"
}

// processes reports whether the grant is processed under this kind of fault
// (FaultDelay processes it only if the request is still there after the delay).
func (k FaultKind) processes() bool {
	return k == FaultDelay || k == FaultLostAfterCommit || k == FaultHold
}

// Fault describes a misbehaviour of POST /oauth/v2/token.
type Fault struct {
	Kind FaultKind
	// Grant limits the fault to requests with this grant_type ("password"
	// or "refresh_token"); "" matches every request.
	Grant string
	// Times is how many matching requests the fault affects; 0 means every
	// one until ClearFaults.
	Times int
	// Status is FaultStatus's HTTP status (default 502).
	Status int
	// RetryAfter is FaultTooManyRequests's Retry-After header, if not empty.
	RetryAfter string
	// Delay is FaultDelay's wait.
	Delay time.Duration
}

type activeFault struct {
	Fault
	left int // requests left to affect, when Times > 0
}

// InjectFault appends f to the faults. A token request gets the first
// fault that matches its grant type and has requests left to affect.
// It panics on an unknown Kind.
func (s *Server) InjectFault(f Fault) {
	if _, ok := faultNames[f.Kind]; !ok {
		panic(fmt.Sprintf("fakeermeo: unknown FaultKind %d", int(f.Kind)))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &activeFault{Fault: f, left: f.Times})
}

// ClearFaults removes every fault. Requests already faulted are not affected.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// ReleaseHeld lets every request held by FaultHold right now send its answer.
func (s *Server) ReleaseHeld() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.release)
	s.release = make(chan struct{})
}

// Held returns how many requests FaultHold is holding right now.
func (s *Server) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}

// takeFaultLocked picks the fault for a request with this grant type, and
// uses up one of its times.
func (s *Server) takeFaultLocked(grantType string) *Fault {
	for _, f := range s.faults {
		if f.Times > 0 && f.left == 0 {
			continue
		}
		if f.Grant != "" && f.Grant != grantType {
			continue
		}
		if f.Times > 0 {
			f.left--
		}
		picked := f.Fault
		return &picked
	}
	return nil
}

// hold blocks until ReleaseHeld or the end of ctx, and reports whether it
// was released.
func (s *Server) hold(ctx context.Context) bool {
	s.mu.Lock()
	release := s.release
	s.held++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.held--
		s.mu.Unlock()
	}()
	select {
	case <-release:
		return true
	case <-ctx.Done():
		return false
	}
}

// sleepContext waits d, and reports false if ctx ended first.
func sleepContext(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// dropConnection closes the request's connection without an answer; with
// reset, it closes it with SO_LINGER 0 so that the peer gets a TCP reset.
func dropConnection(w http.ResponseWriter, reset bool) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not hijackable (HTTP/2): abort the stream instead.
		panic(http.ErrAbortHandler)
	}
	if reset {
		raw := conn
		if tc, ok := raw.(*tls.Conn); ok {
			raw = tc.NetConn()
		}
		if tcp, ok := raw.(*net.TCPConn); ok {
			tcp.SetLinger(0)
		}
	}
	conn.Close()
}
