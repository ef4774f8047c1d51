package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"gopkg.in/yaml.v3"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/version"
	"github.com/subbus/subbus/messages"
)

// jsonLine writes v as one line of JSON (NDJSON, for streams).
func jsonLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ---- events ----

// parseSince accepts a duration ago ("90m"), an RFC 3339 time or a date.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, usagef("--since %q: the duration must be positive", s)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, usagef("--since %q: want a duration (1h30m) or a time (2006-01-02T15:04:05Z07:00, 2006-01-02)", s)
}

func cmdEvents(e *env, c *invocation) error {
	since, err := parseSince(c.o.since, time.Now())
	if err != nil {
		return err
	}
	cl, err := e.client()
	if err != nil {
		return err
	}
	q := client.EventQuery{Driver: c.o.eventDriver, Host: c.o.host, Instance: c.o.instance, Type: c.o.eventType,
		Since: since, Follow: c.o.follow}
	if c.o.follow {
		// Say so when the connection drops and when it is back, instead
		// of waiting in silence (the ordered consumer resumes after the
		// last event shown).
		e.nc.SetDisconnectErrHandler(func(_ *nats.Conn, err error) {
			why := ""
			if err != nil {
				why = " (" + err.Error() + ")"
			}
			fmt.Fprintf(e.stderr, "subbus: lost the connection to NATS%s; reconnecting…\n", why)
		})
		e.nc.SetReconnectHandler(func(nc *nats.Conn) {
			fmt.Fprintf(e.stderr, "subbus: reconnected to NATS at %s; following again\n", nc.ConnectedUrlRedacted())
		})
	}
	if !e.json {
		fmt.Fprintf(e.stdout, "%-24s %-10s %-12s %-24s %-18s %-9s %s\n", "TIME", "DRIVER", "HOST", "INSTANCE", "TYPE", "SOURCE", "DETAILS")
	}
	return cl.Events(e.ctx, q, func(ev messages.CloudEvent) error {
		if e.json {
			return jsonLine(e.stdout, ev)
		}
		d := ev.Data
		var details []string
		if d.State != "" {
			details = append(details, "state="+string(d.State))
		}
		if d.Error != nil {
			details = append(details, fmt.Sprintf("error=%s: %s", d.Error.Code, d.Error.Message))
		}
		for _, k := range sortedKeys(d.Details) {
			details = append(details, k+"="+d.Details[k])
		}
		if d.RequestID != "" {
			details = append(details, "request="+d.RequestID)
		}
		_, err := fmt.Fprintf(e.stdout, "%-24s %-10s %-12s %-24s %-18s %-9s %s\n", d.Time.Local().Format("2006-01-02T15:04:05.000"),
			d.Driver, d.Host, dash(d.Instance), d.Type, d.Source, strings.Join(details, " "))
		return err
	})
}

// ---- workers ----

// workerStatus is the --json shape of one worker in `subbus workers`.
type workerStatus struct {
	client.Worker
	// Liveness: "up" when the worker answered discovery, else its state
	// from its last heartbeat ("stale", "down"); LastSeen is that
	// heartbeat's time (zero without the fleet buckets).
	Liveness string    `json:"liveness"`
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Health per driver: the driver's health, or the error asking for it.
	Health map[string]healthOrError `json:"health"`
}

type healthOrError struct {
	*messages.Health
	Error *messages.ErrorInfo `json:"error,omitempty"`
}

