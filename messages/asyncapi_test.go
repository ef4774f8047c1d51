package messages

import (
	"encoding/json"
	"fmt"
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
	if doc["asyncapi"] != "3.1.0" {
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

// TestPayloadSchemasReadAlikeInDraft07 keeps the payload schemas in the
// part of JSON Schema 2020-12 that draft-07 reads the same way. The
// AsyncAPI document declares its payloads in its default schema format
// (AsyncAPI Schema, a superset of draft-07), the one AsyncAPI tooling
// validates (it validates no 2020-12 payload); so a keyword whose meaning
// changed between the drafts — a $ref with validating siblings (ignored
// by draft-07), items as an array, and the keywords draft-07 lacks —
// would make the document say something else than the schema files.
// docs/bus.md, "Schemas".
func TestPayloadSchemasReadAlikeInDraft07(t *testing.T) {
	annotations := map[string]bool{"$ref": true, "description": true, "title": true, "$comment": true, "examples": true,
		"default": true, "deprecated": true, "readOnly": true, "writeOnly": true}
	changed := []string{"prefixItems", "additionalItems", "unevaluatedProperties", "unevaluatedItems", "dependentRequired",
		"dependentSchemas", "dependencies", "$anchor", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor",
		"minContains", "maxContains", "contentSchema", "$vocabulary", "definitions"}
	files, err := filepath.Glob(filepath.Join(schemaDir(t), "*.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join(schemaDir(t), "*", "*.schema.json"))
	files = append(files, more...)
	if len(files) < 30 {
		t.Fatalf("only %d schema files", len(files))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var walk func(v any, at string)
		walk = func(v any, at string) {
			switch x := v.(type) {
			case map[string]any:
				if _, ok := x["$ref"]; ok {
					for k := range x {
						if !annotations[k] {
							t.Errorf("%s at %s: %q beside $ref (draft-07 ignores it)", f, at, k)
						}
					}
				}
				if _, ok := x["items"].([]any); ok {
					t.Errorf("%s at %s: items is an array (a tuple in draft-07, invalid in 2020-12)", f, at)
				}
				for _, k := range changed {
					if _, ok := x[k]; ok && !strings.HasSuffix(at, "/properties") {
						t.Errorf("%s at %s: %q reads differently in draft-07", f, at, k)
					}
				}
				for k, e := range x {
					walk(e, at+"/"+k)
				}
			case []any:
				for i, e := range x {
					walk(e, fmt.Sprintf("%s/%d", at, i))
				}
			}
		}
		walk(doc, "#")
	}
}
