package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/internal/messages"
)

// Stream subjects: only the event and metric trees, never a request
// subject (a stream capturing substrate.<driver>.<op> would answer
// requests itself and hide "no responders").
var (
	eventsSubjects  = []string{messages.SubjectRoot + "." + messages.EventsToken + ".>"}
	metricsSubjects = []string{messages.SubjectRoot + "." + messages.MetricsToken + ".>"}
)

func (w *Worker) streamConfigs() []jetstream.StreamConfig {
	o := w.opts
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
	for _, cfg := range w.streamConfigs() {
		s, err := w.js.Stream(ctx, cfg.Name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			if !w.opts.ManageStreams {
				return fmt.Errorf("stream %s does not exist and worker.manage_streams is false: create it with subjects %v", cfg.Name, cfg.Subjects)
			}
			if _, err := w.js.CreateStream(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return fmt.Errorf("creating stream %s: %w", cfg.Name, err)
			}
			w.log.Info().Str("stream", cfg.Name).Strs("subjects", cfg.Subjects).Msg("stream created")
		case err != nil:
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		default:
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
