package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/subbus/subbus/internal/messages"
)

var (
	schemaMu    sync.Mutex
	schemaCache = map[string]*jsonschema.Schema{}
)

// compiledSchema compiles schemas/<rel> of the repository.
func compiledSchema(t testing.TB, rel string) *jsonschema.Schema {
	t.Helper()
	schemaMu.Lock()
	defer schemaMu.Unlock()
	if s, ok := schemaCache[rel]; ok {
		return s
	}
	_, file, _, _ := runtime.Caller(0)
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	s, err := c.Compile(filepath.Join(filepath.Dir(file), "..", "..", "schemas", rel))
	if err != nil {
		t.Fatalf("schema %s: %v", rel, err)
	}
	schemaCache[rel] = s
	return s
}

// validateJSONSchema validates v (raw JSON bytes or a value to encode)
// against schemas/<rel>.
func validateJSONSchema(t testing.TB, rel string, v any) {
	t.Helper()
	b, ok := v.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if err := compiledSchema(t, rel).Validate(doc); err != nil {
		t.Errorf("%s rejects %s:\n%v", rel, b, err)
	}
}

// okSchema is ok plus validation of the raw reply against the op's reply schema.
func okSchema(t testing.TB, nc *nats.Conn, subject string, body any, out any) messages.Reply {
	t.Helper()
	return okSchemaH(t, nc, subject, body, nil, out)
}

func okSchemaH(t testing.TB, nc *nats.Conn, subject string, body any, hdr map[string]string, out any) messages.Reply {
	t.Helper()
	r, msg := request(t, nc, subject, body, hdr)
	if r.Error != nil {
		t.Fatalf("%s: error %+v", subject, r.Error)
	}
	op := subject[strings.LastIndexByte(subject, '.')+1:]
	validateJSONSchema(t, "replies/"+op+".schema.json", msg.Data)
	if want := hdr[messages.HeaderRequestID]; want != "" && r.RequestID != want {
		t.Fatalf("%s: reply request id %q, want %q", subject, r.RequestID, want)
	}
	if out != nil {
		if err := json.Unmarshal(r.Result, out); err != nil {
			t.Fatalf("%s: result %s: %v", subject, r.Result, err)
		}
	}
	return r
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// lastMetrics checks that the stream holds a valid metrics sample on subject.
func lastMetrics(t testing.TB, nc *nats.Conn, subject string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx := context.Background()
	st, err := js.Stream(ctx, messages.MetricsStream)
	if err != nil {
		return err
	}
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		return err
	}
	validateJSONSchema(t, "metrics.schema.json", m.Data)
	return nil
}
