package worker

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// maxChunkData bounds the output bytes carried by one chunk.
const maxChunkData = 64 << 10

// withRequestID makes the request id travel into the manager's events.
func withRequestID(ctx context.Context, id string) context.Context {
	return drivers.WithRequestID(ctx, id)
}

// chunkSender sends the chunks of one streamed reply, following the
// protocol on messages.Chunk: each chunk is a request to the client's
// inbox, sent in Seq order, and the next waits for its acknowledgement.
// A missing acknowledgement (no responders, or StreamIdle passed) means
// the client is gone: the sender fails and cancels the operation.
type chunkSender struct {
	c      *busRequest
	inbox  string
	idle   time.Duration // no acknowledgement for this long: the client is gone
	resend time.Duration // an unacknowledged chunk is re-sent after this
	cancel context.CancelFunc

	mu   sync.Mutex
	seq  uint64
	last time.Time
	err  error
}

// send sends one chunk and waits for its acknowledgement.
func (s *chunkSender) send(ch messages.Chunk) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sendLocked(ch)
}

func (s *chunkSender) sendLocked(ch messages.Chunk) error {
	if s.err != nil {
		return s.err
	}
	s.seq++
	ch.Seq = s.seq
	ch.RequestID = s.c.requestID
	data, err := json.Marshal(ch)
	if err != nil {
		return err
	}
	msg := &nats.Msg{Subject: s.inbox, Data: data, Header: nats.Header{messages.HeaderRequestID: []string{s.c.requestID}}}
	if ch.Error != nil {
		m, code := messages.ErrorHeaders(ch.Error.Err())
		msg.Header.Set(messages.HeaderError, m)
		msg.Header.Set(messages.HeaderErrorCode, code)
	}
	// Wait for the acknowledgement in slices of the heartbeat interval,
	// re-sending the same chunk after each: a client that went away
	// meanwhile is then noticed at once (no responders) rather than after
	// the whole idle time. Clients ignore (but acknowledge) a Seq they
	// have already seen.
	deadline := time.Now().Add(s.idle)
	for {
		wait := min(s.resend, time.Until(deadline))
		_, err := s.c.w.nc.RequestMsg(msg, max(wait, time.Millisecond))
		if err == nil {
			s.last = time.Now()
			return nil
		}
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			s.err = drivers.Errorf(drivers.Timeout, "stream client went away")
		case errors.Is(err, nats.ErrTimeout) && time.Now().Before(deadline):
			continue
		default:
			s.err = drivers.Errorf(drivers.Timeout, "stream client did not acknowledge chunk %d: %v", ch.Seq, err)
		}
		s.cancel()
		return s.err
	}
}

// heartbeats sends a heartbeat chunk whenever the stream was quiet for
// interval, until ctx ends.
func (s *chunkSender) heartbeats(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		if time.Since(s.last) >= interval {
			_ = s.sendLocked(messages.Chunk{Heartbeat: true})
		}
		s.mu.Unlock()
	}
}

// write sends exec output as chunks of at most maxChunkData bytes.
type streamWriter struct {
	s      *chunkSender
	stream string
}

func (w streamWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), maxChunkData)
		if err := w.s.send(messages.Chunk{Stream: w.stream, Data: append([]byte(nil), p[:k]...)}); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// stream serves exec with stream and logs with follow. Errors before the
// operation starts (not_found, conflict…) and after it come as the Final
// chunk with Error set; exec's exit code comes in the Final chunk.
func (c *busRequest) stream(ctx context.Context, body any) (drivers.Code, error) {
	inbox := c.req.Reply()
	if inbox == "" {
		return 0, nil // nobody to stream to
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &chunkSender{c: c, inbox: inbox, idle: c.w.opts.StreamIdle, resend: c.w.opts.HeartbeatInterval, cancel: cancel, last: time.Now()}
	hbCtx, stopHB := context.WithCancel(ctx)
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); s.heartbeats(hbCtx, c.w.opts.HeartbeatInterval) }()

	var final messages.Chunk
	var opErr error
	switch r := body.(type) {
	case *messages.ExecRequest:
		res, err := c.m.Exec(ctx, r.Name, r.Options(), streamWriter{s, "stdout"}, streamWriter{s, "stderr"})
		if err == nil {
			code := res.ExitCode
			final.ExitCode = &code
		}
		opErr = err
	case *messages.LogsRequest:
		// A followed stream never ends by itself: end it when the worker
		// shuts down (the client gets a normal final chunk).
		go func() {
			select {
			case <-c.w.stopping:
				cancel()
			case <-ctx.Done():
			}
		}()
		opErr = c.m.Logs(ctx, r.Name, drivers.LogOptions{Lines: r.Lines, Follow: true}, func(l drivers.LogLine) error {
			line := messages.LogLine(l)
			return s.send(messages.Chunk{Stream: l.Stream, Line: &line})
		})
	}
	stopHB()
	<-hbDone
	s.mu.Lock()
	gone := s.err
	s.mu.Unlock()
	if gone != nil {
		// The client is gone (or stopped acknowledging): nobody to tell.
		c.logger().Info().Str("reason", gone.Error()).Msg("stream ended by the client; operation cancelled")
		return 0, nil
	}
	final.Final = true
	if opErr != nil {
		final.Error = messages.InfoOf(opErr)
	}
	// The final chunk is sent even when ctx ended (e.g. a deadline); its
	// acknowledgement is not awaited for long.
	s.idle = min(s.idle, 5*time.Second)
	_ = s.send(final)
	return drivers.CodeOf(opErr), opErr
}
