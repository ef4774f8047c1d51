package worker

import (
	"sync"
	"sync/atomic"
)

// outItem is one message waiting to be stored in a stream. msgID is its
// Nats-Msg-Id, so a publish retried after a lost acknowledgement is stored
// once (within the stream's duplicate window).
type outItem struct {
	seq     uint64
	subject string
	msgID   string
	data    []byte
}

// outbox is a bounded FIFO of messages not yet acknowledged by JetStream.
// Items stay in it until their publish is acknowledged; when full, the
// oldest item is dropped and counted. Safe for concurrent use; push never
// blocks (it runs on the manager's emitting goroutine).
type outbox struct {
	mu      sync.Mutex
	items   []outItem
	next    uint64
	max     int
	dropped atomic.Uint64
	stored  atomic.Uint64
	notify  chan struct{}
}

func newOutbox(max int) *outbox {
	return &outbox{max: max, notify: make(chan struct{}, 1)}
}

// push appends an item, dropping the oldest one when full.
func (o *outbox) push(subject, msgID string, data []byte) {
	o.mu.Lock()
	if len(o.items) >= o.max {
		o.items = o.items[1:]
		o.dropped.Add(1)
	}
	o.next++
	o.items = append(o.items, outItem{seq: o.next, subject: subject, msgID: msgID, data: data})
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

// peek returns up to n of the oldest items without removing them.
func (o *outbox) peek(n int) []outItem {
	o.mu.Lock()
	defer o.mu.Unlock()
	if n > len(o.items) {
		n = len(o.items)
	}
	return append([]outItem(nil), o.items[:n]...)
}

// remove deletes the items with the given sequence numbers (acknowledged).
func (o *outbox) remove(done map[uint64]bool) {
	if len(done) == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	kept := o.items[:0]
	for _, it := range o.items {
		if !done[it.seq] {
			kept = append(kept, it)
		}
	}
	clear(o.items[len(kept):])
	o.items = kept
	o.stored.Add(uint64(len(done)))
}

func (o *outbox) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.items)
}
