package worker

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/messages"
)

var fuzzEnv struct {
	once sync.Once
	nc   *nats.Conn
	err  error
}

// fuzzWorker starts one server and worker per test process (fuzz workers
// are separate processes); they live until the process exits.
func fuzzWorker(t *testing.T) *nats.Conn {
	fuzzEnv.once.Do(func() {
		// Not t.TempDir: the server outlives the first test and keeps
		// writing (the fleet's buckets, heartbeats) after its cleanup.
		dir, err := os.MkdirTemp("", "fleet-fuzz-*")
		if err != nil {
			fuzzEnv.err = err
			return
		}
		s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir,
			NoSigs: true, NoLog: true, MaxPayload: 4 << 20})
		if err != nil {
			fuzzEnv.err = err
			return
		}
		go s.Start()
		s.ReadyForConnections(10 * time.Second)
		url := s.ClientURL()
		w, err := New(context.Background(), Options{Host: "h1", Managers: []*manager.Manager{toyManager(newToy())},
			ManageStreams: true, Logger: zerolog.Nop(), StreamIdle: time.Second, HeartbeatInterval: 200 * time.Millisecond,
			Connect: func(extra ...nats.Option) (*nats.Conn, error) { return nats.Connect(url, extra...) }})
		if err != nil {
			fuzzEnv.err = err
			return
		}
		go func() { _ = w.Run(context.Background()) }()
		<-w.Ready()
		fuzzEnv.nc, fuzzEnv.err = nats.Connect(url)
	})
	if fuzzEnv.err != nil {
		t.Fatal(fuzzEnv.err)
	}
	return fuzzEnv.nc
}

// FuzzWorkerRequest sends arbitrary ops and bodies to a live worker: it
// must answer each with a well-formed reply (or a stream chunk), with the
// error headers exactly on errors, and never crash.
func FuzzWorkerRequest(f *testing.F) {
	for _, s := range []struct{ op, body string }{
		{"list", ""}, {"get", `{"name":"a"}`}, {"create", `{"template":{"name":"a","base_image":"x"}}`},
		{"start", `{"name":"a"}`}, {"exec", `{"name":"a","command":["echo","x"]}`}, {"logs", `{"name":"a","lines":2}`},
		{"delete", `{"name":"a","force":true}`}, {"bogus", `{}`}, {"create", `{"template":`}, {"stop", `{"name":"a","timeout":"1s"}`},
		{"exec", `{"name":"a","command":["spam","3"],"stream":true}`}, {"snapshot-list", `{"name":"a"}`},
	} {
		f.Add(s.op, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, op string, body []byte) {
		nc := fuzzWorker(t)
		if !messages.ValidToken(op) {
			op = "list"
		}
		m := nats.NewMsg("substrate.toy." + op)
		m.Data = body
		m.Header.Set(messages.HeaderDeadline, messages.FormatDeadline(time.Now().Add(2*time.Second)))
		reply, err := nc.RequestMsg(m, 10*time.Second)
		if err != nil {
			t.Fatalf("%s %q: %v", op, body, err)
		}
		var probe map[string]json.RawMessage
		if err := json.Unmarshal(reply.Data, &probe); err != nil {
			t.Fatalf("%s %q: reply %q is not JSON: %v", op, body, reply.Data, err)
		}
		if _, chunk := probe["seq"]; chunk {
			return
		}
		var r messages.Reply
		if err := json.Unmarshal(reply.Data, &r); err != nil {
			t.Fatalf("reply %q: %v", reply.Data, err)
		}
		hasCode := reply.Header.Get(messages.HeaderErrorCode) != ""
		if (r.Error != nil) != hasCode || (r.Error == nil) == (r.Result == nil) {
			t.Fatalf("%s %q: inconsistent reply %q headers %v", op, body, reply.Data, reply.Header)
		}
		if r.Error != nil && strings.TrimSpace(reply.Header.Get(messages.HeaderError)) == "" {
			t.Fatalf("%s %q: error reply without a message header", op, body)
		}
	})
}
