package manager

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// Every error of a driver call has one message shape per code, built by
// the manager from the code and what the request named; the driver's own
// text is the detail, and the code, sentinel and native cause are kept.
func TestErrorShapes(t *testing.T) {
	native := errors.New("docker: no container \"x\"")
	tests := []struct {
		name       string
		script     func(d *fullDriver)
		call       func(m *Manager) error
		code       drivers.Code
		msg        string
		detail     string
		nativeKept bool
	}{
		{name: "missing instance", call: func(m *Manager) error { _, err := m.Get(bg, "ghost"); return err },
			code: drivers.NotFound, msg: `instance "ghost" not found`, detail: "instance ghost not found"},
		{name: "native error", script: func(d *fullDriver) { d.then("start", step{raw: native}) },
			call: func(m *Manager) error { _, err := m.Start(bg, "web"); return err },
			code: drivers.Internal, msg: `start instance "web": failed`, detail: native.Error(), nativeKept: true},
		{name: "missing snapshot of an existing instance", script: func(d *fullDriver) { d.then("snapshot-restore", step{code: drivers.NotFound}) },
			call: func(m *Manager) error { return m.RestoreSnapshot(bg, "web", "s9") },
			code: drivers.NotFound, msg: `snapshot "s9" of instance "web" not found`, detail: "scripted not_found on snapshot-restore"},
		{name: "snapshot of a missing instance", script: func(d *fullDriver) { d.then("snapshot-restore", step{code: drivers.NotFound}) },
			call: func(m *Manager) error { return m.RestoreSnapshot(bg, "ghost", "s9") },
			code: drivers.NotFound, msg: `instance "ghost" not found`, detail: "scripted not_found on snapshot-restore"},
		{name: "missing network", script: func(d *fullDriver) { d.then("network-attach", step{code: drivers.NotFound}) },
			call: func(m *Manager) error {
				_, err := m.AttachNetwork(bg, "web", drivers.NetworkConfig{NetworkName: "nope"})
				return err
			},
			code: drivers.NotFound, msg: `network "nope" of instance "web" not found`, detail: "scripted not_found on network-attach"},
		{name: "missing image", script: func(d *fullDriver) { d.then("create", step{code: drivers.NotFound}) },
			call: func(m *Manager) error {
				_, err := m.Create(bg, drivers.InstanceTemplate{Name: "new", BaseImage: "nosuch"})
				return err
			},
			code: drivers.NotFound, msg: `image "nosuch" not found`, detail: "scripted not_found on create"},
		{name: "taken name", call: func(m *Manager) error {
			_, err := m.Create(bg, drivers.InstanceTemplate{Name: "web", BaseImage: "img"})
			return err
		}, code: drivers.AlreadyExists, msg: `instance "web" already exists`, detail: "instance web exists"},
		{name: "taken clone target", script: func(d *fullDriver) { d.then("clone", step{code: drivers.AlreadyExists}) },
			call: func(m *Manager) error { _, err := m.Clone(bg, "web", "web2"); return err },
			code: drivers.AlreadyExists, msg: `instance "web2" already exists`, detail: "scripted already_exists on clone"},
		{name: "conflict", script: func(d *fullDriver) { d.then("stop", step{code: drivers.Conflict}) },
			call: func(m *Manager) error { _, err := m.Stop(bg, "web", drivers.StopOptions{Force: true}); return err },
			code: drivers.Conflict, msg: `stop instance "web": wrong state or busy`, detail: "scripted conflict on stop"},
		{name: "exited", script: func(d *fullDriver) { d.then("start", step{code: drivers.Exited}) },
			call: func(m *Manager) error { _, err := m.Start(bg, "web"); return err },
			code: drivers.Exited, msg: `start instance "web": the instance's program exited`, detail: "scripted exited on start"},
		{name: "internal", script: func(d *fullDriver) { d.then("metrics", step{code: drivers.Internal}) },
			call: func(m *Manager) error { _, err := m.Metrics(bg, "web"); return err },
			code: drivers.Internal, msg: `metrics instance "web": failed`, detail: "scripted internal on metrics"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newFullDriver("fake")
			d.add("web", drivers.StateStopped)
			h := newHarness(t, d, Options{RetryAttempts: 1, CacheTTL: -1})
			if tc.script != nil {
				tc.script(d)
			}
			err := tc.call(h.m)
			wantCode(t, err, tc.code)
			if !errors.Is(err, tc.code.Sentinel()) {
				t.Errorf("errors.Is(err, sentinel of %s) = false", tc.code)
			}
			if tc.nativeKept && !errors.Is(err, native) {
				t.Errorf("native cause lost: %v", err)
			}
			info := messages.InfoOf(err)
			if info.Message != tc.msg || info.Detail != tc.detail {
				t.Errorf("wire error = {message: %q, detail: %q}, want {%q, %q}", info.Message, info.Detail, tc.msg, tc.detail)
			}
			if want := tc.msg + ": " + tc.detail; err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
		})
	}
}