func cmdWorkers(e *env, c *invocation) error {
	cl, err := e.client()
	if err != nil {
		return err
	}
	var hbs map[string]messages.WorkerHeartbeat
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		ctx, cancel := context.WithTimeout(e.ctx, 3*time.Second)
		defer cancel()
		hbs, _ = cl.Heartbeats(ctx) // no fleet buckets: discovery alone
	}()
	dctx, cancel := context.WithTimeout(e.ctx, 3*time.Second)
	workers, err := cl.Workers(dctx)
	cancel()
	<-hbDone
	if err != nil {
		return err
	}
	out := make([]workerStatus, len(workers))
	found := map[string]bool{}
	now := time.Now()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, w := range workers {
		found[w.Host] = true
		out[i] = workerStatus{Worker: w, Liveness: messages.LivenessUp, LastSeen: hbs[w.Host].Time, Health: map[string]healthOrError{}}
		for _, d := range w.Drivers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := e.reqCtx(5 * time.Second)
				defer cancel()
				var h messages.Health
				err := cl.Do(ctx, d, w.Host, messages.OpHealth, nil, &h)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					out[i].Health[d] = healthOrError{Error: messages.InfoOf(err)}
				} else {
					out[i].Health[d] = healthOrError{Health: &h}
				}
			}()
		}
	}
	wg.Wait()
	// Hosts with a heartbeat that did not answer discovery: not up.
	for _, hb := range hbs {
		if !found[hb.Host] {
			out = append(out, workerStatus{Worker: client.Worker{Host: hb.Host, Version: hb.Version, Drivers: hb.Drivers},
				Liveness: hb.Liveness(now), LastSeen: hb.Time, Health: map[string]healthOrError{}})
		}
	}
	slices.SortStableFunc(out, func(a, b workerStatus) int { return strings.Compare(a.Host, b.Host) })
	if e.json {
		if err := e.printJSON(out); err != nil {
			return err
		}
	} else {
		tw := e.table()
		fmt.Fprintln(tw, "HOST\tSTATUS\tDRIVERS\tHEALTH\tCAPABILITIES\tVERSION")
		for _, w := range out {
			var health, caps []string
			for _, d := range w.Drivers {
				h := w.Health[d]
				switch {
				case h.Error == nil && h.Health == nil:
					health = append(health, d+":-")
				case h.Error != nil:
					health = append(health, d+":"+h.Error.Code.String())
				case h.Health != nil && h.Healthy:
					health = append(health, d+":ok")
				default:
					health = append(health, d+":unhealthy")
				}
				caps = append(caps, d+":"+capsList(w.Capabilities[d]))
			}
			status := w.Liveness
			if w.Liveness != messages.LivenessUp && !w.LastSeen.IsZero() {
				status += " (" + age(w.LastSeen) + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", dash(w.Host), status, dash(strings.Join(w.Drivers, ",")),
				dash(strings.Join(health, " ")), dash(strings.Join(caps, " ")), dash(w.Version))
		}
		_ = tw.Flush()
	}
	if len(out) == 0 {
		return &client.NoWorkerError{}
	}
	return nil
}

// ---- version ----

func cmdVersion(e *env, c *invocation) error {
	v := version.String()
	if e.json {
		return e.printJSON(map[string]string{"version": v, "go": runtime.Version()})
	}
	fmt.Fprintf(e.stdout, "subbus %s (%s)\n", v, runtime.Version())
	return nil
}

// ---- templates ----

// readTemplate reads an instance template in YAML. Keys are the JSON names
// of messages.Template (name, base_image, command, resources.memory_mb…);
// unknown keys, duplicate keys and wrong types are errors.
func readTemplate(path string) (messages.Template, error) {
	var t messages.Template
	b, err := os.ReadFile(path)
	if err != nil {
		return t, drivers.Wrap(drivers.InvalidArgument, err, "reading the template")
	}
	return parseTemplate(path, b)
}

// templateAliases are second spellings of template keys, named like the
// flags of create (--image, --label, --run-as, --env); both are accepted.
var templateAliases = map[string]string{"image": "base_image", "labels": "metadata", "run_as": "user", "env": "environment"}

func parseTemplate(path string, b []byte) (messages.Template, error) {
	var t messages.Template
	if len(b) > messages.MaxRequestBytes {
		return t, drivers.Errorf(drivers.InvalidArgument, "template %s: larger than %d bytes", path, messages.MaxRequestBytes)
	}
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return t, drivers.Errorf(drivers.InvalidArgument, "template %s: %v", path, err)
	}
	if doc == nil {
		return t, drivers.Errorf(drivers.InvalidArgument, "template %s: empty", path)
	}
	if m, ok := doc.(map[string]any); ok {
		for alias, key := range templateAliases {
			v, has := m[alias]
			if !has {
				continue
			}
			if _, both := m[key]; both {
				return t, drivers.Errorf(drivers.InvalidArgument, "template %s: %s and %s are the same key (give one)", path, alias, key)
			}
			delete(m, alias)
			m[key] = v
		}
	}
	j, err := json.Marshal(doc)
	if err != nil {
		return t, drivers.Errorf(drivers.InvalidArgument, "template %s: %v", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return t, drivers.Errorf(drivers.InvalidArgument, "template %s: %s: expected %s, got %s", path, te.Field, te.Type, te.Value)
		}
		return t, drivers.Errorf(drivers.InvalidArgument, "template %s: %s", path, strings.TrimPrefix(err.Error(), "json: "))
	}
	return t, nil
}
