package messages

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/subbus/subbus/internal/drivers"
)

// schemaDir is the repository's schemas/ directory.
func schemaDir(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "schemas")
}

var schemaCache = map[string]*jsonschema.Schema{}

// schema compiles schemas/<rel> (draft 2020-12, formats asserted).
func schema(t testing.TB, rel string) *jsonschema.Schema {
	t.Helper()
	if s, ok := schemaCache[rel]; ok {
		return s
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	c.AssertContent()
	s, err := c.Compile(filepath.Join(schemaDir(t), rel))
	if err != nil {
		t.Fatalf("schema %s: %v", rel, err)
	}
	schemaCache[rel] = s
	return s
}

// validateSchema encodes v as JSON and validates it against schemas/<rel>.
func validateSchema(t testing.TB, rel string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := validateJSON(t, rel, b); err != nil {
		t.Errorf("%s does not accept %s:\n%v", rel, b, err)
	}
}

func validateJSON(t testing.TB, rel string, b []byte) error {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return schema(t, rel).Validate(doc)
}

// requestSchemaFile names the request schema of op, from its Go type.
func requestSchemaFile(t testing.TB, op Op) string {
	req, err := NewRequest(op)
	if err != nil {
		t.Fatal(err)
	}
	switch req.(type) {
	case *EmptyRequest:
		return "requests/empty.schema.json"
	case *NameRequest:
		return "requests/name.schema.json"
	case *CreateRequest:
		return "requests/create.schema.json"
	case *StopRequest:
		return "requests/stop.schema.json"
	case *DeleteRequest:
		return "requests/delete.schema.json"
	case *ExecRequest:
		return "requests/exec.schema.json"
	case *LogsRequest:
		return "requests/logs.schema.json"
	case *LimitsSetRequest:
		return "requests/limits-set.schema.json"
	case *SnapshotRequest:
		return "requests/snapshot.schema.json"
	case *CloneRequest:
		return "requests/clone.schema.json"
	case *NetworkAttachRequest:
		return "requests/network-attach.schema.json"
	case *NetworkDetachRequest:
		return "requests/network-detach.schema.json"
	case *CancelRequest:
		return "requests/op-cancel.schema.json"
	}
	t.Fatalf("no schema for %s (%T)", op, req)
	return ""
}

var (
	t0       = time.Date(2026, 11, 25, 10, 0, 0, 123456789, time.UTC)
	limits   = ResourceLimits{CPUCores: 1.5, MemoryMB: 512, DiskGB: 10, NetworkMbps: 100, PIDs: 64}
	netCfg   = NetworkConfig{NetworkName: "lan", IPAddress: "10.0.0.5", Gateway: "10.0.0.1", DNSServers: []string{"10.0.0.1"}}
	instance = Instance{Name: "web.1", ID: "abc", Driver: "process", Host: "h1", State: drivers.StateRunning,
		NativeState: "R", Image: "/bin/sleep", Created: t0, Metadata: map[string]string{"k": "v"}, Limits: limits,
		Networks: []NetworkConfig{netCfg}, Managed: true}
	usage = ResourceUsage{Time: t0, CPUPercent: 12.5, MemoryMB: 30, DiskGB: 1, DiskReadMBps: 1, DiskWriteMBps: 2,
		NetworkRxMbps: 3, NetworkTxMbps: 4, Counters: UsageCounters{CPUTimeNs: 1, MemoryBytes: 2, DiskUsedBytes: 3,
			DiskReadBytes: 4, DiskWriteBytes: 5, NetRxBytes: 6, NetTxBytes: 7}, Measured: Measure(drivers.MeasureCPU | drivers.MeasureMemory)}
)

// fullRequests has one request per op with every field set.
func fullRequests() map[Op]any {
	tmpl := Template{Name: "web.1", BaseImage: "/bin/sleep", Command: []string{"/bin/sleep", "60"}, WorkDir: "/tmp",
		User: "nobody", Resources: limits, Networks: []NetworkConfig{netCfg}, Environment: map[string]string{"A": "1"},
		Volumes: []Volume{{Source: "/src", Target: "/dst", ReadOnly: true}}, Metadata: map[string]string{"team": "x"}}
	exec := ExecRequest{Name: "web.1", Command: []string{"ls", "-l"}, Env: map[string]string{"A": "1"},
		WorkDir: "/", User: "root", Stdin: []byte("input"), Stream: true}
	return map[Op]any{
		OpList: EmptyRequest{}, OpHealth: EmptyRequest{}, OpCapabilities: EmptyRequest{}, OpNetworkList: EmptyRequest{},
		OpGet: NameRequest{Name: "web.1"}, OpStart: NameRequest{Name: "web.1"}, OpMetrics: NameRequest{Name: "a"},
		OpLimitsGet: NameRequest{Name: "a"}, OpSnapshotList: NameRequest{Name: "a"},
		OpCreate: CreateRequest{Template: tmpl}, OpStop: StopRequest{Name: "a", Force: true, Timeout: "1m30s"},
		OpRestart: StopRequest{Name: "a", Force: true, Timeout: "500ms"}, OpDelete: DeleteRequest{Name: "a", Force: true},
		OpExec: exec, OpLogs: LogsRequest{Name: "a", Lines: 10, Follow: true},
		OpLimitsSet:      LimitsSetRequest{Name: "a", Limits: limits, Unset: []string{LimitPIDs}},
		OpSnapshotCreate: SnapshotRequest{Name: "a", Snapshot: "s1"}, OpSnapshotRestore: SnapshotRequest{Name: "a", Snapshot: "s1"},
		OpSnapshotDelete: SnapshotRequest{Name: "a", Snapshot: "s1"}, OpClone: CloneRequest{Source: "a", Target: "b"},
		OpNetworkAttach: NetworkAttachRequest{Name: "a", Network: netCfg}, OpNetworkDetach: NetworkDetachRequest{Name: "a", Network: "lan"},
		OpCancel: CancelRequest{ID: "0123abcd"},
	}
}

// fullResults has one result per op, as the worker returns it.
func fullResults() map[Op]any {
	changed := ChangedResult{Changed: true, Instance: &instance}
	snap := Snapshot{Name: "s1", Instance: "a", Created: t0, Description: "d", SizeBytes: 10}
	return map[Op]any{
		OpList: []Instance{instance, {Name: "b", ID: "b", Driver: "process", Host: "h1", State: drivers.StateStopped}},
		OpGet:  instance, OpCreate: instance, OpClone: instance,
		OpStart: changed, OpStop: ChangedResult{Changed: false}, OpRestart: changed, OpDelete: ChangedResult{Changed: true},
		OpExec:    ExecResult{ExitCode: 2, Stdout: []byte("out"), Stderr: []byte("err")},
		OpLogs:    []LogLine{{Time: t0, Stream: "stdout", Line: "hello"}, {Stream: "stderr", Line: ""}},
		OpMetrics: usage,
		OpHealth: Health{Healthy: true, Version: "1", APIVersion: "1.4", Issues: []string{"w"},
			Instances: map[drivers.State]int{drivers.StateRunning: 2}, Usage: &usage, Details: map[string]string{"a": "b"}},
		OpCapabilities: CapabilitiesResult{Driver: "process", Host: "h1", Capabilities: Capabilities{Exec: true, Logs: true, LogTimes: true, LogOrder: true},
			Ops: []string{"list"}, NameRule: "a DNS label"},
		OpLimitsGet: limits, OpLimitsSet: ResourceLimits{MemoryMB: 1},
		OpSnapshotCreate: snap, OpSnapshotList: []Snapshot{snap}, OpSnapshotRestore: ChangedResult{Changed: true},
		OpSnapshotDelete: ChangedResult{Changed: true}, OpNetworkAttach: ChangedResult{Changed: true},
		OpNetworkDetach: ChangedResult{Changed: true},
		OpNetworkList:   []Network{{Name: "lan", ID: "1", Type: "bridge", Subnet: "10.0.0.0/24", Gateway: "10.0.0.1", Internal: true, Managed: true, Attachable: true}},
		OpCancel:        sampleOperation(OpStop, OpCancelled),
	}
}

// sampleOperation is an operation record with every field set.
func sampleOperation(op Op, state OpState) Operation {
	o := Operation{ID: "0123abcd", Driver: "process", Host: "h1", Op: op, Instance: "web.1", RequestID: "r1",
		State: state, Progress: "stopping web.1 (grace 5s)", Seq: 3, Started: t0, Updated: t0, Ended: t0,
		CancelRequested: true, Result: json.RawMessage(`{"changed":true}`), Error: InfoOf(drivers.Errorf(drivers.Timeout, "cancelled")), Lost: true}
	return o
}

// operation.schema.json's op enum is LongOps.
func TestOperationSchemaListsLongOps(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(schemaDir(t), "operation.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Properties struct {
			Op struct {
				Enum []string `json:"enum"`
			} `json:"op"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(doc.Properties.Op.Enum, " "), strings.Join(OpNames(LongOps()), " "); got != want {
		t.Errorf("operation.schema.json op enum %q, LongOps %q", got, want)
	}
}

// The no-wait reply, the KV record and the progress messages are the
// Operation of operation.schema.json, in every state and for every long op.
func TestOperationsMatchSchemas(t *testing.T) {
	for _, op := range LongOps() {
		for _, st := range []OpState{OpRunning, OpSucceeded, OpFailed, OpCancelled} {
			o := sampleOperation(op, st)
			validateSchema(t, "operation.schema.json", o)
			if err := validateJSON(t, "replies/no-wait.schema.json", ResultReply("r1", "h1", o)); err != nil {
				t.Errorf("no-wait reply of %s: %v", op, err)
			}
			min := Operation{ID: "x", Driver: "process", Host: "h1", Op: op, RequestID: "r", State: st, Seq: 1, Started: t0, Updated: t0}
			validateSchema(t, "operation.schema.json", min)
		}
	}
	for _, bad := range []string{
		`{"id":"x","driver":"process","host":"h1","op":"get","request_id":"r","state":"running","progress":"","seq":1,"started":"2026-01-01T00:00:00Z","updated":"2026-01-01T00:00:00Z"}`,
		`{"id":"x","driver":"process","host":"h1","op":"stop","request_id":"r","state":"lost","progress":"","seq":1,"started":"2026-01-01T00:00:00Z","updated":"2026-01-01T00:00:00Z"}`,
		`{"id":"a.b","driver":"process","host":"h1","op":"stop","request_id":"r","state":"running","progress":"","seq":1,"started":"2026-01-01T00:00:00Z","updated":"2026-01-01T00:00:00Z"}`,
	} {
		if validateJSON(t, "operation.schema.json", []byte(bad)) == nil {
			t.Errorf("operation schema accepts %s", bad)
		}
	}
}

func TestSchemasCoverEveryOp(t *testing.T) {
	reqs, results := fullRequests(), fullResults()
	for _, op := range Ops() {
		if _, ok := reqs[op]; !ok {
			t.Errorf("no sample request for %s", op)
		}
		if _, ok := results[op]; !ok {
			t.Errorf("no sample result for %s", op)
		}
		if _, err := os.Stat(filepath.Join(schemaDir(t), "replies", string(op)+".schema.json")); err != nil {
			t.Errorf("no reply schema for %s: %v", op, err)
		}
	}
}

func TestRequestsMatchSchemas(t *testing.T) {
	for op, req := range fullRequests() {
		rel := requestSchemaFile(t, op)
		validateSchema(t, rel, req)
		// Every field of the Go type must be exercised, so a field the
		// schema does not know fails here.
		b, _ := json.Marshal(req)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		if n := countJSONFields(reflect.TypeOf(req)); len(m) != n {
			t.Errorf("%s sample sets %d of %d fields", op, len(m), n)
		}
		// What the schema accepts, the decoder accepts.
		if _, err := Decode(op, b); err != nil {
			t.Errorf("Decode(%s, %s): %v", op, b, err)
		}
	}
}

// countJSONFields counts the top-level JSON fields of a struct type
// (embedded structs contribute their fields).
func countJSONFields(t reflect.Type) int {
	n := 0
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous && f.Tag.Get("json") == "" {
			n += countJSONFields(f.Type)
			continue
		}
		if f.Tag.Get("json") != "-" {
			n++
		}
	}
	return n
}

// The schemas reject what the worker rejects: the shape errors Decode
// finds, and the bad names and values (meaning: checked by the manager, see
// worker.TestBadInputIsInvalidArgumentAndChangesNothing and
// manager.TestValidationRejectsBeforeDriver) that Decode lets through.
func TestSchemasRejectWhatTheWorkerRejects(t *testing.T) {
	bad := []struct {
		op      Op
		body    string
		meaning bool // refused by the manager, not by Decode
	}{
		{OpGet, `{"name":"../x"}`, true},
		{OpGet, `{"name":"a","extra":1}`, false},
		{OpGet, `{}`, true},
		{OpGet, `{"name":5}`, false},
		{OpCreate, `{"template":{"name":"a"}}`, true},
		{OpStop, `{"name":"a","timeout":"soon"}`, false},
		{OpExec, `{"name":"a","command":[]}`, true},
		{OpLogs, `{"name":"a","lines":-3}`, true},
		{OpClone, `{"source":"a","target":".."}`, true},
		{OpList, `{"all":true}`, false},
	}
	for _, tt := range bad {
		_, err := Decode(tt.op, []byte(tt.body))
		if !tt.meaning && err == nil {
			t.Errorf("Decode accepts %s %s", tt.op, tt.body)
		}
		if tt.meaning && err != nil {
			t.Errorf("Decode checks meaning: %s %s: %v", tt.op, tt.body, err)
		}
		if err := validateJSON(t, requestSchemaFile(t, tt.op), []byte(tt.body)); err == nil {
			t.Errorf("schema accepts %s %s", tt.op, tt.body)
		}
	}
}

func TestRepliesMatchSchemas(t *testing.T) {
	for op, res := range fullResults() {
		b := ResultReply("r1", "h1", res)
		rel := "replies/" + string(op) + ".schema.json"
		if err := validateJSON(t, rel, b); err != nil {
			t.Errorf("%s rejects %s:\n%v", rel, b, err)
		}
	}
	for _, c := range drivers.Codes() {
		b := ErrorReply("r1", "h1", drivers.Errorf(c, "it failed"))
		if err := validateJSON(t, "reply.schema.json", b); err != nil {
			t.Errorf("error reply %s: %v", b, err)
		}
	}
	// A reply with both result and error is not a reply.
	if err := validateJSON(t, "reply.schema.json", []byte(`{"result":1,"error":{"code":"internal","message":"x","retryable":false}}`)); err == nil {
		t.Error("schema accepts a reply with result and error")
	}
	// A result of the wrong shape is caught.
	if err := validateJSON(t, "replies/get.schema.json", ResultReply("r", "h", []int{1})); err == nil {
		t.Error("get reply schema accepts a list")
	}
}

func TestChunkEventMetricsMatchSchemas(t *testing.T) {
	code := 3
	chunks := []Chunk{
		{RequestID: "r", Seq: 1, Stream: "stdout", Data: []byte("out")},
		{RequestID: "r", Seq: 2, Stream: "stdout", Line: &LogLine{Time: t0, Stream: "stdout", Line: "l"}},
		{Seq: 3, Heartbeat: true},
		{Seq: 4, Final: true, ExitCode: &code},
		{Seq: 1, Final: true, Error: InfoOf(drivers.Errorf(drivers.NotFound, "x"))},
	}
	for _, c := range chunks {
		validateSchema(t, "chunk.schema.json", c)
	}
	for _, typ := range []drivers.EventType{drivers.EventCreated, drivers.EventFailed, drivers.EventBreakerOpened, drivers.EventStateChanged} {
		e := Event{ID: NewRequestID(), Type: typ, Time: t0, Driver: "process", Host: "h1", Instance: "web.1", RequestID: "r1",
			Source: SourceManager, State: drivers.StateRunning, Details: map[string]string{"a": "b"},
			Error: InfoOf(drivers.Errorf(drivers.Conflict, "busy"))}
		if typ == drivers.EventBreakerOpened {
			e.Instance, e.State, e.Error, e.Source = "", "", nil, SourceNative
		}
		validateSchema(t, "event.schema.json", NewCloudEvent(e))
	}
	// CloudEvents 1.0: an optional attribute, if present, is non-empty, so
	// a substrate event has no subject rather than an empty one.
	b, _ := json.Marshal(NewCloudEvent(Event{ID: "1", Type: drivers.EventConnected, Time: t0, Driver: "d", Host: "h"}))
	if strings.Contains(string(b), `"subject"`) {
		t.Errorf("substrate event carries a subject: %s", b)
	}
	if err := validateJSON(t, "event.schema.json", []byte(strings.Replace(string(b), `"time"`, `"subject":"","time"`, 1))); err == nil {
		t.Error("event schema accepts an empty subject")
	}
	validateSchema(t, "metrics.schema.json", MetricsMessage{Driver: "process", Host: "h1", Instance: "web.1", Time: t0, Usage: usage})
	// Every event type the contract defines is in the schema.
	for _, typ := range allEventTypes() {
		e := Event{ID: "1", Type: typ, Time: t0, Driver: "d", Host: "h", Source: SourceManager}
		validateSchema(t, "event.schema.json", NewCloudEvent(e))
	}
}

// allEventTypes reads the EventType constants from the contract's source,
// so a new event type without a schema entry fails the test above.
func allEventTypes() []drivers.EventType {
	_, file, _, _ := runtime.Caller(0)
	src, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "internal", "drivers", "events.go"))
	if err != nil {
		panic(err)
	}
	var out []drivers.EventType
	for _, line := range strings.Split(string(src), "\n") {
		var name, val string
		if n, _ := fmt.Sscanf(strings.TrimSpace(line), "%s EventType = %q", &name, &val); n == 2 {
			out = append(out, drivers.EventType(val))
		}
	}
	if len(out) < 10 {
		panic(fmt.Sprintf("found only %d event types", len(out)))
	}
	return out
}

// keywords2020 are the keywords of JSON Schema 2020-12 (core, applicator,
// unevaluated, validation, format, content, meta-data vocabularies).
var keywords2020 = map[string]bool{
	"$schema": true, "$id": true, "$ref": true, "$anchor": true, "$dynamicRef": true, "$dynamicAnchor": true,
	"$vocabulary": true, "$comment": true, "$defs": true,
	"allOf": true, "anyOf": true, "oneOf": true, "not": true, "if": true, "then": true, "else": true,
	"dependentSchemas": true, "prefixItems": true, "items": true, "contains": true, "properties": true,
	"patternProperties": true, "additionalProperties": true, "propertyNames": true,
	"unevaluatedItems": true, "unevaluatedProperties": true,
	"type": true, "enum": true, "const": true, "multipleOf": true, "maximum": true, "exclusiveMaximum": true,
	"minimum": true, "exclusiveMinimum": true, "maxLength": true, "minLength": true, "pattern": true,
	"maxItems": true, "minItems": true, "uniqueItems": true, "maxContains": true, "minContains": true,
	"maxProperties": true, "minProperties": true, "required": true, "dependentRequired": true,
	"format": true, "contentEncoding": true, "contentMediaType": true, "contentSchema": true,
	"title": true, "description": true, "default": true, "deprecated": true, "readOnly": true,
	"writeOnly": true, "examples": true,
}

// schemaValued lists the keywords whose value is a schema, an array of
// schemas or a map of schemas.
var schemaValued = map[string]string{
	"allOf": "list", "anyOf": "list", "oneOf": "list", "prefixItems": "list",
	"not": "one", "if": "one", "then": "one", "else": "one", "items": "one", "contains": "one",
	"additionalProperties": "one", "propertyNames": "one", "unevaluatedItems": "one",
	"unevaluatedProperties": "one", "contentSchema": "one",
	"$defs": "map", "properties": "map", "patternProperties": "map", "dependentSchemas": "map",
}

// objectKeywords apply to objects only.
var objectKeywords = []string{"properties", "required", "additionalProperties", "patternProperties",
	"propertyNames", "minProperties", "maxProperties", "dependentRequired", "dependentSchemas"}

// TestSchemasAreStrict holds every schema to the rules of a strict
// validator (ajv's strict mode, which tools built on it apply): only
// 2020-12 keywords; an object keyword only where "type": "object" is
// declared in the same schema object or an enclosing one; every "required"
// name declared in "properties" of the same schema object. Reply schemas
// without "type" and reply.schema.json's oneOf branches broke these rules.
func TestSchemasAreStrict(t *testing.T) {
	dir := schemaDir(t)
	var files []string
	for _, pat := range []string{"*.schema.json", "replies/*.schema.json", "requests/*.schema.json"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat))
		files = append(files, m...)
	}
	if len(files) < 30 {
		t.Fatalf("found only %d schema files", len(files))
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
		rel, _ := filepath.Rel(dir, f)
		for _, p := range strictProblems(doc, "#", false) {
			t.Errorf("%s: %s", rel, p)
		}
		schema(t, rel) // and it compiles
	}
	// The rules catch what they are for.
	for _, bad := range []string{
		`{"properties":{"a":{}}}`,
		`{"type":"object","oneOf":[{"required":["a"]}],"properties":{"a":{}}}`,
		`{"type":"object","propertise":{}}`,
	} {
		var doc any
		_ = json.Unmarshal([]byte(bad), &doc)
		if len(strictProblems(doc, "#", false)) == 0 {
			t.Errorf("strict rules accept %s", bad)
		}
	}
}

// strictProblems lists the strict-mode problems of schema s at path;
// object says an enclosing schema object declares "type": "object".
func strictProblems(s any, path string, object bool) []string {
	m, ok := s.(map[string]any)
	if !ok {
		return nil // boolean schema
	}
	var out []string
	switch typ := m["type"].(type) {
	case string:
		object = object || typ == "object"
	case []any:
		for _, x := range typ {
			object = object || x == "object"
		}
	}
	props, _ := m["properties"].(map[string]any)
	for k, v := range m {
		if !keywords2020[k] {
			out = append(out, fmt.Sprintf("%s: unknown keyword %q", path, k))
		}
		for _, ok := range objectKeywords {
			if k == ok && !object {
				out = append(out, fmt.Sprintf("%s: %q without \"type\": \"object\"", path, k))
			}
		}
		if k == "required" {
			req, _ := v.([]any)
			for _, r := range req {
				if _, ok := props[fmt.Sprint(r)]; !ok {
					out = append(out, fmt.Sprintf("%s: required %q not in this schema's properties", path, r))
				}
			}
		}
		// In-place applicators see the same value, so the enclosing type
		// holds there; the others apply to items, members or names.
		inPlace := object && (k == "allOf" || k == "anyOf" || k == "oneOf" || k == "not" || k == "if" || k == "then" || k == "else")
		switch schemaValued[k] {
		case "one":
			out = append(out, strictProblems(v, path+"/"+k, inPlace)...)
		case "list":
			l, _ := v.([]any)
			for i, e := range l {
				out = append(out, strictProblems(e, fmt.Sprintf("%s/%s/%d", path, k, i), inPlace)...)
			}
		case "map":
			mm, _ := v.(map[string]any)
			for name, e := range mm {
				// dependentSchemas apply in place; $defs and properties
				// hold schemas of other values.
				out = append(out, strictProblems(e, path+"/"+k+"/"+name, object && k == "dependentSchemas")...)
			}
		}
	}
	return out
}