// A detail that says the same as the shape is dropped.
func TestErrorShapeDropsARepeatedDetail(t *testing.T) {
	d := newScriptDriver("fake")
	m := New(d, Options{})
	err := m.shape(context.Background(), driverCall{op: "get", subj: subject{instance: "x"}},
		drivers.Errorf(drivers.NotFound, "instance %q not found", "x"))
	if info := messages.InfoOf(err); info.Message != `instance "x" not found` || info.Detail != "" || err.Error() != info.Message {
		t.Fatalf("wire error %+v, want the message alone", info)
	}
}

// ruledDriver declares a name rule: no '_', and all digits only address.
type ruledDriver struct{ *fullDriver }

func (ruledDriver) NameRule() drivers.NameRule {
	return drivers.NameRule{Text: "no underscores; digits address only", Valid: func(n string, create bool) bool {
		if strings.Trim(n, "0123456789") == "" {
			return !create
		}
		return !strings.Contains(n, "_")
	}}
}

// The manager checks the driver's name rule before any driver call:
// invalid_argument stating the rule, no call, no event.
func TestDriverNameRule(t *testing.T) {
	d := ruledDriver{newFullDriver("fake")}
	d.add("web", drivers.StateStopped)
	h := newHarness(t, d, Options{RetryAttempts: 1, CacheTTL: -1})
	refused := []struct {
		name string
		call func() error
	}{
		{"create", func() error {
			_, err := h.m.Create(bg, drivers.InstanceTemplate{Name: "my_box", BaseImage: "img"})
			return err
		}},
		{"create all digits", func() error {
			_, err := h.m.Create(bg, drivers.InstanceTemplate{Name: "4242", BaseImage: "img"})
			return err
		}},
		{"clone target", func() error { _, err := h.m.Clone(bg, "web", "web_2"); return err }},
		{"start", func() error { _, err := h.m.Start(bg, "my_box"); return err }},
		{"snapshot", func() error { return h.m.RestoreSnapshot(bg, "my_box", "s1") }},
	}
	for _, r := range refused {
		t.Run(r.name, func(t *testing.T) {
			before := d.totalCalls()
			h.events.reset()
			err := r.call()
			wantCode(t, err, drivers.InvalidArgument)
			if !strings.Contains(err.Error(), "no underscores; digits address only") {
				t.Errorf("error %q does not state the rule", err)
			}
			if n := d.totalCalls() - before; n != 0 {
				t.Errorf("%d driver calls", n)
			}
			if evs := h.events.all(); len(evs) != 0 {
				t.Errorf("events %+v", evs)
			}
		})
	}
	// All digits may still address an instance.
	if _, err := h.m.Get(bg, "4242"); drivers.CodeOf(err) != drivers.NotFound {
		t.Errorf("Get(4242): %v, want not_found", err)
	}
}
