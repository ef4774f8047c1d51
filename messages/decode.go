package messages

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// EmptyRequest is the body of list, health, capabilities and network-list:
// an empty body, null or {}.
type EmptyRequest struct{}

// ParseOp returns the Op named s, or an invalid_argument error naming the op.
func ParseOp(s string) (Op, error) {
	if spec, ok := Spec(Op(s)); ok {
		return spec.Op, nil
	}
	return "", unknownOp(s)
}

func unknownOp(s string) error {
	return drivers.Errorf(drivers.InvalidArgument, "op: unknown operation %q", truncate(s, 64))
}

// NewRequest returns a pointer to a zero request body for op, the type
// Decode fills: *NameRequest, *CreateRequest, … or *EmptyRequest (see
// OpSpec.Request).
func NewRequest(op Op) (any, error) {
	spec, ok := Spec(op)
	if !ok {
		return nil, unknownOp(string(op))
	}
	return spec.Request(), nil
}

// Decode strictly decodes the body of a request for op and checks its
// shape only. It returns a pointer to the op's request type (see
// NewRequest). Every failure is an invalid_argument error whose message
// names the field: a body over MaxRequestBytes, invalid UTF-8 or a lone
// surrogate escape (checkEncoding: the JSON decoder would rewrite either to
// U+FFFD), malformed JSON, unknown fields, wrong types, trailing data after
// the JSON value, bad durations, unknown ops. Names and values are the
// manager's to check (one place for each rule). Decode never panics.
func Decode(op Op, data []byte) (any, error) {
	req, err := NewRequest(op)
	if err != nil {
		return nil, err
	}
	if len(data) > MaxRequestBytes {
		return nil, drivers.Errorf(drivers.InvalidArgument, "body: %d bytes exceeds the limit of %d", len(data), MaxRequestBytes)
	}
	if err := checkEncoding(data); err != nil {
		return nil, err
	}
	trimmed := bytes.TrimSpace(data)
	if _, empty := req.(*EmptyRequest); empty && (len(trimmed) == 0 || string(trimmed) == "null") {
		return req, nil
	}
	if len(trimmed) == 0 {
		return nil, drivers.Errorf(drivers.InvalidArgument, "body: empty, a JSON object is required for %s", op)
	}
	if r, ok := req.(*NameRequest); ok {
		if name, ok := PlainName(trimmed); ok {
			r.Name = name
			return req, nil
		}
	}
	if trimmed[0] != '{' {
		return nil, drivers.Errorf(drivers.InvalidArgument, "body: must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(req); err != nil {
		return nil, jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, drivers.Errorf(drivers.InvalidArgument, "body: unexpected data after the JSON object")
	}
	if err := validate(req); err != nil {
		return nil, err
	}
	return req, nil
}

// PlainName recognizes the body every get, start or metrics sends,
// {"name":"<name>"} exactly, with a name of printable ASCII needing no
// escape, and returns the name: what Decode returns for it, at a
// twentieth of the cost. Any other body (spaces, escapes, other fields)
// is not recognized (Decode decodes it).
func PlainName(b []byte) (string, bool) {
	const pre, post = `{"name":"`, `"}`
	if len(b) < len(pre)+len(post) || string(b[:len(pre)]) != pre || string(b[len(b)-len(post):]) != post {
		return "", false
	}
	v := b[len(pre) : len(b)-len(post)]
	for _, c := range v {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return "", false
		}
	}
	return string(v), true
}

// jsonError turns a decoding error into invalid_argument naming the field.
func jsonError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			field = "body"
		}
		return drivers.Errorf(drivers.InvalidArgument, "%s: expected %s, got JSON %s", field, typeErr.Type, typeErr.Value)
	case errors.As(err, &syntaxErr):
		return drivers.Errorf(drivers.InvalidArgument, "body: malformed JSON at offset %d: %s", syntaxErr.Offset, syntaxErr.Error())
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return drivers.Errorf(drivers.InvalidArgument, "body: truncated JSON")
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return drivers.Errorf(drivers.InvalidArgument, "%s: unknown field", strings.Trim(f, `"`))
	}
	// Errors from UnmarshalJSON/UnmarshalText methods (error codes, measures, base64).
	return drivers.Errorf(drivers.InvalidArgument, "body: %s", truncate(strings.TrimPrefix(msg, "json: "), 200))
}

