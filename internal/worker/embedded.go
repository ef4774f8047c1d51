package worker

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"
)

// startEmbedded starts a nats-server with JetStream listening on
// o.Listen, its store in o.DataDir, accepting only clients that
// authenticate with the nkey kp (the local credential). It never traps
// signals (NoSigs): the worker owns SIGINT/SIGTERM and shuts the server
// down itself.
func startEmbedded(o EmbeddedOptions, name string, kp nkeys.KeyPair, log zerolog.Logger) (*server.Server, error) {
	host, port, err := splitListen(o.Listen)
	if err != nil {
		return nil, err
	}
	if port > 0 {
		// Fail fast and clearly when the port is taken (the server
		// itself would only log it and never become ready).
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return nil, fmt.Errorf("embedded nats-server cannot listen on %s (another worker or nats-server? connect to it with --server): %w", o.Listen, err)
		}
		l.Close()
	}
	if err := os.MkdirAll(o.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("nats data dir: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		Nkeys:              []*server.NkeyUser{{Nkey: pub}},
		ServerName:         name,
		Host:               host,
		Port:               port,
		JetStream:          true,
		StoreDir:           o.DataDir,
		JetStreamMaxMemory: o.MaxMemory,
		JetStreamMaxStore:  o.MaxStore,
		NoSigs:             true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	s.SetLoggerV2(serverLogger{log.With().Str("component", "nats-server").Logger()}, false, false, false)
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats-server did not start on %s (port in use?)", o.Listen)
	}
	return s, nil
}

// serverLogger adapts zerolog to nats-server's Logger.
type serverLogger struct{ l zerolog.Logger }

func (s serverLogger) Noticef(f string, v ...any) { s.l.Debug().Msgf(f, v...) }
func (s serverLogger) Warnf(f string, v ...any)   { s.l.Warn().Msgf(f, v...) }
func (s serverLogger) Fatalf(f string, v ...any)  { s.l.Error().Msgf(f, v...) }
func (s serverLogger) Errorf(f string, v ...any)  { s.l.Error().Msgf(f, v...) }
func (s serverLogger) Debugf(f string, v ...any)  { s.l.Trace().Msgf(f, v...) }
func (s serverLogger) Tracef(f string, v ...any)  { s.l.Trace().Msgf(f, v...) }
