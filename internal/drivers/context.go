package drivers

import "context"

type requestIDKey struct{}

// WithRequestID returns ctx carrying the id of the request a call serves.
// The manager stamps it on the events the call emits; a driver may record
// it on what it creates (the docker driver labels containers with it).
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID returns the request id ctx carries, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}
