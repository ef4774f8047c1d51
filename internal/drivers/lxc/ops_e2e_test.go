package lxc_test

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// TestLongOperationCancel: a clone (an LXD "Creating instance" operation
// copying 200 MB) begun with --no-wait is cancelled with `subbus ops
// cancel`. The op's context ends the driver's wait on the LXD operation;
// LXD cannot cancel a copy (may_cancel is false for instance creation), so
// the driver lets it finish and then deletes what it made: the operation
// ends cancelled at once and no half-made (or whole) clone stays behind
// (docs/lxc.md "Long operations").
func TestLongOperationCancel(t *testing.T) {
	f := startWorker(t)
	src, dst := clitest.Unique("sblo-src"), clitest.Unique("sblo-dst")
	removeAfter(t, src, dst)
	f.OK("lxc", "create", src, "--image", e2eImage)
	big := filepath.Join(t.TempDir(), "big")
	fh, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(fh, rand.Reader, 200<<20); err != nil {
		t.Fatal(err)
	}
	_ = fh.Close()
	if out, err := exec.Command("lxc", "file", "push", "--quiet", big, src+"/big").CombinedOutput(); err != nil {
		t.Fatalf("lxc file push: %v %s", err, out)
	}
	_ = os.Remove(big)

	var o messages.Operation
	if err := json.Unmarshal([]byte(f.OK("lxc", "clone", src, dst, "--no-wait", "--json")), &o); err != nil || o.ID == "" {
		t.Fatalf("clone --no-wait: %v %+v", err, o)
	}
	start := time.Now()
	f.OK("ops", "cancel", o.ID)
	r := f.Expect(cli.ExitTimeout, "ops", "wait", o.ID)
	if !strings.Contains(r.Stdout, "cancelled after") {
		t.Fatalf("ops wait:\n%s", r.Stdout)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("the cancel took %v", d)
	}
	// The copy LXD could not stop is removed once it is over.
	testenv.Eventually(t, 90*time.Second, func() error {
		if r := f.Run("lxc", "get", dst); r.Code != cli.ExitNotFound {
			return fmt.Errorf("clone still there (exit %d): %s", r.Code, r.Stdout)
		}
		return nil
	})
	// The source is untouched.
	if out := f.OK("lxc", "get", src); !strings.Contains(out, "stopped") {
		t.Fatalf("source after the cancelled clone:\n%s", out)
	}
}
