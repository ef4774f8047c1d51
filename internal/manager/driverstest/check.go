package driverstest

import (
	"errors"
	"fmt"
	"slices"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
)

// wantCode fails the test unless err carries code (checked with errors.Is
// against the code's sentinel, as callers do).
func (e *env) wantCode(op string, err error, code drivers.Code) {
	e.t.Helper()
	if err == nil {
		e.t.Fatalf("%s: got nil error, want %s", op, code)
	}
	if !errors.Is(err, sentinel(code)) {
		e.t.Fatalf("%s: got %v (code %s), want code %s", op, err, drivers.CodeOf(err), code)
	}
}

func sentinel(c drivers.Code) error { return c.Sentinel() }

// must fails the test on err.
func (e *env) must(op string, err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatalf("%s: %v", op, err)
	}
}

// waitState polls Get until name is in state want.
func (e *env) waitState(name string, want drivers.State) drivers.Instance {
	e.t.Helper()
	var last drivers.Instance
	testenv.Eventually(e.t, e.s.settle, func() error {
		i, err := e.m.Get(e.ctx(), name)
		if err != nil {
			return err
		}
		last = i
		if i.State != want {
			return fmt.Errorf("%s is %s (native %q), want %s", name, i.State, i.NativeState, want)
		}
		return nil
	})
	return last
}

// waitGone polls Get until name is NotFound and List does not show it.
func (e *env) waitGone(name string) {
	e.t.Helper()
	testenv.Eventually(e.t, e.s.settle, func() error {
		_, err := e.m.Get(e.ctx(), name)
		if err == nil {
			return fmt.Errorf("%s still exists", name)
		}
		if !errors.Is(err, drivers.ErrNotFound) {
			return fmt.Errorf("Get(%s) after delete: %w, want not_found", name, err)
		}
		l, err := e.m.List(e.ctx())
		if err != nil {
			return err
		}
		if slices.ContainsFunc(l, func(i drivers.Instance) bool { return i.Name == name }) {
			return fmt.Errorf("%s still listed", name)
		}
		return nil
	})
}

// listed reports whether List shows name.
func (e *env) listed(name string) (drivers.Instance, bool) {
	e.t.Helper()
	return e.listedBy(e.m, name)
}

// listedBy reports whether m's List shows name.
func (e *env) listedBy(m *manager.Manager, name string) (drivers.Instance, bool) {
	e.t.Helper()
	l, err := m.List(e.ctx())
	e.must("List", err)
	for _, i := range l {
		if i.Name == name {
			return i, true
		}
	}
	return drivers.Instance{}, false
}
