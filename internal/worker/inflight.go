package worker

import (
	"sync"
	"time"
)

// inflight counts requests being served. Unlike sync.WaitGroup it allows
// new requests to start while a shutdown waits: micro drains its
// subscriptions asynchronously, so messages received before the service
// stopped may still be dispatched during the wait.
type inflight struct {
	mu     sync.Mutex
	n      int
	idle   chan struct{} // closed while n == 0
	closed bool          // no new requests
}

func newInflight() *inflight {
	ch := make(chan struct{})
	close(ch)
	return &inflight{idle: ch}
}

// add counts a new request; it reports false once close was called.
func (f *inflight) add() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	if f.n == 0 {
		f.idle = make(chan struct{})
	}
	f.n++
	return true
}

// close refuses new requests from now on.
func (f *inflight) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
}

func (f *inflight) done() {
	f.mu.Lock()
	f.n--
	if f.n == 0 {
		close(f.idle)
	}
	f.mu.Unlock()
}

// wait waits until no request is in flight, for at most d, and reports
// whether that happened.
func (f *inflight) wait(d time.Duration) bool {
	deadline := time.After(d)
	for {
		f.mu.Lock()
		if f.n == 0 {
			f.mu.Unlock()
			return true
		}
		idle := f.idle
		f.mu.Unlock()
		select {
		case <-idle:
		case <-deadline:
			return false
		}
	}
}
