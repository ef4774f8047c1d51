// Package e2etest holds the end-to-end session every driver is tested
// with: one script of user steps (testdata/session.txtar), typed as a
// user would type them into subbus, run once per driver against a real
// worker and the real substrate (session_test.go). Nothing outside tests
// imports it.
package e2etest
