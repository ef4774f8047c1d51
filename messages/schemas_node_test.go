package messages

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// TestSchemasWithReferenceTools runs scripts/schemas-check.mjs: the
// AsyncAPI reference parser (@asyncapi/parser) on schemas/asyncapi.yaml,
// which validates every payload schema the document references, and ajv
// in strict mode (draft 2020-12) on every schemas/**/*.schema.json. It
// needs node and the packages scripts/setup/tools.sh installs into
// $SUBBUS_NODE_DIR (default /var/cache/subbus-node): without them it
// skips saying how to install them, and fails under CI=true.
func TestSchemasWithReferenceTools(t *testing.T) {
	if testing.Short() {
		t.Skip("runs node")
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..")
	dir := os.Getenv("SUBBUS_NODE_DIR")
	if dir == "" {
		dir = "/var/cache/subbus-node"
	}
	modules := filepath.Join(dir, "node_modules")
	node, err := exec.LookPath("node")
	if err == nil {
		for _, pkg := range []string{"@asyncapi/parser", "ajv", "ajv-formats"} {
			if _, serr := os.Stat(filepath.Join(modules, pkg, "package.json")); serr != nil {
				err = errors.Join(err, serr)
			}
		}
	}
	if err != nil {
		const how = "install them with: sudo bash scripts/setup/tools.sh (node, npm and the packages of scripts/setup/node/package.json)"
		if os.Getenv("CI") == "true" {
			t.Fatalf("node or its schema tools are missing (%v); %s", err, how)
		}
		t.Skipf("node or its schema tools are missing (%v); %s", err, how)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, node, filepath.Join(root, "scripts", "schemas-check.mjs"), schemaDir(t), modules).CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("schemas-check.mjs: %v", err)
	}
}
