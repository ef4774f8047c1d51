package client

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// EventQuery selects events. Empty Driver, Host, Instance and Type match
// anything.
type EventQuery struct {
	Driver, Host, Instance, Type string
	// Since starts at the first event stored at or after this time. Zero:
	// every stored event, or (with Follow) only new ones.
	Since time.Time
	// Follow keeps reading new events until ctx ends; without it Events
	// returns once it has delivered every event stored when it started.
	Follow bool
}

// Events reads lifecycle events from the SUBSTRATE_EVENTS stream in stream
// order with an ordered (ephemeral, in-memory) consumer, calling fn for
// each. It returns nil when caught up (without Follow), when fn returns
// ErrStopStream, or when ctx is cancelled while following; fn's other
// errors are returned. Messages that are not CloudEvents are skipped.
func (c *Client) Events(ctx context.Context, q EventQuery, fn func(messages.CloudEvent) error) error {
	for field, v := range map[string]string{"driver": q.Driver, "host": q.Host, "type": q.Type} {
		if v != "" && !messages.ValidToken(v) {
			return drivers.Errorf(drivers.InvalidArgument, "%s: %q is not a valid subject token", field, v)
		}
	}
	if q.Instance != "" {
		if err := drivers.ValidateName("instance", q.Instance); err != nil {
			return err
		}
	}
	js, err := jetstream.New(c.nc)
	if err != nil {
		return drivers.Wrap(drivers.Unavailable, err, "JetStream")
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{messages.EventFilter(q.Driver, q.Host, q.Instance, q.Type)},
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: 30 * time.Second,
	}
	switch {
	case !q.Since.IsZero():
		since := q.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	case q.Follow:
		cfg.DeliverPolicy = jetstream.DeliverNewPolicy
	}
	setupCtx, cancel := context.WithTimeout(ctx, c.timeout)
	cons, err := js.OrderedConsumer(setupCtx, messages.EventsStream, cfg)
	cancel()
	if err != nil {
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			return drivers.Errorf(drivers.NotFound, "stream %s does not exist (no worker has created it yet)", messages.EventsStream)
		case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
			return drivers.Wrap(drivers.Unavailable, err, "JetStream is not enabled on this NATS server")
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, jetstream.ErrNoStreamResponse):
			return drivers.Wrap(drivers.Timeout, err, "creating a consumer on "+messages.EventsStream)
		}
		return drivers.Wrap(drivers.Unavailable, err, "creating a consumer on "+messages.EventsStream)
	}
	if !q.Follow {
		if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
			return nil
		}
	}
	it, err := cons.Messages()
	if err != nil {
		return drivers.Wrap(drivers.Unavailable, err, "reading "+messages.EventsStream)
	}
	defer it.Stop()
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				if q.Follow && errors.Is(ctx.Err(), context.Canceled) {
					return nil
				}
				return ctx.Err()
			}
			return drivers.Wrap(drivers.Unavailable, err, "reading "+messages.EventsStream)
		}
		var ev messages.CloudEvent
		if err := json.Unmarshal(m.Data(), &ev); err == nil && ev.SpecVersion != "" {
			if err := fn(ev); err != nil {
				if errors.Is(err, ErrStopStream) {
					return nil
				}
				return err
			}
		}
		if !q.Follow {
			if meta, err := m.Metadata(); err == nil && meta.NumPending == 0 {
				return nil
			}
		}
	}
}
