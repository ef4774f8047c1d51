package client

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// Worker is one worker found by discovery, from its micro INFO reply.
//
// The worker publishes these micro metadata keys (see docs/cli.md):
//
//	host          the worker's host token
//	drivers       comma-separated driver names it serves
//	capabilities  JSON object: driver name -> messages.Capabilities
//
// and the service version as the micro version.
type Worker struct {
	Host         string                           `json:"host"`
	ID           string                           `json:"id"` // micro instance id
	Version      string                           `json:"version"`
	Drivers      []string                         `json:"drivers"`
	Capabilities map[string]messages.Capabilities `json:"capabilities,omitempty"`
	Metadata     map[string]string                `json:"metadata,omitempty"`
}

// Metadata keys of the substrate service's micro INFO.
const (
	MetaHost         = "host"
	MetaDrivers      = "drivers"
	MetaCapabilities = "capabilities"
)

// DiscoveryQuiet is how long Workers waits after the last INFO reply for
// more before deciding every worker has answered.
var DiscoveryQuiet = 300 * time.Millisecond

// discoveryMax bounds the whole discovery when ctx has no deadline.
const discoveryMax = 3 * time.Second

// DiscoveryGrace is how long WorkersExpecting waits for workers it does not
// expect once every expected host has answered.
var DiscoveryGrace = 20 * time.Millisecond

// Workers discovers the running workers: it sends $SRV.INFO.substrate and
// gathers replies until DiscoveryQuiet passes without one (or ctx ends, or
// 3s pass when ctx has no deadline). The result is sorted by host, then id.
// No worker at all is not an error: the list is empty. When ctx ends by its
// deadline, or is cancelled with a cause other than context.Canceled
// (context.WithCancelCause), the workers found so far are returned;
// cancelled plainly, the error is ctx.Err().
func (c *Client) Workers(ctx context.Context) ([]Worker, error) {
	return c.discover(ctx, nil, micro.InfoVerb)
}

// WorkersExpecting is Workers that knows which hosts to expect (those with
// a heartbeat that is up, say): once each of them has answered it waits
// only DiscoveryGrace more for others (a worker that started a moment ago
// and has no heartbeat yet) instead of DiscoveryQuiet after the last reply.
// With a fleet of 1,000 hosts that is most of the time of a fan-out. It
// sends micro's PING rather than INFO (a third of the bytes: identity and
// metadata, no endpoints), so the Workers it returns have no endpoint
// data; their host, version, drivers and capabilities are there.
func (c *Client) WorkersExpecting(ctx context.Context, expect []string) ([]Worker, error) {
	want := make(map[string]bool, len(expect))
	for _, h := range expect {
		want[h] = true
	}
	return c.discover(ctx, want, micro.PingVerb)
}

// discover sends verb (INFO or PING: both replies carry the identity and
// metadata) to the substrate service and gathers the replies.
func (c *Client) discover(ctx context.Context, expect map[string]bool, verb micro.Verb) ([]Worker, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, discoveryMax)
		defer cancel()
	}
	inbox := c.nc.NewInbox()
	// Every reply is kept (a fleet of thousands answers at once; a
	// bounded channel would drop replies as a slow consumer): the
	// subscription queues them, ch only wakes the loop.
	var (
		mu      sync.Mutex
		replies []*nats.Msg
	)
	ch := make(chan struct{}, 1)
	sub, err := c.nc.Subscribe(inbox, func(m *nats.Msg) {
		mu.Lock()
		replies = append(replies, m)
		mu.Unlock()
		select {
		case ch <- struct{}{}:
		default:
		}
	})
	if err == nil {
		err = sub.SetPendingLimits(-1, -1)
	}
	if err != nil {
		return nil, drivers.Wrap(drivers.Unavailable, err, "subscribing for discovery")
	}
	defer func() { _ = sub.Unsubscribe() }()
	subject, err := micro.ControlSubject(verb, messages.ServiceName, "")
	if err != nil {
		return nil, drivers.Wrap(drivers.Internal, err, "discovery subject")
	}
	if err := c.nc.PublishRequest(subject, inbox, nil); err != nil {
		return nil, drivers.Wrap(drivers.Unavailable, err, "sending discovery request")
	}

	var out []Worker
	complete := false                          // every expected host answered: only the grace is left
	quiet := time.NewTimer(DiscoveryQuiet * 3) // the first reply may take a little longer
	defer quiet.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), context.Canceled) {
				return nil, ctx.Err()
			}
			break loop // deadline, or cancelled with another cause: what was found
		case <-quiet.C:
			break loop
		case <-ch:
			if !complete {
				quiet.Reset(DiscoveryQuiet)
			}
			mu.Lock()
			batch := replies
			replies = nil
			mu.Unlock()
			for _, m := range batch {
				if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
					break loop // nobody serves substrate
				}
				var info micro.Info
				if err := json.Unmarshal(m.Data, &info); err != nil {
					continue // not a micro INFO or PING reply; ignore
				}
				w := workerFromInfo(info)
				out = append(out, w)
				if !complete && expect[w.Host] {
					delete(expect, w.Host)
					if len(expect) == 0 { // every expected host answered
						complete = true
						quiet.Reset(DiscoveryGrace)
					}
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Host != out[j].Host {
			return out[i].Host < out[j].Host
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// workerFromInfo reads the worker's identity from its INFO metadata.
// Drivers may be a comma-separated list or a JSON array; capabilities a
// JSON object of driver -> capabilities.
func workerFromInfo(info micro.Info) Worker {
	md := info.Metadata
	w := Worker{Host: md[MetaHost], ID: info.ID, Version: info.Version, Metadata: md}
	if d := strings.TrimSpace(md[MetaDrivers]); d != "" {
		if strings.HasPrefix(d, "[") {
			_ = json.Unmarshal([]byte(d), &w.Drivers)
		} else {
			for _, s := range strings.Split(d, ",") {
				if s = strings.TrimSpace(s); s != "" {
					w.Drivers = append(w.Drivers, s)
				}
			}
		}
	}
	if caps := md[MetaCapabilities]; caps != "" {
		_ = json.Unmarshal([]byte(caps), &w.Capabilities)
	}
	if len(w.Drivers) == 0 && len(w.Capabilities) > 0 {
		for d := range w.Capabilities {
			w.Drivers = append(w.Drivers, d)
		}
	}
	if len(w.Drivers) == 0 {
		// Fall back to the endpoints: substrate.<driver>.<op> subjects.
		seen := map[string]bool{}
		for _, e := range info.Endpoints {
			parts := strings.Split(e.Subject, ".")
			if len(parts) == 3 && parts[0] == messages.SubjectRoot && !seen[parts[1]] {
				seen[parts[1]] = true
				w.Drivers = append(w.Drivers, parts[1])
			}
		}
	}
	sort.Strings(w.Drivers)
	return w
}
