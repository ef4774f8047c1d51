package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/worker"
	"github.com/subbus/subbus/messages"
)

// natsURL is the address of the nats-server the examples talk to: a real
// server with JetStream and a real worker for host "h1" serving the
// process driver, started by TestMain. In a program of yours it is the
// address of your NATS (natsconn's flags, or nats.DefaultURL).
var natsURL string

func TestMain(m *testing.M) {
	os.Exit(runWithWorker(m))
}

func runWithWorker(m *testing.M) int {
	dir, err := os.MkdirTemp("", "subbus-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir,
		JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30, NoSigs: true, NoLog: true})
	if err != nil {
		log.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats-server did not start")
	}
	defer s.Shutdown()
	natsURL = s.ClientURL()

	d := process.New(process.Options{StateDir: dir + "/process", Cgroups: "off", DefaultUser: "root", AllowRoot: true})
	w, err := worker.New(context.Background(), worker.Options{
		Host:          "h1",
		Managers:      []*manager.Manager{manager.New(d, manager.Options{Host: "h1", StopTimeout: 5 * time.Second})},
		ManageStreams: true,
		Connect:       func(extra ...nats.Option) (*nats.Conn, error) { return nats.Connect(natsURL, extra...) },
		Logger:        zerolog.Nop(),
		Version:       "0.0.1-example",
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-w.Ready():
	case err := <-done:
		log.Fatalf("worker stopped: %v", err)
	case <-time.After(60 * time.Second):
		log.Fatal("worker not ready")
	}
	code := m.Run()
	cancel()
	<-done
	return code
}

// connect returns a client over a new NATS connection.
func connect() (*client.Client, func()) {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		log.Fatal(err)
	}
	return client.New(nc, 30*time.Second), nc.Close
}

// Create an instance and start it: create is a request to
// substrate.process.create, start to substrate.process.start.
func Example_createAndStart() {
	c, done := connect()
	defer done()
	ctx := context.Background()

	var inst messages.Instance
	tmpl := messages.Template{Name: "example-web", Command: []string{"/bin/sh", "-c", "echo ready; exec sleep 60"}}
	if err := c.Do(ctx, "process", "", messages.OpCreate, messages.CreateRequest{Template: tmpl}, &inst); err != nil {
		log.Fatal(err)
	}
	fmt.Println("created", inst.Name, inst.State)

	var res messages.ChangedResult
	if err := c.Do(ctx, "process", "", messages.OpStart, messages.NameRequest{Name: "example-web"}, &res); err != nil {
		log.Fatal(err)
	}
	fmt.Println("started", res.Changed, res.Instance.State)

	// Errors are typed: a second create of the name is already_exists.
	err := c.Do(ctx, "process", "", messages.OpCreate, messages.CreateRequest{Template: tmpl}, &inst)
	fmt.Println(errors.Is(err, messages.ErrAlreadyExists))

	_ = c.Do(ctx, "process", "", messages.OpDelete, messages.DeleteRequest{Name: "example-web", Force: true}, &res)
	// Output:
	// created example-web stopped
	// started true running
	// true
}

// List the instances a driver has.
func Example_list() {
	c, done := connect()
	defer done()
	ctx := context.Background()
	var created messages.Instance
	tmpl := messages.Template{Name: "example-listed", Command: []string{"/bin/true"}}
	if err := c.Do(ctx, "process", "", messages.OpCreate, messages.CreateRequest{Template: tmpl}, &created); err != nil {
		log.Fatal(err)
	}
	var list []messages.Instance
	if err := c.Do(ctx, "process", "", messages.OpList, nil, &list); err != nil {
		log.Fatal(err)
	}
	for _, i := range list {
		if i.Name == "example-listed" {
			fmt.Println(i.Name, i.Driver, i.Host, i.State)
		}
	}
	var res messages.ChangedResult
	_ = c.Do(ctx, "process", "", messages.OpDelete, messages.DeleteRequest{Name: "example-listed", Force: true}, &res)
	// Output:
	// example-listed process h1 stopped
}

// Follow lifecycle events from the SUBSTRATE_EVENTS stream.
func Example_followEvents() {
	c, done := connect()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var inst messages.Instance
	tmpl := messages.Template{Name: "example-evented", Command: []string{"/bin/true"}}
	if err := c.Do(ctx, "process", "", messages.OpCreate, messages.CreateRequest{Template: tmpl}, &inst); err != nil {
		log.Fatal(err)
	}
	q := client.EventQuery{Driver: "process", Instance: "example-evented", Since: time.Now().Add(-time.Minute)}
	err := c.Events(ctx, q, func(e messages.CloudEvent) error {
		fmt.Println(e.Type)
		return client.ErrStopStream
	})
	if err != nil {
		log.Fatal(err)
	}
	var res messages.ChangedResult
	_ = c.Do(ctx, "process", "", messages.OpDelete, messages.DeleteRequest{Name: "example-evented", Force: true}, &res)
	// Output:
	// io.subbus.instance.created
}

// Begin a long operation without waiting, then follow it by its id: the
// worker runs it in the background, records it in SUBSTRATE_OPS and
// publishes its progress; any client can wait for it or cancel it later.
func ExampleClient_Begin() {
	c, done := connect()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	tmpl := messages.Template{Name: "example-long", Command: []string{"/bin/sleep", "60"}}
	op, err := c.Begin(ctx, "process", "", messages.OpCreate, messages.CreateRequest{Template: tmpl})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("accepted:", op.Op, op.Instance, op.State)

	// The callback sees the record as it is when Wait starts and after
	// every change (o.Progress is a line such as "created after 26ms").
	final, err := c.Wait(ctx, op.ID, func(o messages.Operation) {
		if o.State.Final() {
			fmt.Println("ended:", o.State)
		}
	})
	if err != nil {
		log.Fatal(err)
	}
	var inst messages.Instance
	_ = json.Unmarshal(final.Result, &inst)
	fmt.Println("result:", inst.Name, inst.State)

	// Cancelling an operation that ended changes nothing.
	again, _ := c.Cancel(ctx, op.ID)
	fmt.Println("after cancel:", again.State)

	var res messages.ChangedResult
	_ = c.Do(ctx, "process", "", messages.OpDelete, messages.DeleteRequest{Name: "example-long", Force: true}, &res)
	// Output:
	// accepted: create example-long running
	// ended: succeeded
	// result: example-long stopped
	// after cancel: succeeded
}
