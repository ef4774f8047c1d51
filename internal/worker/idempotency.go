package worker

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"
)

// idemCache remembers the replies of mutating requests by idempotency key
// so that a retried request returns the first reply instead of acting
// twice. Scope: one worker process, keyed by driver, op and key; entries
// live for ttl and at most max are kept (the oldest go first). A request
// with a known key but a different body is refused. Concurrent duplicates
// wait for the first to finish. Replies with retryable errors are not
// kept, so a retry runs again.
type idemCache struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	entries map[string]*idemEntry
	order   []string // insertion order, for eviction
	now     func() time.Time
}

type idemEntry struct {
	body    [32]byte
	done    chan struct{}
	reply   cachedReply
	expires time.Time
}

// cachedReply is a reply as sent: body and error headers.
type cachedReply struct {
	data    []byte
	errMsg  string
	errCode string
}

func newIdemCache(ttl time.Duration, max int) *idemCache {
	return &idemCache{ttl: ttl, max: max, entries: map[string]*idemEntry{}, now: time.Now}
}

// begin looks key up. When a reply is known (or being made) it waits for
// it and returns it with found=true; a different body gives conflict=true.
// Otherwise it reserves the key: the caller must call finish or abandon.
func (c *idemCache) begin(ctx context.Context, key string, body []byte) (r cachedReply, found, conflict bool, err error) {
	sum := sha256.Sum256(body)
	c.mu.Lock()
	now := c.now()
	e, ok := c.entries[key]
	if ok && !e.expires.IsZero() && now.After(e.expires) {
		delete(c.entries, key)
		ok = false
	}
	if !ok {
		c.evict(now)
		c.entries[key] = &idemEntry{body: sum, done: make(chan struct{})}
		c.order = append(c.order, key)
		c.mu.Unlock()
		return cachedReply{}, false, false, nil
	}
	c.mu.Unlock()
	if e.body != sum {
		return cachedReply{}, false, true, nil
	}
	select {
	case <-e.done:
	case <-ctx.Done():
		return cachedReply{}, false, false, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.reply.data == nil { // abandoned: the first attempt failed retryably
		return cachedReply{}, false, false, errAbandoned
	}
	return e.reply, true, false, nil
}

// finish records the reply of a reserved key and wakes waiters.
func (c *idemCache) finish(key string, r cachedReply) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok && e.reply.data == nil {
		e.reply = r
		e.expires = c.now().Add(c.ttl)
		close(e.done)
	}
}

// abandon forgets a reserved key (the attempt failed retryably).
func (c *idemCache) abandon(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok && e.reply.data == nil {
		delete(c.entries, key)
		close(e.done)
	}
}

// evict removes expired entries and, beyond max, the oldest finished ones.
func (c *idemCache) evict(now time.Time) {
	kept := c.order[:0]
	seen := make(map[string]bool, len(c.order))
	for _, k := range c.order {
		e, ok := c.entries[k]
		if !ok || seen[k] {
			continue
		}
		seen[k] = true
		finished := !e.expires.IsZero()
		if finished && (now.After(e.expires) || len(c.entries) >= c.max) {
			delete(c.entries, k)
			continue
		}
		kept = append(kept, k)
	}
	c.order = kept
}

type idemError string

func (e idemError) Error() string { return string(e) }

const errAbandoned = idemError("the first request with this idempotency key failed; retry")
