// Package testenv holds helpers for tests that need real daemons: skipping
// (or, in CI, failing) when a daemon is missing, and polling instead of
// sleeping.
package testenv

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// InCI reports whether the tests run in CI (CI=true), where a missing
// daemon is a failure rather than a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require skips the test (fails it in CI) when err is non-nil, saying what
// is missing and how to start it.
func Require(t testing.TB, what string, err error, howToStart string) {
	t.Helper()
	if err == nil {
		return
	}
	if InCI() {
		t.Fatalf("%s is not available (CI=true, so this fails): %v; start it with: %s", what, err, howToStart)
	}
	t.Skipf("%s is not available: %v; start it with: %s (or run `make setup`)", what, err, howToStart)
}

// Eventually polls fn every 20ms until it returns nil or timeout passes,
// then fails the test with fn's last error.
func Eventually(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Tool returns the path of command name, skipping the test (failing it in
// CI) when it is not installed; install says how to get it.
func Tool(t testing.TB, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Require(t, name, err, install)
	return p
}
