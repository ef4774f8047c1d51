package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/registry"
)

// TestDriverSelection: with no driver list the worker serves process plus
// whatever is detected, logging every registered driver as found or not
// (with the reason); an explicit list is taken as is; unknown names fail.
func TestDriverSelection(t *testing.T) {
	cfg, err := config.Parse([]byte("process:\n  state_dir: " + t.TempDir() + "\n  cgroups: \"off\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	w, err := New(context.Background(), Options{Host: "h1", Config: cfg, Logger: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	closeAll := func(w *Worker) {
		t.Cleanup(func() {
			for _, m := range w.Managers() {
				_ = m.Close()
			}
		})
	}
	closeAll(w)
	names := w.driverNames()
	if !strings.Contains(","+strings.Join(names, ",")+",", ",process,") {
		t.Fatalf("drivers %v lack process", names)
	}
	logged := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var l struct{ Driver, Message, Reason string }
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatal(err)
		}
		if l.Driver != "" {
			logged[l.Driver] = l.Message
			if l.Message == "driver not found" && l.Reason == "" {
				t.Errorf("%s not found without a reason", l.Driver)
			}
		}
	}
	for _, n := range registry.Names() {
		if logged[n] == "" {
			t.Errorf("driver %s not logged (logs: %s)", n, logs.String())
		}
		served := strings.Contains(","+strings.Join(names, ",")+",", ","+n+",")
		if served == (logged[n] == "driver not found") {
			t.Errorf("driver %s: served=%v but logged %q", n, served, logged[n])
		}
	}

	w, err = New(context.Background(), Options{Host: "h1", Config: cfg, Drivers: []string{"process"}, Logger: zerolog.Nop()})
	if err != nil || strings.Join(w.driverNames(), ",") != "process" {
		t.Fatalf("explicit list: %v %v", w, err)
	}
	closeAll(w)
	if _, err := New(context.Background(), Options{Host: "h1", Config: cfg, Drivers: []string{"nosuch"}, Logger: zerolog.Nop()}); err == nil ||
		!strings.Contains(err.Error(), "unknown driver") {
		t.Fatalf("unknown driver: %v", err)
	}
	if _, err := New(context.Background(), Options{Host: "bad.host", Config: cfg, Logger: zerolog.Nop()}); err == nil {
		t.Fatal("bad host accepted")
	}
}
