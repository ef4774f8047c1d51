package clitest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Build builds a command of this module (pkg relative to the module
// root, e.g. "./cmd/subbus") into a temporary directory of t and returns
// the binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = root
	cmd.Env = os.Environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// BenchBinary runs the subbus binary bin (Build) with args against the
// NATS server at url b.N times: what a user's shell costs, process start
// included. It fails b when a run exits non-zero or prints no want.
func BenchBinary(b *testing.B, bin, url, want string, args ...string) {
	b.Helper()
	args = append(args, "--server", url)
	for range b.N {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			b.Fatalf("subbus %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
}
