// Command worker serves this host's substrates on the subbus NATS bus.
// See docs/bus.md for flags, configuration and subjects.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/natsconn"
	"github.com/subbus/subbus/internal/sdnotify"
	"github.com/subbus/subbus/internal/version"
	"github.com/subbus/subbus/internal/worker"
	"github.com/subbus/subbus/messages"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	conn := natsconn.FromEnv()
	conn.RegisterFlags(fs)
	cfgPath := fs.String("config", os.Getenv("SUBBUS_CONFIG"), "substrate_config.yaml (env SUBBUS_CONFIG)")
	host := fs.String("host", "", "host identity in subjects (default worker.host, else the short hostname)")
	driverList := fs.String("drivers", "", "comma-separated drivers to serve (default worker.drivers, else process plus every detected substrate)")
	promListen := fs.String("prometheus-listen", "", "serve Prometheus /metrics on host:port (default worker.prometheus_listen; empty: off)")
	check := fs.Bool("check-config", false, "validate the configuration and exit")
	createStreams := fs.Bool("create-streams", false, "create the streams SUBSTRATE_EVENTS and SUBSTRATE_METRICS and the fleet's KV buckets SUBSTRATE_INVENTORY, SUBSTRATE_WORKERS, SUBSTRATE_LEASES and SUBSTRATE_OPS (as configured) on the NATS server and exit; for an administrator when workers run with worker.manage_streams: false")
	level := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	logFormat := fs.String("log-format", "auto", "log format: json, console, or auto (console on a terminal)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(*level, *logFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}

	cfg, err := config.Load(*cfgPath)
	if err != nil {
		log.Error().Err(err).Msg("configuration")
		return 2
	}
	opts, err := worker.OptionsFromConfig(cfg)
	if err != nil {
		log.Error().Err(err).Msg("configuration")
		return 2
	}
	if *host != "" {
		opts.Host = *host
	}
	if *driverList != "" {
		opts.Drivers = strings.Split(*driverList, ",")
	}
	if *promListen != "" {
		opts.PrometheusListen = *promListen
	}
	// The nats section's connection keys apply where no flag or
	// environment variable set them.
	for _, k := range []struct {
		dst *string
		key string
	}{{&conn.URL, "nats.url"}, {&conn.Creds, "nats.creds"}, {&conn.NKey, "nats.nkey"}, {&conn.InboxPrefix, "nats.inbox_prefix"},
		{&conn.TLSCert, "nats.tls_cert"}, {&conn.TLSKey, "nats.tls_key"}, {&conn.TLSCA, "nats.tls_ca"}} {
		if *k.dst == "" {
			*k.dst = cfg.String(k.key, "")
		}
	}
	if !conn.IsZero() {
		opts.Connect = func(extra ...nats.Option) (*nats.Conn, error) {
			return conn.Connect("subbus-worker", extra...)
		}
	}
	opts.Version = version.Version
	opts.Logger = log
	if *createStreams {
		return runCreateStreams(conn, opts, log)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	w, err := worker.New(ctx, opts)
	if err != nil {
		log.Error().Err(err).Msg("worker")
		return 2
	}
	if *check {
		fmt.Printf("configuration OK: host %s, drivers %s\n", w.Host(), strings.Join(driverNames(w), ","))
		return 0
	}

	// A second signal forces exit.
	go func() {
		<-ctx.Done()
		stop()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
		log.Error().Msg("second signal: exiting now")
		os.Exit(130)
	}()

	go notifySystemd(ctx, w, log)
	if err := w.Run(ctx); err != nil {
		log.Error().Err(err).Msg("worker failed")
		if errors.Is(err, context.Canceled) {
			return 0
		}
		return 1
	}
	return 0
}

// runCreateStreams creates the streams and the fleet's buckets on an
// external server and exits.
func runCreateStreams(conn natsconn.Options, opts worker.Options, log zerolog.Logger) int {
	if opts.Connect == nil {
		log.Error().Msg("--create-streams needs a NATS server (--server, NATS_URL, nats.url or a context)")
		return 2
	}
	nc, err := conn.Connect("subbus-create-streams")
	if err != nil {
		log.Error().Err(err).Msg("connecting")
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Error().Err(err).Msg("jetstream")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := worker.EnsureStreams(ctx, js, opts, true, log); err != nil {
		log.Error().Err(err).Msg("creating the streams")
		return 1
	}
	if _, err := worker.EnsureBuckets(ctx, js, opts, true, true, log); err != nil {
		log.Error().Err(err).Msg("creating the KV buckets")
		return 1
	}
	fmt.Println("streams ready:", messages.EventsStream, messages.MetricsStream)
	fmt.Println("KV buckets ready:", messages.InventoryBucket, messages.WorkersBucket, messages.LeasesBucket, messages.OpsBucket)
	return 0
}

// notifySystemd tells systemd (Type=notify units; a no-op elsewhere) that
// the worker is ready once it serves requests and its streams exist, and
// that it is stopping when shutdown begins.
func notifySystemd(ctx context.Context, w *worker.Worker, log zerolog.Logger) {
	send := func(assignments ...string) {
		if _, err := sdnotify.Notify(assignments...); err != nil {
			log.Warn().Err(err).Msg("systemd notification")
		}
	}
	send(sdnotify.Status("connecting to NATS and checking the streams"))
	select {
	case <-w.Ready():
		send(sdnotify.Ready, sdnotify.Status(fmt.Sprintf("serving host %s, drivers %s", w.Host(), strings.Join(driverNames(w), ","))))
	case <-ctx.Done():
	case <-w.Done():
		return
	}
	select {
	case <-ctx.Done():
		send(sdnotify.Stopping, sdnotify.Status("shutting down"))
	case <-w.Done():
	}
}

func driverNames(w *worker.Worker) []string {
	var out []string
	for _, m := range w.Managers() {
		out = append(out, m.Driver())
	}
	return out
}

func newLogger(level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("--log-level: %w", err)
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	var l zerolog.Logger
	switch format {
	case "json":
		l = zerolog.New(os.Stderr)
	case "console":
		l = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	case "auto":
		if isatty.IsTerminal(os.Stderr.Fd()) {
			l = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
		} else {
			l = zerolog.New(os.Stderr)
		}
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format: %q is not json, console or auto", format)
	}
	return l.Level(lvl).With().Timestamp().Logger(), nil
}
