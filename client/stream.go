package client

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// ErrStopStream may be returned by a Stream callback to end the stream
// early without an error: Stream then returns nil.
var ErrStopStream = errors.New("stop stream")

// streamIdle is how long Stream waits for the next chunk before deciding
// the worker is gone. The worker sends heartbeats well within it.
var streamIdle = messages.DefaultStreamIdle + messages.HeartbeatInterval

// Stream runs a streamed request (exec with Stream set, logs with Follow)
// following the protocol documented on messages.Chunk: it subscribes to a
// fresh inbox, publishes the request with the inbox as reply subject, and
// calls fn for every chunk in order (heartbeats are acknowledged and not
// passed on), acknowledging each after fn returns.
//
// It returns nil after the Final chunk (which fn also receives; it carries
// the exit code of an exec) unless that chunk carries an error, which is
// returned as a *drivers.Error. When fn returns an error, or ctx ends, Stream
// unsubscribes — the worker's next chunk then finds no responder and the
// worker cancels the operation — and returns fn's error (nil for
// ErrStopStream) or the context's. The request carries a deadline header
// only if ctx has a deadline: a followed stream may last forever.
//
// With host "", the request goes to the instance's owner as with Do.
func (c *Client) Stream(ctx context.Context, driver, host string, op messages.Op, req any, fn func(messages.Chunk) error) error {
	if err := checkTarget(driver, host); err != nil {
		return err
	}
	host, owned, miss, err := c.route(ctx, driver, host, op, req)
	if err != nil {
		return err
	}
	err = c.stream(ctx, driver, host, op, req, fn)
	return c.missError(c.ownerError(err, driver, host, owned), driver, miss)
}

func (c *Client) stream(ctx context.Context, driver, host string, op messages.Op, req any, fn func(messages.Chunk) error) error {
	msg, err := newRequest(ctx, messages.RequestSubject(driver, host, op), op, req)
	if err != nil {
		return err
	}
	inbox := c.nc.NewInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := c.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return drivers.Wrap(drivers.Unavailable, err, "subscribing to the stream inbox")
	}
	defer func() {
		// Unsubscribe, then acknowledge any chunk still waiting so the
		// worker's next one finds no responder and it cancels at once.
		_ = sub.Unsubscribe()
		for {
			select {
			case m := <-ch:
				ack(m)
			default:
				return
			}
		}
	}()
	msg.Reply = inbox
	if err := c.nc.PublishMsg(msg); err != nil {
		return drivers.Wrap(drivers.Unavailable, err, "publishing the request")
	}

	start := time.Now()
	idle := time.NewTimer(streamIdle)
	defer idle.Stop()
	var last uint64
	for {
		var m *nats.Msg
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return &TimeoutError{Driver: driver, Host: host, After: time.Since(start)}
			}
			return ctx.Err()
		case <-idle.C:
			return &TimeoutError{Driver: driver, Host: host, After: time.Since(start)}
		case m = <-ch:
		}
		idle.Reset(streamIdle)

		// No responders arrives on the inbox as an empty 503 status message.
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
			return &NoWorkerError{Driver: driver, Host: host}
		}
		// An error before the stream started may come as a plain error
		// reply (micro's error headers, a Reply body) rather than a chunk.
		if code := m.Header.Get(messages.HeaderErrorCode); code != "" {
			ack(m)
			if _, err := decodeReply(m); err != nil {
				return err
			}
			return headerError(code, m.Header.Get(messages.HeaderError))
		}
		var chunk messages.Chunk
		if err := json.Unmarshal(m.Data, &chunk); err != nil {
			return drivers.Errorf(drivers.Internal, "malformed stream chunk: %v", err)
		}
		if chunk.Error != nil && !chunk.Final {
			ack(m)
			return InfoError(chunk.Error)
		}
		// A chunk resent after a lost acknowledgement: acknowledge, skip.
		if chunk.Seq != 0 && chunk.Seq <= last {
			ack(m)
			continue
		}
		if chunk.Seq != 0 && last != 0 && chunk.Seq != last+1 {
			return drivers.Errorf(drivers.Internal, "stream chunk %d arrived after %d: chunks were lost", chunk.Seq, last)
		}
		if chunk.Seq != 0 {
			last = chunk.Seq
		}
		if chunk.Final {
			ack(m)
			if chunk.Error != nil {
				return InfoError(chunk.Error)
			}
			if err := fn(chunk); err != nil && !errors.Is(err, ErrStopStream) {
				return err
			}
			return nil
		}
		if chunk.Heartbeat {
			ack(m)
			continue
		}
		if err := fn(chunk); err != nil {
			// Unsubscribe before acknowledging, so that the worker's next
			// chunk finds no responder at once and it cancels the operation.
			_ = sub.Unsubscribe()
			ack(m)
			if errors.Is(err, ErrStopStream) {
				return nil
			}
			return err
		}
		ack(m)
	}
}

// ack acknowledges a chunk: any reply to the worker's request will do.
func ack(m *nats.Msg) {
	if m.Reply != "" {
		_ = m.Respond(nil)
	}
}
