// Package client is the public Go client of the subbus bus, used by the
// subbus CLI like any other caller. Import it as
// github.com/subbus/subbus/client, with the wire types of
// github.com/subbus/subbus/messages; it speaks that wire protocol over a
// *nats.Conn the caller owns:
//
//   - Do sends one request and decodes its reply;
//   - Stream runs a streamed request (exec with output, followed logs);
//   - Workers discovers the workers through the micro $SRV protocol;
//   - Events reads lifecycle events from the SUBSTRATE_EVENTS stream;
//   - Begin starts a long op in the background; Op, Ops, Wait and Cancel
//     follow it by its operation id (ops.go).
//
// A request that names an instance without a host is sent to the host
// that owns it, found in the fleet inventory (docs/fleet.md).
//
// Errors the worker reports come back as *messages.Error with the wire
// code, so errors.Is(err, messages.ErrNotFound) and messages.CodeOf(err)
// work across the bus. Two errors are the client's own and name driver and
// host: *NoWorkerError (nobody serves the subject) and *TimeoutError
// (nobody answered in time).
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// DefaultTimeout bounds a request whose context has no deadline.
const DefaultTimeout = 30 * time.Second

// Client sends requests over a NATS connection. It is safe for concurrent
// use. Closing the connection is the caller's business.
type Client struct {
	nc      *nats.Conn
	timeout time.Duration
	fleetFields
}

// New returns a client over nc. timeout bounds requests whose context has
// no deadline; 0 means DefaultTimeout.
func New(nc *nats.Conn, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{nc: nc, timeout: timeout}
}

// Conn returns the underlying connection.
func (c *Client) Conn() *nats.Conn { return c.nc }

// NoWorkerError: no worker subscribes to the request subject (NATS "no
// responders"). It matches drivers.ErrUnavailable and nats.ErrNoResponders.
type NoWorkerError struct {
	Driver, Host string
}

func (e *NoWorkerError) Error() string {
	if e.Driver == "" {
		return "no worker answered"
	}
	if e.Host == "" {
		return "no worker serves " + e.Driver
	}
	return "no worker serves " + e.Driver + " on host " + e.Host
}

// Unwrap makes errors.Is work with the unavailable code and NATS's error.
func (e *NoWorkerError) Unwrap() []error {
	return []error{drivers.ErrUnavailable, nats.ErrNoResponders}
}

// TimeoutError: the request was sent but no reply came before the
// deadline. It matches drivers.ErrTimeout and context.DeadlineExceeded.
type TimeoutError struct {
	Driver, Host string
	After        time.Duration
}

func (e *TimeoutError) Error() string {
	where := e.Driver
	if e.Host != "" {
		where += " on " + e.Host
	} else {
		where += " on any host"
	}
	return fmt.Sprintf("timed out waiting for %s after %v", where, e.After.Round(time.Millisecond))
}

// Unwrap makes errors.Is work with the timeout code and the context error.
func (e *TimeoutError) Unwrap() []error { return []error{drivers.ErrTimeout, context.DeadlineExceeded} }

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keyIdempotency
	keyNoWait // set by Begin
)

// WithRequestID makes requests made with ctx carry id (a subject-token-like
// string) instead of a generated one, so a caller can follow one request
// through worker logs, reply and events.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, keyRequestID, id)
}

// WithIdempotencyKey makes a mutating request made with ctx carry key, so
// that retrying it (with the same key) is answered with the first result
// instead of being done twice. Without it each call gets a fresh key.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, keyIdempotency, key)
}

// checkTarget rejects a driver or host that cannot be a subject token
// before anything is sent (the worker checks again).
func checkTarget(driver, host string) error {
	if err := drivers.ValidDriverName(driver); err != nil {
		return err
	}
	if host != "" && !messages.ValidToken(host) {
		return drivers.Errorf(drivers.InvalidArgument, "host: %q is not a valid host name (letters, digits, '-' and '_')", host)
	}
	return nil
}