// validate checks the shape of the wire fields that are encodings: a stop
// timeout is a positive Go duration string. What values mean (names,
// templates, limits, networks, commands) is checked once, by the manager.
func validate(req any) error {
	if r, ok := req.(*StopRequest); ok && r.Timeout != "" {
		d, err := time.ParseDuration(r.Timeout)
		if err != nil || d <= 0 {
			return drivers.Errorf(drivers.InvalidArgument, "timeout: %q is not a positive duration like \"30s\"", truncate(r.Timeout, 64))
		}
	}
	return nil
}

// StopOptions converts a decoded stop/restart request (validated by Decode).
func (r StopRequest) StopOptions() drivers.StopOptions {
	d, _ := time.ParseDuration(r.Timeout)
	return drivers.StopOptions{Force: r.Force, Timeout: d}
}

// InstanceName returns the instance a decoded request is about ("" for
// none), for logs: every request type names it with an Instance method.
func InstanceName(req any) string {
	if r, ok := req.(interface{ Instance() string }); ok {
		return r.Instance()
	}
	return ""
}

// ResultReply encodes a successful reply. Results that cannot be encoded
// give an internal error reply instead.
func ResultReply(requestID, host string, result any) []byte {
	raw, err := marshalResult(result)
	if err != nil {
		return ErrorReply(requestID, host, drivers.Errorf(drivers.Internal, "encoding the result: %v", err))
	}
	// Reply{RequestID, Host, Result: raw}, written directly: json.Marshal
	// would scan and compact raw again (a third of the cost of a get's
	// reply). A test checks the bytes equal json.Marshal's.
	b := make([]byte, 0, len(raw)+len(requestID)+len(host)+40)
	b = append(b, '{')
	if requestID != "" {
		b = appendJSONField(b, "request_id", requestID)
	}
	if host != "" {
		b = appendJSONField(b, "host", host)
	}
	b = append(b, `"result":`...)
	b = append(b, raw...)
	return append(b, '}')
}

// appendJSONField appends "key":"value", as json.Marshal writes them: a
// value with characters it would escape is marshalled.
func appendJSONField(b []byte, key, value string) []byte {
	b = append(b, '"')
	b = append(b, key...)
	b = append(b, `":`...)
	plain := true
	for i := 0; i < len(value) && plain; i++ {
		c := value[i]
		plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	if plain {
		b = append(b, '"')
		b = append(b, value...)
		b = append(b, '"')
	} else {
		v, _ := json.Marshal(value)
		b = append(b, v...)
	}
	return append(b, ',')
}

// ErrorReply encodes an error reply for err (classified with drivers.CodeOf).
func ErrorReply(requestID, host string, err error) []byte {
	b, _ := json.Marshal(Reply{RequestID: requestID, Host: host, Error: InfoOf(err)})
	return b
}

// ErrorHeaders returns micro's error headers for err: the message (one
// line, at most 512 bytes) and the numeric code.
func ErrorHeaders(err error) (message, code string) {
	info := InfoOf(err)
	text := info.Message
	if info.Detail != "" {
		text += ": " + info.Detail
	}
	msg := strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, text)
	if msg == "" {
		msg = info.Code.String()
	}
	return truncate(msg, 512), fmt.Sprint(int(info.Code))
}

// FormatDeadline formats an absolute deadline for HeaderDeadline.
func FormatDeadline(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// ParseDeadline parses HeaderDeadline. An empty value means no deadline
// (ok=false, nil error); a malformed one is invalid_argument.
func ParseDeadline(v string) (deadline time.Time, ok bool, err error) {
	if v == "" {
		return time.Time{}, false, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, false, drivers.Errorf(drivers.InvalidArgument, "header %s: %q is not an RFC 3339 time", HeaderDeadline, truncate(v, 64))
	}
	return t, true, nil
}

// NewRequestID returns a fresh random request id (32 hex digits). An id
// correlates, it guards nothing: it comes from math/rand/v2's randomly
// seeded ChaCha8 generator, which costs no system call per request (the
// kernel's getrandom did, on every request that came without an id).
func NewRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

// ValidRequestID reports whether a caller-supplied request id is acceptable
// (a subject-token-like string of at most 128 characters); others are
// replaced by a generated one.
func ValidRequestID(id string) bool { return ValidToken(id) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
