package worker

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/subbus/subbus/messages"
)

// Request admission. Unary requests and streamed ones (logs with follow,
// exec with stream) never compete for the same slots:
//
//   - unary requests take one of MaxConcurrent slots; when all are busy the
//     endpoint waits for one (backpressure; no unary request is refused),
//     and no stream ever holds one of them;
//   - streamed requests take one of MaxStreams slots, at most
//     MaxStreamsPerClient of them per client; a stream that finds no slot
//     is answered unavailable (retryable) at once, before any work;
//   - a stream whose client is gone ends within one heartbeat interval
//     (no responders on its inbox when a chunk or heartbeat is re-sent) or
//     StreamIdle, and frees its slot;
//   - a unary exec whose caller is gone is cancelled within
//     callerProbeInterval (watchCaller), and frees its slot.
//
// A client is the prefix of the stream's reply inbox: its first token and
// the first 12 characters of the second. nats.go's inboxes are
// <prefix>.<nuid>, and a nuid starts with 12 random characters fixed for
// the process, so this is one client process (or one custom inbox prefix).

// streamPool bounds streamed requests, overall and per client.
type streamPool struct {
	max, perClient int

	mu       sync.Mutex
	inUse    int
	byClient map[string]int
	rejected atomic.Uint64
}

func newStreamPool(max, perClient int) *streamPool {
	return &streamPool{max: max, perClient: perClient, byClient: map[string]int{}}
}

// acquire takes a slot for client; it reports false (and counts a
// rejection) when the pool or the client's share is full.
func (p *streamPool) acquire(client string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inUse >= p.max || p.byClient[client] >= p.perClient {
		p.rejected.Add(1)
		return false
	}
	p.inUse++
	p.byClient[client]++
	return true
}

func (p *streamPool) release(client string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inUse--
	if p.byClient[client]--; p.byClient[client] <= 0 {
		delete(p.byClient, client)
	}
}

func (p *streamPool) stats() (inUse, clients int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inUse, len(p.byClient)
}

// clientOf is the client key of a reply inbox (see above).
func clientOf(reply string) string {
	root, rest, ok := strings.Cut(reply, ".")
	if !ok {
		return reply
	}
	tok, _, _ := strings.Cut(rest, ".")
	return root + "." + tok[:min(len(tok), 12)]
}

// isStream reports whether req asks for a streamed reply: its op can
// stream (the op table's Streams) and its body says so (Streamed). A body
// that does not parse is unary here; serving it answers invalid_argument.
func isStream(req micro.Request) bool {
	subj := req.Subject()
	spec, ok := messages.Spec(messages.Op(subj[strings.LastIndexByte(subj, '.')+1:]))
	if !ok || !spec.Streams {
		return false
	}
	body := spec.Request()
	if json.Unmarshal(req.Data(), body) != nil {
		return false
	}
	return streamed(body)
}

// callerProbeInterval is how often a running unary exec checks that its
// caller is still there.
var callerProbeInterval = 2 * time.Second

// probeSubject is a subject under the caller's reply inbox that its
// connection receives while it lives, but that is not the reply itself:
// nats.go's request inboxes are <prefix>.<nuid>.<token>, all served by one
// wildcard subscription <prefix>.<nuid>.*, which drops an unknown token. ""
// when the reply is not of that form (it cannot be probed without sending
// the caller a false reply).
func probeSubject(reply string) string {
	i := strings.LastIndexByte(reply, '.')
	if i < 0 || strings.Count(reply, ".") < 2 {
		return ""
	}
	return reply[:i] + ".subbus-probe"
}

// watchCaller cancels a unary exec whose caller went away: every
// callerProbeInterval it sends a request to probeSubject, and a "no
// responders" answer (nobody subscribes to the caller's inbox any more)
// cancels the operation, freeing its slot. A live caller ignores the probe
// (it times out). The returned func stops watching.
func (c *busRequest) watchCaller(cancel context.CancelFunc) func() {
	probe := probeSubject(c.req.Reply())
	if probe == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(callerProbeInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			_, err := c.w.nc.Request(probe, nil, callerProbeInterval/2)
			if errors.Is(err, nats.ErrNoResponders) {
				c.w.callersGone.Add(1)
				c.logger().Info().Msg("the caller went away: operation cancelled")
				cancel()
				return
			}
		}
	}()
	return func() { close(done) }
}
