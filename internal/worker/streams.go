package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/messages"
)

// Stream subjects: only the event and metric trees, never a request
// subject (a stream capturing substrate.<driver>.<op> would answer
// requests itself and hide "no responders").
var (
	eventsSubjects  = []string{messages.SubjectRoot + "." + messages.EventsToken + ".>"}
	metricsSubjects = []string{messages.SubjectRoot + "." + messages.MetricsToken + ".>"}
)

// AutoReplicas is the replica count of the streams and buckets when
// worker.stream_replicas is 0 (unset): 3 when the server nc is connected
// to belongs to a NATS cluster (it reports a cluster name) that advertises
// at least 3 servers to clients, else 1. A cluster that does not advertise
// its servers (no_advertise), or has fewer than 3 JetStream servers, needs
// stream_replicas set (docs/fleet.md "Replication").
func AutoReplicas(nc *nats.Conn) int {
	if nc == nil || nc.ConnectedClusterName() == "" || len(nc.Servers()) < 3 {
		return 1
	}
	return 3
}

// resolveReplicas returns o with Replicas decided: the configured value,
// else AutoReplicas(nc).
func resolveReplicas(o Options, nc *nats.Conn) Options {
	if o.Replicas <= 0 {
		o.Replicas = AutoReplicas(nc)
	}
	return o
}

// StreamConfigs are the configurations of SUBSTRATE_EVENTS and
// SUBSTRATE_METRICS for o (defaults filled in; Replicas 0 is 1 here, the
// worker and EnsureStreams resolve it with AutoReplicas first): what the
// worker creates with manage_streams, and what an administrator creates
// for workers running without it (`worker --create-streams`).
func StreamConfigs(o Options) []jetstream.StreamConfig {
	o = o.withDefaults()
	o.Replicas = max(o.Replicas, 1)
	metricsDup := o.MetricsMaxAge
	if metricsDup > o.EventsDuplicates {
		metricsDup = o.EventsDuplicates
	}
	return []jetstream.StreamConfig{{
		Name:        messages.EventsStream,
		Description: "subbus lifecycle events (CloudEvents), one per Nats-Msg-Id",
		Subjects:    eventsSubjects,
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.EventsMaxAge,
		Duplicates:  o.EventsDuplicates,
		Replicas:    o.Replicas,
	}, {
		Name:              messages.MetricsStream,
		Description:       "subbus metrics samples, bounded per instance",
		Subjects:          metricsSubjects,
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Discard:           jetstream.DiscardOld,
		MaxAge:            o.MetricsMaxAge,
		MaxMsgsPerSubject: o.MetricsMaxPerSubject,
		Duplicates:        metricsDup,
		Replicas:          o.Replicas,
	}}
}

// ensureStreams creates the streams when absent (ManageStreams) or checks
// that they exist. Existing streams are checked, not changed: their
// subjects must stay inside the event/metric trees.
func (w *Worker) ensureStreams(ctx context.Context) error {
	return EnsureStreams(ctx, w.js, w.opts, w.opts.ManageStreams, w.log)
}

// EnsureStreams creates the streams of o when absent (create) or checks
// that they exist; existing streams are checked, never changed (one with
// fewer replicas than o asks for is logged). It needs STREAM.INFO on both
// streams, and STREAM.CREATE to create them.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o Options, create bool, log zerolog.Logger) error {
	o = resolveReplicas(o, js.Conn())
	for _, cfg := range StreamConfigs(o) {
		s, err := js.Stream(ctx, cfg.Name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			if !create {
				return fmt.Errorf("stream %s does not exist and worker.manage_streams is false: create it with subjects %v (worker --create-streams as an administrator)", cfg.Name, cfg.Subjects)
			}
			if _, err := js.CreateStream(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return fmt.Errorf("creating stream %s: %w", cfg.Name, err)
			}
			log.Info().Str("stream", cfg.Name).Strs("subjects", cfg.Subjects).Int("replicas", cfg.Replicas).Msg("stream created")
		case err != nil:
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		default:
			if r := s.CachedInfo().Config.Replicas; r < cfg.Replicas {
				log.Warn().Str("stream", cfg.Name).Int("replicas", r).Int("want", cfg.Replicas).
					Msg("existing stream has fewer replicas than configured; it is not changed (nats stream edit --replicas)")
			}
			prefix := strings.TrimSuffix(cfg.Subjects[0], ">")
			for _, subj := range s.CachedInfo().Config.Subjects {
				if !strings.HasPrefix(subj, prefix) {
					return fmt.Errorf("stream %s binds %q, outside %s: it would capture request subjects", cfg.Name, subj, cfg.Subjects[0])
				}
			}
		}
	}
	return nil
}
