package clitest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/messages"
)

func TestHarness(t *testing.T) {
	clitest.Isolate(t)
	url := clitest.StartNATS(t)
	clitest.StartWorker(t, url, "h1", manager.New(process.New(process.Options{StateDir: t.TempDir(), Cgroups: "off", DefaultUser: "root", AllowRoot: true}),
		manager.Options{Host: "h1"}))
	name := clitest.Unique("harness")
	t.Cleanup(func() { clitest.Subbus(t, url, "process", "delete", name, "--force") })
	clitest.Subbus(t, url, "process", "create", name, "--image", "/bin/sleep", "--", "/bin/sleep", "60").Want(t, 0, "create")
	r := clitest.Subbus(t, url, "process", "list", "--json").Want(t, 0, "list")
	var list []messages.Instance
	if err := json.Unmarshal([]byte(r.Stdout), &list); err != nil || len(list) != 1 || list[0].Name != name {
		t.Fatalf("list: %v %s", err, r.Stdout)
	}
	r = clitest.Subbus(t, url, "process", "get", "nope").Want(t, cli.ExitNotFound, "get a missing instance")
	if !strings.HasPrefix(r.Stderr, "error: not_found:") {
		t.Fatalf("stderr %q", r.Stderr)
	}
}

// recorder is a testing.TB that notes failures instead of failing; its
// Fatalf ends the calling goroutine, as testing's does.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}

func (r *recorder) failures() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.errors, "\n")
}

func TestFleet(t *testing.T) {
	f := clitest.StartFleet(t, "h1", time.Minute, manager.New(process.New(process.Options{StateDir: t.TempDir(), Cgroups: "off", DefaultUser: "root", AllowRoot: true}),
		manager.Options{Host: "h1"}))
	name := clitest.Unique("fleet")
	t.Cleanup(func() { f.Run("process", "delete", name, "--force") })
	events := f.WatchEvents("process", name)
	f.OK("process", "create", name, "--", "sleep", "60")
	if r := f.Expect(cli.ExitAlreadyExists, "process", "create", name, "--image", "/bin/sleep"); !strings.Contains(r.Stderr, "already_exists") {
		t.Errorf("second create: stderr %q", r.Stderr)
	}

	rec := &recorder{TB: t}
	clitest.Result{Code: cli.ExitNotFound, Stderr: "error: not_found: x"}.Expect(rec, 0, "get x")
	if got := rec.failures(); !strings.Contains(got, "get x: subbus exited 4, want 0") || !strings.Contains(got, "not_found: x") {
		t.Errorf("Expect reported %q", got)
	}

	// The manager's own created event is there, but it is not native.
	rec = &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		events.WaitNative(rec, drivers.EventCreated, 300*time.Millisecond)
	}()
	<-done
	if got := rec.failures(); !strings.Contains(got, "no native created event for "+name) {
		t.Errorf("WaitNative without a native event reported %q", got)
	}

	// A native event published to the stream is found.
	nc, err := nats.Connect(f.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(messages.CloudEvent{Data: messages.Event{ID: "n1", Type: drivers.EventStopped, Instance: name,
		Host: "h1", Driver: "process", Source: messages.SourceNative}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), messages.EventSubject("process", "h1", name, "stopped"), b); err != nil {
		t.Fatal(err)
	}
	if ev := events.WaitNative(t, drivers.EventStopped, 10*time.Second); ev.ID != "n1" || ev.Source != messages.SourceNative {
		t.Errorf("WaitNative returned %+v, want the native event n1", ev)
	}
}
