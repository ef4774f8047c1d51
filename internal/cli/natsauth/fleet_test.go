package natsauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/cli/natsauth"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/natsconn"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/internal/worker"
	"github.com/subbus/subbus/messages"
)

// shipped returns the path of a file in deployments/nats.
func shipped(t *testing.T, name string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	p, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", "..", "..", "deployments", "nats", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// fleet is a real nats-server running a fleet's permission model.
type fleet struct {
	url   string
	ca    string // CA file clients verify the server with
	ids   map[string]natsauth.Identity
	seeds map[string]string // identity -> seed file
	srv   *server.Server
}

// tlsFiles writes a CA and a server certificate for 127.0.0.1/localhost
// (generated now, in Go) and returns their paths.
func tlsFiles(t *testing.T, dir string) (ca *natsauth.CA, caFile, certFile, keyFile string) {
	t.Helper()
	ca, err := natsauth.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server([]string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	for p, b := range map[string][]byte{caFile: ca.CertPEM, certFile: srv.CertPEM, keyFile: srv.KeyPEM} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca, caFile, certFile, keyFile
}

// startFleet starts a nats-server whose configuration includes
// accountsConf and tlsConf (the shipped files, or generated ones) as they
// are, with the identities' public keys and the TLS files in the
// environment variables they read. It uses t.Setenv: not parallel.
func startFleet(t *testing.T, f natsauth.Fleet, accountsConf, tlsConf string) *fleet {
	t.Helper()
	ids, err := f.Identities()
	if err != nil {
		t.Fatal(err)
	}
	return startFleetIDs(t, ids, accountsConf, tlsConf)
}

// startFleetIDs is startFleet with the identities already made.
func startFleetIDs(t *testing.T, ids []natsauth.Identity, accountsConf, tlsConf string) *fleet {
	t.Helper()
	dir := t.TempDir()
	fl := &fleet{ids: map[string]natsauth.Identity{}, seeds: map[string]string{}}
	for _, id := range ids {
		fl.ids[id.Name] = id
		p := filepath.Join(dir, id.Name+".nk")
		if err := os.WriteFile(p, id.Seed, 0o600); err != nil {
			t.Fatal(err)
		}
		fl.seeds[id.Name] = p
		t.Setenv(id.EnvVar(), id.Public)
	}
	_, caFile, certFile, keyFile := tlsFiles(t, dir)
	fl.ca = caFile
	t.Setenv("SUBBUS_TLS_CERT", certFile)
	t.Setenv("SUBBUS_TLS_KEY", keyFile)
	t.Setenv("SUBBUS_TLS_CA", caFile)
	rel := func(p string) string {
		r, err := filepath.Rel(dir, p)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	conf := fmt.Sprintf("listen: \"127.0.0.1:-1\"\njetstream { store_dir: %q, max_mem_store: 64MB, max_file_store: 256MB }\ninclude %q\n",
		filepath.Join(dir, "js"), rel(accountsConf))
	if tlsConf != "" {
		conf += fmt.Sprintf("include %q\n", rel(tlsConf))
	}
	cf := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(cf)
	if err != nil {
		t.Fatalf("the configuration does not load: %v", err)
	}
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	fl.srv = s
	fl.url = s.ClientURL()
	return fl
}

// conn is a connection of one identity with the permission violations
// the server reported to it.
type conn struct {
	*nats.Conn
	mu   sync.Mutex
	errs []error
}

// violated waits until the server reported a permission violation for
// kind ("Publish" or "Subscription") to subject.
func (c *conn) violated(t *testing.T, kind, subject string) {
	t.Helper()
	c.violatedText(t, fmt.Sprintf("permissions violation for %s to %q", kind, subject))
}

// violatedText waits for a permission violation whose text holds want.
func (c *conn) violatedText(t *testing.T, want string) {
	t.Helper()
	want = strings.ToLower(want)
	testenv.Eventually(t, 5*time.Second, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, e := range c.errs {
			if errors.Is(e, nats.ErrPermissionViolation) && strings.Contains(strings.ToLower(e.Error()), want) {
				return nil
			}
		}
		return fmt.Errorf("no %q among %v", want, c.errs)
	})
}

// connectAs connects as the identity name: its nkey, its inbox prefix,
// TLS verified against the test CA.
func (f *fleet) connectAs(t *testing.T, name string, extra ...nats.Option) *conn {
	t.Helper()
	id, ok := f.ids[name]
	if !ok {
		t.Fatalf("no identity %q", name)
	}
	c := &conn{}
	nkey, err := nats.NkeyOptionFromSeed(f.seeds[name])
	if err != nil {
		t.Fatal(err)
	}
	opts := append([]nats.Option{nkey, nats.CustomInboxPrefix(id.InboxPrefix()), nats.RootCAs(f.ca),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.mu.Lock()
			c.errs = append(c.errs, err)
			c.mu.Unlock()
		})}, extra...)
	c.Conn, err = nats.Connect(f.url, opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", name, err)
	}
	t.Cleanup(c.Close)
	return c
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// clusterProcess is the process driver declared cluster-wide, so that a
// worker serving it takes leases (the permission model of
// SUBSTRATE_LEASES is tested without a Proxmox cluster).
type clusterProcess struct{ *process.Driver }

func (clusterProcess) ClusterWide() bool { return true }

// startWorker runs the worker of host with its identity, through natsconn
// (nkey file, --inbox-prefix, --tlsca), the process driver (cluster-wide
// with clusterWide), and manage_streams: false. At the end of the test
// its log must hold no permission violation: the model gives a worker all
// it needs.
func (f *fleet) startWorker(t *testing.T, host string, pooled []string, clusterWide bool) *worker.Worker {
	t.Helper()
	logs := &syncBuffer{}
	id := f.ids["worker-"+host]
	cn := natsconn.Options{URL: f.url, NKey: f.seeds[id.Name], InboxPrefix: id.InboxPrefix(), TLSCA: f.ca, NoContext: true}
	var d drivers.Driver = process.New(process.Options{StateDir: t.TempDir(), Cgroups: "off"})
	if clusterWide {
		d = clusterProcess{d.(*process.Driver)}
	}
	m := manager.New(d, manager.Options{Host: host, StopTimeout: 5 * time.Second})
	w, err := worker.New(context.Background(), worker.Options{
		Host: host, Managers: []*manager.Manager{m}, ManageStreams: false, RestrictPooled: true, PooledDrivers: pooled,
		EnableMetrics: true, MetricsInterval: 300 * time.Millisecond, Logger: zerolog.New(logs),
		Connect: func(extra ...nats.Option) (*nats.Conn, error) { return cn.Connect("worker-"+host, extra...) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-w.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("worker %s stopped: %v", host, err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("worker %s not ready (streams?)", host)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Errorf("worker %s did not stop", host)
		}
		if l := strings.ToLower(logs.String()); strings.Contains(l, "permissions violation") || strings.Contains(l, "authorization") {
			t.Errorf("worker %s met a permission violation:\n%s", host, logs.String())
		}
	})
	return w
}

func tctx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// createStreams creates the streams and the fleet KV buckets as admin,
// as `worker --create-streams` does.
func (f *fleet) createStreams(t *testing.T) {
	t.Helper()
	admin := f.connectAs(t, "admin")
	js, err := jetstream.New(admin.Conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := worker.EnsureStreams(tctx(t, 30*time.Second), js, worker.Options{}, true, zerolog.Nop()); err != nil {
		t.Fatalf("admin creating the streams: %v", err)
	}
	kvs, err := worker.EnsureBuckets(tctx(t, 30*time.Second), js, worker.Options{LeaseTTL: 5 * time.Second}, true, true, zerolog.Nop())
	if err != nil || len(kvs) != 4 {
		t.Fatalf("admin creating the buckets: %d, %v", len(kvs), err)
	}
}

// kvGet reads key of bucket as admin.
func (f *fleet) kvGet(t *testing.T, bucket, key string) (jetstream.KeyValueEntry, error) {
	t.Helper()
	js, err := jetstream.New(f.connectAs(t, "admin").Conn)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(tctx(t, 5*time.Second), bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv.Get(tctx(t, 5*time.Second), key)
}

// TestShippedConfiguration runs the shipped deployments/nats/accounts.conf
// and tls.conf in a real nats-server with two workers (h1, h2) and the
// shipped client identities, and checks every legitimate path works and
// every impersonation, sniffing and forgery of the issue is refused with
// a permission violation. docs/security.md cites each subtest.
func TestShippedConfiguration(t *testing.T) {
	f := startFleet(t, natsauth.Fleet{Hosts: []string{"h1", "h2"}}, shipped(t, "accounts.conf"), shipped(t, "tls.conf"))
	f.createStreams(t)
	w1 := f.startWorker(t, "h1", nil, false)
	f.startWorker(t, "h2", nil, false)

	parent := t
	op := f.connectAs(t, "operator")
	ops := client.New(op.Conn, 10*time.Second)
	const inst = "sec-web"
	secret := "DB_PASSWORD=s3cret-" + fmt.Sprint(time.Now().UnixNano())

	t.Run("no credential or plain TCP is refused", func(t *testing.T) {
		if nc, err := nats.Connect(f.url, nats.RootCAs(f.ca)); !errors.Is(err, nats.ErrAuthorization) {
			if nc != nil {
				nc.Close()
			}
			t.Fatalf("connect without nkey: %v, want authorization violation", err)
		}
		nkey, _ := nats.NkeyOptionFromSeed(f.seeds["operator"])
		if nc, err := nats.Connect(f.url, nkey); err == nil {
			nc.Close()
			t.Fatal("connected without verifying the server's certificate")
		}
	})

	t.Run("operator requests reach the addressed worker and replies come back", func(t *testing.T) {
		tmpl := messages.Template{Name: inst, BaseImage: "/bin/sh", Command: []string{"/bin/sh", "-c", "echo started; exec sleep 60"},
			Environment: map[string]string{"DB_PASSWORD": strings.TrimPrefix(secret, "DB_PASSWORD=")}}
		if err := ops.Do(tctx(t, 20*time.Second), "process", "h1", messages.OpCreate, messages.CreateRequest{Template: tmpl}, nil); err != nil {
			t.Fatal(err)
		}
		parent.Cleanup(func() {
			_ = ops.Do(context.Background(), "process", "h1", messages.OpDelete, messages.DeleteRequest{Name: inst, Force: true}, nil)
		})
		if err := ops.Do(tctx(t, 20*time.Second), "process", "h1", messages.OpStart, messages.NameRequest{Name: inst}, nil); err != nil {
			t.Fatal(err)
		}
		for _, h := range []string{"h1", "h2"} {
			r, err := ops.DoReply(tctx(t, 10*time.Second), "process", h, messages.OpList, nil, nil)
			if err != nil || r.Host != h {
				t.Fatalf("list on %s: %v (answered by %q)", h, err, r.Host)
			}
		}
	})

	t.Run("workers keep inventory and heartbeats with manage_streams false", func(t *testing.T) {
		testenv.Eventually(t, 15*time.Second, func() error {
			e, err := f.kvGet(t, natsauth.InventoryBucket, messages.InventoryKey("process", "h1", inst))
			if err != nil {
				return fmt.Errorf("inventory record of %s: %w", inst, err)
			}
			var rec messages.InventoryRecord
			if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.State != drivers.StateRunning {
				return fmt.Errorf("inventory record %s (%v), want running", e.Value(), err)
			}
			for _, h := range []string{"h1", "h2"} {
				if _, err := f.kvGet(t, natsauth.WorkersBucket, h); err != nil {
					return fmt.Errorf("heartbeat of %s: %w", h, err)
				}
			}
			return nil
		})
	})

	t.Run("streamed exec: the worker replies many times to the request it received", func(t *testing.T) {
		var out strings.Builder
		var final bool
		err := ops.Stream(tctx(t, 20*time.Second), "process", "h1", messages.OpExec,
			messages.ExecRequest{Name: inst, Command: []string{"/bin/sh", "-c", "for i in 1 2 3; do echo line $i; done"}, Stream: true},
			func(ch messages.Chunk) error {
				out.Write(ch.Data)
				final = final || ch.Final
				return nil
			})
		if err != nil || !final || !strings.Contains(out.String(), "line 3") {
			t.Fatalf("exec stream: %v, final %v, output %q", err, final, out.String())
		}
	})

	t.Run("discovery finds both workers", func(t *testing.T) {
		ws, err := ops.Workers(tctx(t, 5*time.Second))
		if err != nil || len(ws) != 2 || ws[0].Host != "h1" || ws[1].Host != "h2" {
			t.Fatalf("workers: %v %+v", err, ws)
		}
	})

	t.Run("workers publish events and metrics with manage_streams false", func(t *testing.T) {
		for _, who := range []string{"operator", "reader", "events"} {
			cl := client.New(f.connectAs(t, who).Conn, 10*time.Second)
			testenv.Eventually(t, 10*time.Second, func() error {
				found := false
				err := cl.Events(tctx(t, 5*time.Second), client.EventQuery{Host: "h1", Instance: inst, Type: "started"}, func(messages.CloudEvent) error {
					found = true
					return client.ErrStopStream
				})
				if err != nil {
					return err
				}
				if !found {
					return errors.New("no started event yet")
				}
				return nil
			})
		}
		testenv.Eventually(t, 10*time.Second, func() error {
			if w1.Pending() > 0 {
				return fmt.Errorf("%d events pending", w1.Pending())
			}
			return nil
		})
		js, _ := jetstream.New(op.Conn)
		testenv.Eventually(t, 10*time.Second, func() error {
			c, err := js.OrderedConsumer(tctx(t, 5*time.Second), messages.MetricsStream, jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{messages.MetricsSubject("process", "h1", inst)}})
			if err != nil {
				return err
			}
			if _, err := c.Next(jetstream.FetchMaxWait(time.Second)); err != nil {
				return fmt.Errorf("no metrics sample of h1: %w", err)
			}
			return nil
		})
	})

	t.Run("event reader uses its own durable consumer", func(t *testing.T) {
		ev := f.connectAs(t, "events")
		js, _ := jetstream.New(ev.Conn)
		c, err := js.CreateOrUpdateConsumer(tctx(t, 10*time.Second), messages.EventsStream,
			jetstream.ConsumerConfig{Durable: "events", AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			t.Fatal(err)
		}
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.DoubleAck(tctx(t, 5*time.Second)); err != nil {
			t.Fatalf("ack: %v", err)
		}
	})

	t.Run("reader may read but not change", func(t *testing.T) {
		rd := f.connectAs(t, "reader")
		cl := client.New(rd.Conn, 2*time.Second)
		if err := cl.Do(tctx(t, 10*time.Second), "process", "h1", messages.OpGet, messages.NameRequest{Name: inst}, nil); err != nil {
			t.Fatalf("get: %v", err)
		}
		for _, op := range []messages.Op{messages.OpStop, messages.OpExec, messages.OpLogs} {
			_ = cl.Do(tctx(t, time.Second), "process", "h1", op, messages.NameRequest{Name: inst}, nil)
			rd.violated(t, "Publish", "substrate.process.h1."+string(op))
		}
	})

	t.Run("long operations: operators begin, follow and cancel; readers follow; workers write their own records", func(t *testing.T) {
		// The worker writes its record and progress; the operator follows
		// them (watch on SUBSTRATE_OPS, the ops subject) and cancels.
		const slow = "sec-slow"
		tmpl := messages.Template{Name: slow, Command: []string{"/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"}}
		if err := ops.Do(tctx(t, 20*time.Second), "process", "h1", messages.OpCreate, messages.CreateRequest{Template: tmpl}, nil); err != nil {
			t.Fatal(err)
		}
		defer func() {
			_ = ops.Do(context.Background(), "process", "h1", messages.OpDelete, messages.DeleteRequest{Name: slow, Force: true}, nil)
		}()
		if err := ops.Do(tctx(t, 20*time.Second), "process", "h1", messages.OpStart, messages.NameRequest{Name: slow}, nil); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 20*time.Second, func() error {
			var lines []messages.LogLine
			if err := ops.Do(tctx(t, 5*time.Second), "process", "h1", messages.OpLogs, messages.LogsRequest{Name: slow}, &lines); err != nil {
				return err
			}
			if len(lines) == 0 || lines[0].Line != "ready" {
				return fmt.Errorf("not ready: %v", lines)
			}
			return nil
		})
		sub, err := op.Conn.SubscribeSync("substrate.ops.process.h1.>")
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		o, err := ops.Begin(tctx(t, 10*time.Second), "process", "h1", messages.OpStop, messages.StopRequest{Name: slow, Timeout: "10m"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsg(5 * time.Second); err != nil {
			t.Fatalf("no progress on the ops subject: %v", err)
		}
		rd := f.connectAs(t, "reader")
		rcl := client.New(rd.Conn, 5*time.Second)
		if got, err := rcl.Op(tctx(t, 10*time.Second), o.ID); err != nil || got.State != messages.OpRunning {
			t.Fatalf("reader reading the record: %+v %v", got, err)
		}
		_, _ = rcl.Cancel(tctx(t, 2*time.Second), o.ID)
		rd.violated(t, "Publish", "substrate.process.h1.op-cancel")
		if _, err := ops.Cancel(tctx(t, 10*time.Second), o.ID); err != nil {
			t.Fatal(err)
		}
		final, _ := ops.Wait(tctx(t, 30*time.Second), o.ID, nil)
		if final.State != messages.OpCancelled {
			t.Fatalf("operation %+v", final)
		}
		// A worker writes only its own host's records.
		w := f.connectAs(t, "worker-h1")
		js, _ := jetstream.New(w.Conn)
		kv, err := js.KeyValue(tctx(t, 5*time.Second), natsauth.OpsBucket)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = kv.Put(tctx(t, time.Second), "process.h2.forged", []byte("{}"))
		w.violated(t, "Publish", "$KV.SUBSTRATE_OPS.process.h2.forged")
	})

	t.Run("a fake worker cannot answer another host's requests", func(t *testing.T) {
		// worker-h2's identity, and a client's, trying to serve h1.
		for _, who := range []string{"worker-h2", "operator"} {
			c := f.connectAs(t, who)
			if _, err := c.QueueSubscribe("substrate.process.h1.*", "substrate", func(m *nats.Msg) { _ = m.Respond([]byte(`{"result":[]}`)) }); err != nil {
				t.Fatal(err)
			}
			c.violated(t, "Subscription", "substrate.process.h1.*")
		}
		// Every request meant for h1 is answered by h1.
		for i := range 20 {
			r, err := ops.DoReply(tctx(t, 10*time.Second), "process", "h1", messages.OpGet, messages.NameRequest{Name: inst}, nil)
			if err != nil || r.Host != "h1" {
				t.Fatalf("request %d: %v, answered by %q", i, err, r.Host)
			}
		}
	})

	t.Run("no one else reads request bodies", func(t *testing.T) {
		got := make(chan *nats.Msg, 64)
		for _, s := range []struct{ who, subject string }{
			{"worker-h2", "substrate.>"}, {"worker-h2", "substrate.*.h1.*"}, {"worker-h2", "substrate.process.*"},
			{"reader", "substrate.>"}, {"events", ">"}, {"admin", "substrate.>"},
		} {
			c := f.connectAs(t, s.who)
			if _, err := c.ChanSubscribe(s.subject, got); err != nil {
				t.Fatal(err)
			}
			c.violated(t, "Subscription", s.subject)
		}
		// A create carrying a secret goes by; nobody but h1 sees it.
		tmpl := messages.Template{Name: "sec-secret", BaseImage: "/bin/true", Environment: map[string]string{"DB_PASSWORD": "x"}}
		_ = ops.Do(tctx(t, 10*time.Second), "process", "h1", messages.OpCreate, messages.CreateRequest{Template: tmpl}, nil)
		_ = ops.Do(tctx(t, 10*time.Second), "process", "h1", messages.OpDelete, messages.DeleteRequest{Name: "sec-secret", Force: true}, nil)
		select {
		case m := <-got:
			t.Fatalf("%s was delivered to a sniffer: %s", m.Subject, m.Data)
		case <-time.After(300 * time.Millisecond):
		}
	})

	t.Run("no one reads another's replies", func(t *testing.T) {
		rd := f.connectAs(t, "reader")
		for _, s := range []string{"_INBOX.>", "_INBOX_operator.>", "_INBOX_worker-h1.>", ">"} {
			if _, err := rd.SubscribeSync(s); err != nil {
				t.Fatal(err)
			}
			rd.violated(t, "Subscription", s)
		}
		// Nor forges one: publishing into another's inbox.
		if err := rd.Publish("_INBOX_operator.fake", []byte("{}")); err != nil {
			t.Fatal(err)
		}
		rd.violated(t, "Publish", "_INBOX_operator.fake")
	})

	t.Run("no one forges events or metrics", func(t *testing.T) {
		for _, s := range []struct{ who, subject string }{
			{"operator", "substrate.events.process.h1.sec-web.deleted"},
			{"operator", "substrate.events.x"},
			{"admin", "substrate.events.process.h1.sec-web.deleted"},
			{"events", "substrate.metrics.process.h1.sec-web"},
			{"worker-h2", "substrate.events.process.h1.sec-web.deleted"},
			{"worker-h2", "substrate.metrics.process.h1.sec-web"},
			{"worker-h2", "substrate.process.h1.delete"}, // a worker is no client
		} {
			c := f.connectAs(t, s.who)
			if err := c.Publish(s.subject, []byte(`{"specversion":"1.0"}`)); err != nil {
				t.Fatal(err)
			}
			c.violated(t, "Publish", s.subject)
		}
	})

	t.Run("no one deletes or drains another's consumers", func(t *testing.T) {
		// The operator's own ordered consumer, and the event reader's durable.
		js, _ := jetstream.New(op.Conn)
		oc, err := js.OrderedConsumer(tctx(t, 10*time.Second), messages.EventsStream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := oc.Next(jetstream.FetchMaxWait(2 * time.Second)); err != nil {
			t.Fatal(err)
		}
		name := oc.CachedInfo().Name
		rd := f.connectAs(t, "reader")
		rjs, _ := jetstream.New(rd.Conn)
		for _, c := range []string{name, "events"} {
			_ = rjs.DeleteConsumer(tctx(t, time.Second), messages.EventsStream, c)
			rd.violated(t, "Publish", "$JS.API.CONSUMER.DELETE.SUBSTRATE_EVENTS."+c)
		}
		if err := rd.PublishRequest("$JS.API.CONSUMER.MSG.NEXT.SUBSTRATE_EVENTS.events", rd.NewInbox(), []byte(`{"batch":1}`)); err != nil {
			t.Fatal(err)
		}
		rd.violated(t, "Publish", "$JS.API.CONSUMER.MSG.NEXT.SUBSTRATE_EVENTS.events")
		for _, s := range []string{"$JS.API.STREAM.DELETE.SUBSTRATE_EVENTS", "$JS.API.STREAM.PURGE.SUBSTRATE_EVENTS", "$JS.API.CONSUMER.LIST.SUBSTRATE_EVENTS"} {
			if err := rd.Publish(s, nil); err != nil {
				t.Fatal(err)
			}
			rd.violated(t, "Publish", s)
		}
		// The durable is still there for its owner.
		ejs, _ := jetstream.New(f.connectAs(t, "events").Conn)
		if _, err := ejs.Consumer(tctx(t, 5*time.Second), messages.EventsStream, "events"); err != nil {
			t.Fatalf("the event reader's durable: %v", err)
		}
	})

	t.Run("workers write only their own host's inventory keys", func(t *testing.T) {
		w := f.connectAs(t, "worker-h1")
		js, _ := jetstream.New(w.Conn)
		kv, err := js.KeyValue(tctx(t, 5*time.Second), natsauth.InventoryBucket)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(tctx(t, 5*time.Second), "process.h1.web", []byte("{}")); err != nil {
			t.Fatalf("own key: %v", err)
		}
		_, _ = kv.Put(tctx(t, time.Second), "process.h2.web", []byte("{}"))
		w.violated(t, "Publish", "$KV.SUBSTRATE_INVENTORY.process.h2.web")
		hb, err := js.KeyValue(tctx(t, 5*time.Second), natsauth.WorkersBucket)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := hb.Put(tctx(t, 5*time.Second), "h1", []byte("{}")); err != nil {
			t.Fatalf("own heartbeat: %v", err)
		}
		_, _ = hb.Put(tctx(t, time.Second), "h2", []byte("{}"))
		w.violated(t, "Publish", "$KV.SUBSTRATE_WORKERS.h2")
	})
}

// TestShippedIsGenerated: the shipped accounts.conf is exactly what
// `subbus admin creds --hosts h1,h2 --env-keys` generates, so the model
// the tests prove is the one the generator writes for any fleet.
func TestShippedIsGenerated(t *testing.T) {
	f := natsauth.Fleet{Hosts: []string{"h1", "h2"}}
	ids, err := f.Identities()
	if err != nil {
		t.Fatal(err)
	}
	want := f.Config(ids, natsauth.EnvKey, f.Header(true))
	got, err := os.ReadFile(shipped(t, "accounts.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("deployments/nats/accounts.conf differs from the generator's output; regenerate it with\n" +
			"  subbus admin creds --hosts h1,h2 --env-keys --out DIR && cp DIR/accounts.conf deployments/nats/")
	}
}

// TestGeneratedFleet runs the generator's own output (literal public
// keys) for a fleet with a cluster-wide driver and scoped clients:
// workers join only the queue group of pooled subjects, and driver and
// host scopes hold.
func TestGeneratedFleet(t *testing.T) {
	fl := natsauth.Fleet{Hosts: []string{"h1", "h2"}, ClusterDrivers: []string{"process"}, Clients: []natsauth.Identity{
		{Name: "admin", Role: natsauth.RoleAdmin},
		{Name: "op", Role: natsauth.RoleOperator},
		{Name: "ops-h1", Role: natsauth.RoleOperator, Hosts: []string{"h1"}},
		{Name: "dock", Role: natsauth.RoleOperator, Drivers: []string{"docker"}},
		{Name: "look", Role: natsauth.RoleReader, Drivers: []string{"process"}, Hosts: []string{"h2"}},
		{Name: "audit", Role: natsauth.RoleEvents},
		{Name: "audit2", Role: natsauth.RoleEvents},
	}}
	ids, err := fl.Identities()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "accounts.conf")
	if err := os.WriteFile(conf, fl.Config(ids, natsauth.PublicKey, fl.Header(false)), 0o600); err != nil {
		t.Fatal(err)
	}
	f := startFleetIDs(t, ids, conf, shipped(t, "tls.conf"))
	f.createStreams(t)
	f.startWorker(t, "h1", []string{"process"}, true)
	f.startWorker(t, "h2", []string{"process"}, true)

	t.Run("pooled subjects of a cluster-wide driver reach the queue group", func(t *testing.T) {
		hosts := map[string]bool{}
		op := client.New(f.connectAs(t, "op").Conn, 5*time.Second)
		testenv.Eventually(t, 10*time.Second, func() error {
			r, err := op.DoReply(tctx(t, 5*time.Second), "process", "", messages.OpList, nil, nil)
			if err != nil {
				return err
			}
			hosts[r.Host] = true
			if !hosts["h1"] || !hosts["h2"] {
				return fmt.Errorf("pooled requests answered by %v only", hosts)
			}
			return nil
		})
	})

	t.Run("workers of a cluster-wide driver take and release leases", func(t *testing.T) {
		op := client.New(f.connectAs(t, "op").Conn, 10*time.Second)
		const name = "gen-lease"
		tmpl := messages.Template{Name: name, BaseImage: "/bin/sleep", Command: []string{"/bin/sleep", "60"}}
		if err := op.Do(tctx(t, 20*time.Second), "process", "h1", messages.OpCreate, messages.CreateRequest{Template: tmpl}, nil); err != nil {
			t.Fatal(err)
		}
		if err := op.Do(tctx(t, 20*time.Second), "process", "h1", messages.OpDelete, messages.DeleteRequest{Name: name, Force: true}, nil); err != nil {
			t.Fatal(err)
		}
		// Released: the key was written (a revision exists) and deleted.
		if _, err := f.kvGet(t, natsauth.LeasesBucket, "process."+name); !errors.Is(err, jetstream.ErrKeyDeleted) && !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatalf("lease of %s after the delete: %v, want released", name, err)
		}
		js, _ := jetstream.New(f.connectAs(t, "admin").Conn)
		st, err := js.Stream(tctx(t, 5*time.Second), "KV_"+natsauth.LeasesBucket)
		if err != nil {
			t.Fatal(err)
		}
		if n := st.CachedInfo().State.LastSeq; n < 2 {
			t.Fatalf("SUBSTRATE_LEASES was written %d times, want a lease per mutation", n)
		}
	})

	t.Run("a worker joins pooled subjects only in the queue group", func(t *testing.T) {
		w := f.connectAs(t, "worker-h2")
		if _, err := w.SubscribeSync("substrate.process.*"); err != nil {
			t.Fatal(err)
		}
		w.violated(t, "Subscription", "substrate.process.*")
		if _, err := w.QueueSubscribeSync("substrate.process.*", "sniffers"); err != nil {
			t.Fatal(err)
		}
		w.violatedText(t, `Subscription to "substrate.process.*" using queue "sniffers"`)
		if _, err := w.SubscribeSync("substrate.docker.*"); err != nil {
			t.Fatal(err)
		}
		w.violated(t, "Subscription", "substrate.docker.*")
	})

	t.Run("driver and host scopes", func(t *testing.T) {
		for _, c := range []struct {
			who, driver, host string
			op                messages.Op
			ok                bool
		}{
			{"ops-h1", "process", "h1", messages.OpList, true},
			{"ops-h1", "process", "h2", messages.OpList, false},
			{"ops-h1", "process", "", messages.OpList, false}, // pooled names no host
			{"dock", "process", "h1", messages.OpList, false},
			{"dock", "docker", "h1", messages.OpList, true}, // allowed; nobody serves it
			{"look", "process", "h2", messages.OpGet, true},
			{"look", "process", "h2", messages.OpStart, false},
			{"look", "process", "h1", messages.OpList, false},
		} {
			conn := f.connectAs(t, c.who)
			cl := client.New(conn.Conn, time.Second)
			var body any = messages.NameRequest{Name: "x"}
			if c.op == messages.OpList {
				body = nil
			}
			err := cl.Do(tctx(t, time.Second), c.driver, c.host, c.op, body, nil)
			subject := messages.RequestSubject(c.driver, c.host, c.op)
			if !c.ok {
				conn.violated(t, "Publish", subject)
				continue
			}
			var nw *client.NoWorkerError
			if err != nil && !errors.Is(err, drivers.ErrNotFound) && !errors.As(err, &nw) {
				t.Errorf("%s %s: %v", c.who, subject, err)
			}
		}
	})

	t.Run("an event reader cannot use another's durable", func(t *testing.T) {
		a2 := f.connectAs(t, "audit2")
		js, _ := jetstream.New(a2.Conn)
		_, _ = js.CreateOrUpdateConsumer(tctx(t, time.Second), messages.EventsStream, jetstream.ConsumerConfig{Durable: "audit"})
		a2.violated(t, "Publish", "$JS.API.CONSUMER.CREATE.SUBSTRATE_EVENTS.audit")
		if _, err := js.CreateOrUpdateConsumer(tctx(t, 5*time.Second), messages.EventsStream, jetstream.ConsumerConfig{Durable: "audit2"}); err != nil {
			t.Fatalf("own durable: %v", err)
		}
	})
}

// TestClientCertificates: with verify: true (mTLS, optional in the
// shipped tls.conf) a client needs a certificate signed by the CA as
// well as its nkey.
func TestClientCertificates(t *testing.T) {
	dir := t.TempDir()
	ca, caFile, certFile, keyFile := tlsFiles(t, dir)
	cl, err := ca.Client("operator", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := natsauth.NewCA("other", time.Hour)
	bad, _ := other.Client("operator", time.Hour)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tlsConf := write("mtls.conf", []byte(fmt.Sprintf("tls {\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n  verify: true\n}\n", certFile, keyFile, caFile)))
	fl := natsauth.Fleet{Hosts: []string{"h1"}}
	ids, err := fl.Identities()
	if err != nil {
		t.Fatal(err)
	}
	conf := write("accounts.conf", fl.Config(ids, natsauth.PublicKey, fl.Header(false)))
	f := startFleetIDs(t, ids, conf, tlsConf)
	f.ca = caFile
	nkey, _ := nats.NkeyOptionFromSeed(f.seeds["operator"])
	tests := []struct {
		name       string
		cert, key  []byte
		wantRefuse bool
	}{
		{"no client certificate", nil, nil, true},
		{"certificate of another CA", bad.CertPEM, bad.KeyPEM, true},
		{"certificate of the CA", cl.CertPEM, cl.KeyPEM, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := []nats.Option{nkey, nats.RootCAs(caFile)}
			if tt.cert != nil {
				opts = append(opts, nats.ClientCert(write(tt.name+".pem", tt.cert), write(tt.name+"-key.pem", tt.key)))
			}
			nc, err := nats.Connect(f.url, opts...)
			if nc != nil {
				defer nc.Close()
			}
			if tt.wantRefuse != (err != nil) {
				t.Fatalf("connect: %v, want refused %v", err, tt.wantRefuse)
			}
		})
	}
}
