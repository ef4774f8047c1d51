package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	cloudevent "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/subbus/subbus/messages"
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

// checkCloudEvent checks a stored event as an outside CloudEvents consumer
// reads it: the CloudEvents Go SDK's validation, and no optional attribute
// present but empty. CloudEvents 1.0 says an optional attribute, if present,
// MUST be a non-empty string; the Go SDK drops empty strings when decoding,
// so its validation alone does not see them (stricter SDKs reject them).
func checkCloudEvent(raw []byte) error {
	var ev cloudevent.Event
	if err := json.Unmarshal(raw, &ev); err != nil {
		return fmt.Errorf("CloudEvents SDK cannot read %s: %w", raw, err)
	}
	if err := ev.Validate(); err != nil {
		return fmt.Errorf("CloudEvents SDK rejects %s: %w", raw, err)
	}
	var attrs map[string]json.RawMessage
	if err := json.Unmarshal(raw, &attrs); err != nil {
		return err
	}
	for name, v := range attrs {
		if name == "data" || name == "data_base64" {
			continue
		}
		var s string
		if json.Unmarshal(v, &s) == nil && s == "" {
			return fmt.Errorf("event %s: attribute %q is present but empty", ev.ID(), name)
		}
	}
	return nil
}
