package messages

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestAsyncAPIDocument checks schemas/asyncapi.yaml against the code: a
// channel per op and scope with the subject layout of RequestSubject, the
// event and metrics channels, and every $ref resolving (local files exist,
// JSON pointers point somewhere).
func TestAsyncAPIDocument(t *testing.T) {
	dir := schemaDir(t)
	b, err := os.ReadFile(filepath.Join(dir, "asyncapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if doc["asyncapi"] != "3.0.0" {
		t.Fatalf("asyncapi version %v", doc["asyncapi"])
	}
	channels, _ := doc["channels"].(map[string]any)
	addr := func(name string) string {
		c, _ := channels[name].(map[string]any)
		s, _ := c["address"].(string)
		return s
	}
	for _, op := range Ops() {
		n := strings.ReplaceAll(string(op), "-", "_")
		if got, want := addr(n), RequestSubject("{driver}", "", op); got != want {
			t.Errorf("channel %s address %q, want %q", n, got, want)
		}
		if got, want := addr(n+"_on_host"), RequestSubject("{driver}", "{host}", op); got != want {
			t.Errorf("channel %s_on_host address %q, want %q", n, got, want)
		}
	}
	if got := addr("event_stream"); got != "substrate.events.{driver}.{host}.{instance}.{type}" {
		t.Errorf("events channel %q", got)
	}
	if got := addr("metrics_stream"); got != "substrate.metrics.{driver}.{host}.{instance}" {
		t.Errorf("metrics channel %q", got)
	}
	var walk func(v any)
	refs := 0
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if k == "$ref" {
					refs++
					checkRef(t, dir, doc, e.(string))
				}
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(doc)
	if refs < 100 {
		t.Fatalf("only %d refs", refs)
	}
}

func checkRef(t *testing.T, dir string, doc map[string]any, ref string) {
	t.Helper()
	if file, ok := strings.CutPrefix(ref, "./"); ok {
		if _, err := os.Stat(filepath.Join(dir, file)); err != nil {
			t.Errorf("$ref %s: %v", ref, err)
		}
		return
	}
	ptr, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		t.Errorf("$ref %s: neither a local file nor a pointer", ref)
		return
	}
	var cur any = doc
	for _, p := range strings.Split(ptr, "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			t.Errorf("$ref %s: %s is not an object", ref, p)
			return
		}
		if cur, ok = m[p]; !ok {
			t.Errorf("$ref %s: no %s", ref, p)
			return
		}
	}
}