// newRequest builds the request message: body, request id, deadline and,
// for mutating ops, the idempotency key.
func newRequest(ctx context.Context, subject string, op messages.Op, req any) (*nats.Msg, error) {
	msg := nats.NewMsg(subject)
	if req != nil {
		if err := messages.CheckUTF8(req); err != nil {
			return nil, err
		}
		b, err := json.Marshal(req)
		if err != nil {
			return nil, drivers.Errorf(drivers.InvalidArgument, "encoding the request: %v", err)
		}
		if len(b) > messages.MaxRequestBytes {
			return nil, drivers.Errorf(drivers.InvalidArgument, "request of %d bytes exceeds the limit of %d", len(b), messages.MaxRequestBytes)
		}
		msg.Data = b
	}
	id, _ := ctx.Value(keyRequestID).(string)
	if !messages.ValidRequestID(id) {
		id = messages.NewRequestID()
	}
	msg.Header.Set(messages.HeaderRequestID, id)
	if dl, ok := ctx.Deadline(); ok {
		msg.Header.Set(messages.HeaderDeadline, messages.FormatDeadline(dl))
	}
	if noWait, _ := ctx.Value(keyNoWait).(bool); noWait {
		msg.Header.Set(messages.HeaderNoWait, "1")
	}
	if op.Mutating() {
		key, _ := ctx.Value(keyIdempotency).(string)
		if key == "" {
			key = messages.NewRequestID()
		}
		msg.Header.Set(messages.HeaderIdempotencyKey, key)
	}
	return msg, nil
}

// Do sends op with body req to the worker serving driver on host and
// decodes the reply's result
// into result (which may be nil to discard it). A context without deadline
// gets the client's timeout. Error replies become *drivers.Error.
//
// With host "", a request naming an instance goes to the instance's owner
// and a create is placed (owner resolution, fleet.go); other requests go
// to any worker serving driver.
func (c *Client) Do(ctx context.Context, driver, host string, op messages.Op, req, result any) error {
	_, err := c.DoReply(ctx, driver, host, op, req, result)
	return err
}

// DoReply is Do returning the whole reply as well (request id and the host
// of the worker that answered).
func (c *Client) DoReply(ctx context.Context, driver, host string, op messages.Op, req, result any) (messages.Reply, error) {
	var reply messages.Reply
	if err := checkTarget(driver, host); err != nil {
		return reply, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	host, owned, miss, err := c.route(ctx, driver, host, op, req)
	if err != nil {
		return reply, err
	}
	msg, err := newRequest(ctx, messages.RequestSubject(driver, host, op), op, req)
	if err != nil {
		return reply, err
	}
	start := time.Now()
	resp, err := c.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return reply, c.missError(c.ownerError(c.transportError(ctx, err, driver, host, start), driver, host, owned), driver, miss)
	}
	reply, err = decodeReply(resp)
	if err != nil {
		return reply, c.missError(err, driver, miss)
	}
	if result != nil && len(reply.Result) > 0 {
		if err := json.Unmarshal(reply.Result, result); err != nil {
			return reply, drivers.Errorf(drivers.Internal, "decoding the %s result from %s: %v", op, driver, err)
		}
	}
	return reply, nil
}

// transportError classifies an error of the request itself.
func (c *Client) transportError(ctx context.Context, err error, driver, host string, start time.Time) error {
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return &NoWorkerError{Driver: driver, Host: host}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return &TimeoutError{Driver: driver, Host: host, After: time.Since(start)}
	case errors.Is(err, context.Canceled):
		return ctx.Err()
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining):
		return drivers.Wrap(drivers.Unavailable, err, "NATS connection closed")
	}
	return drivers.Wrap(drivers.Unavailable, err, "request to "+driver)
}

// decodeReply turns a reply message into a Reply, and an error reply into
// a *drivers.Error carrying the wire code.
func decodeReply(m *nats.Msg) (messages.Reply, error) {
	var r messages.Reply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		// Not our JSON: perhaps an error from the micro framework itself.
		if code := m.Header.Get(messages.HeaderErrorCode); code != "" {
			return r, headerError(code, m.Header.Get(messages.HeaderError))
		}
		return r, drivers.Errorf(drivers.Internal, "malformed reply: %v", err)
	}
	if r.Error != nil {
		return r, InfoError(r.Error)
	}
	return r, nil
}

// headerError builds an error from micro's error headers.
func headerError(code, msg string) error {
	n, err := strconv.Atoi(code)
	c := drivers.Code(n)
	if err != nil || c.String() == fmt.Sprintf("code(%d)", n) {
		c = drivers.Internal
	}
	return &drivers.Error{Code: c, Message: msg}
}

// InfoError converts the wire form of an error back into a *drivers.Error.
func InfoError(info *messages.ErrorInfo) error {
	if info == nil {
		return nil
	}
	code := info.Code
	if code == 0 {
		code = drivers.Internal
	}
	return &drivers.Error{Code: code, Message: info.Message, Detail: info.Detail}
}
