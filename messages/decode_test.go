package messages

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

func TestDecodeAccepts(t *testing.T) {
	tests := []struct {
		op   Op
		body string
		want any
	}{
		{OpList, ``, &EmptyRequest{}},
		{OpList, `{}`, &EmptyRequest{}},
		{OpHealth, `null`, &EmptyRequest{}},
		{OpGet, `{"name":"web-1"}`, &NameRequest{Name: "web-1"}},
		{OpStop, ` {"name":"a.b","force":true,"timeout":"3s"} `, &StopRequest{Name: "a.b", Force: true, Timeout: "3s"}},
		{OpDelete, `{"name":"x","force":true}`, &DeleteRequest{Name: "x", Force: true}},
		{OpLogs, `{"name":"x","lines":5,"follow":true}`, &LogsRequest{Name: "x", Lines: 5, Follow: true}},
		{OpClone, `{"source":"a","target":"b"}`, &CloneRequest{Source: "a", Target: "b"}},
		{OpSnapshotCreate, `{"name":"a","snapshot":"s1"}`, &SnapshotRequest{Name: "a", Snapshot: "s1"}},
		{OpNetworkDetach, `{"name":"a","network":"n"}`, &NetworkDetachRequest{Name: "a", Network: "n"}},
	}
	for _, tt := range tests {
		got, err := Decode(tt.op, []byte(tt.body))
		if err != nil {
			t.Errorf("Decode(%s, %s): %v", tt.op, tt.body, err)
			continue
		}
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(tt.want)
		if string(gj) != string(wj) {
			t.Errorf("Decode(%s, %s) = %s, want %s", tt.op, tt.body, gj, wj)
		}
	}
}

func TestDecodeExecAndCreate(t *testing.T) {
	r, err := Decode(OpExec, []byte(`{"name":"a","command":["echo","hi"],"stdin":"aGk=","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	e := r.(*ExecRequest)
	if e.Name != "a" || len(e.Command) != 2 || string(e.Stdin) != "hi" || !e.Stream {
		t.Fatalf("exec decoded as %+v", e)
	}
	r, err = Decode(OpCreate, []byte(`{"template":{"name":"p1","base_image":"/bin/sleep","command":["/bin/sleep","60"],"resources":{"memory_mb":64}}}`))
	if err != nil {
		t.Fatal(err)
	}
	c := r.(*CreateRequest)
	if c.Template.Name != "p1" || c.Template.Resources.MemoryMB != 64 {
		t.Fatalf("create decoded as %+v", c)
	}
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name, op, body, field string
	}{
		{"malformed", "get", `{"name":`, "body"},
		{"not json", "get", `hello`, "body"},
		{"array", "get", `["a"]`, "body"},
		{"empty body", "get", ``, "body"},
		{"unknown field", "get", `{"name":"a","nme":"b"}`, "nme"},
		{"wrong type", "get", `{"name":5}`, "name"},
		{"wrong nested type", "create", `{"template":{"name":"a","base_image":"x","resources":{"memory_mb":"big"}}}`, "template.resources.memory_mb"},
		{"trailing data", "get", `{"name":"a"} {"name":"b"}`, "body"},
		{"trailing garbage", "get", `{"name":"a"}x`, "body"},
		{"bad timeout", "stop", `{"name":"a","timeout":"soon"}`, "timeout"},
		{"negative timeout", "stop", `{"name":"a","timeout":"-1s"}`, "timeout"},
		{"bad base64", "exec", `{"name":"a","command":["x"],"stdin":"!!"}`, "body"},
		{"unknown op", "explode", `{}`, "op"},
		{"list with body", "list", `{"all":true}`, "all"},
		{"huge", "get", `{"name":"` + strings.Repeat("a", MaxRequestBytes) + `"}`, "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(Op(tt.op), []byte(tt.body))
			if !errors.Is(err, drivers.ErrInvalidArgument) {
				t.Fatalf("err = %v, want invalid_argument", err)
			}
			if !strings.HasPrefix(err.Error(), tt.field+":") {
				t.Fatalf("err = %q, want it to name %q first", err, tt.field)
			}
		})
	}
}

// Decode checks shape only: well-formed bodies with bad names or values
// decode, and the manager refuses them (manager.TestValidationRejectsBeforeDriver and
// worker.TestBadInputIsInvalidArgumentAndChangesNothing prove it).
func TestDecodeLeavesMeaningToTheManager(t *testing.T) {
	for _, tt := range []struct{ op, body string }{
		{"get", `{}`}, {"start", `{"name":"../etc"}`}, {"delete", `{"name":".."}`}, {"get", `{"name":"a b"}`},
		{"get", `{"name":"a\nb"}`}, {"get", `{"name":"` + strings.Repeat("a", 64) + `"}`},
		{"create", `{"template":{"name":"-x","base_image":"/bin/true"}}`}, {"create", `{"template":{"name":"x"}}`},
		{"exec", `{"name":"a","command":[]}`}, {"logs", `{"name":"a","lines":-1}`},
		{"limits-set", `{"name":"a","limits":{"memory_mb":-1}}`}, {"clone", `{"source":"a","target":"/b"}`},
		{"snapshot-delete", `{"name":"a","snapshot":""}`},
	} {
		if _, err := Decode(Op(tt.op), []byte(tt.body)); err != nil {
			t.Errorf("Decode(%s, %s): %v", tt.op, tt.body, err)
		}
	}
}

func TestReplies(t *testing.T) {
	var r Reply
	if err := json.Unmarshal(ResultReply("r1", "h1", map[string]int{"a": 1}), &r); err != nil {
		t.Fatal(err)
	}
	if r.RequestID != "r1" || r.Host != "h1" || string(r.Result) != `{"a":1}` || r.Error != nil {
		t.Fatalf("result reply = %+v", r)
	}
	r = Reply{}
	if err := json.Unmarshal(ErrorReply("r2", "h1", drivers.Errorf(drivers.NotFound, "x: not found")), &r); err != nil {
		t.Fatal(err)
	}
	if r.Error == nil || r.Error.Code != drivers.NotFound || r.Error.Retryable || r.Result != nil {
		t.Fatalf("error reply = %+v", r)
	}
	msg, code := ErrorHeaders(drivers.Errorf(drivers.Unavailable, "line1\nline2"))
	if msg != "line1 line2" || code != "503" {
		t.Fatalf("headers = %q %q", msg, code)
	}
}

func TestDeadline(t *testing.T) {
	now := time.Now().Add(time.Second)
	d, ok, err := ParseDeadline(FormatDeadline(now))
	if err != nil || !ok || !d.Equal(now) {
		t.Fatalf("round trip: %v %v %v (want %v)", d, ok, err, now)
	}
	if _, ok, err := ParseDeadline(""); ok || err != nil {
		t.Fatalf("empty: %v %v", ok, err)
	}
	if _, _, err := ParseDeadline("tomorrow"); !errors.Is(err, drivers.ErrInvalidArgument) {
		t.Fatalf("bad: %v", err)
	}
}

func TestRequestID(t *testing.T) {
	a, b := NewRequestID(), NewRequestID()
	if a == b || len(a) != 32 || !ValidRequestID(a) {
		t.Fatalf("ids %q %q", a, b)
	}
	if ValidRequestID("a b") || ValidRequestID("") {
		t.Fatal("bad ids accepted")
	}
}

// FuzzDecode: Decode never panics, and whatever it accepts re-encodes and
// decodes again (names are the manager's to check; the worker's fuzz test
// sends hostile bodies through the bus).
func FuzzDecode(f *testing.F) {
	seeds := []struct{ op, body string }{
		{"get", `{"name":"a"}`}, {"create", `{"template":{"name":"a","base_image":"/bin/true","command":["x"]}}`},
		{"exec", `{"name":"a","command":["ls"],"stream":true}`}, {"stop", `{"name":"a","timeout":"1s"}`},
		{"list", ``}, {"logs", `{"name":"a","lines":3}`}, {"nope", `{}`}, {"clone", `{"source":"a","target":"b"}`},
		{"network-attach", `{"name":"a","network":{"network_name":"n"}}`}, {"limits-set", `{"name":"a","limits":{"cpu_cores":1}}`},
	}
	for _, s := range seeds {
		f.Add(s.op, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, op string, body []byte) {
		req, err := Decode(Op(op), body)
		if err != nil {
			if !errors.Is(err, drivers.ErrInvalidArgument) {
				t.Fatalf("error %v is not invalid_argument", err)
			}
			return
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if _, err := Decode(Op(op), b); err != nil {
			t.Fatalf("re-decode of %s: %v", b, err)
		}
	})
}

// FuzzDecodeToken: DecodeToken never panics and EncodeToken round-trips.
func FuzzDecodeToken(f *testing.F) {
	for _, s := range []string{"a", "a.b", "~YS5i", "_", "", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = DecodeToken(s)
		tok := EncodeToken(s)
		if strings.ContainsAny(tok, ". *>") {
			t.Fatalf("EncodeToken(%q) = %q is not a token", s, tok)
		}
		back, err := DecodeToken(tok)
		if err != nil || back != s {
			t.Fatalf("round trip %q -> %q -> %q, %v", s, tok, back, err)
		}
	})
}

// FuzzParseDeadline never panics.
func FuzzParseDeadline(f *testing.F) {
	f.Add("2026-01-01T00:00:00Z")
	f.Add("x")
	f.Fuzz(func(t *testing.T, s string) { _, _, _ = ParseDeadline(s) })
}

// TestResultReplyBytes: ResultReply writes exactly what json.Marshal of
// the Reply writes, whatever the request id and host hold.
func TestResultReplyBytes(t *testing.T) {
	results := []any{nil, "x", []Instance{}, Instance{Name: "a<b>", Created: time.Unix(1, 2).UTC(), Metadata: map[string]string{"k": "v&"}},
		ChangedResult{Changed: true}}
	for _, id := range []string{"", "abc123", "a\"b", "x<y>&z", "é\u2028", "tab\there", `back\slash`} {
		for _, host := range []string{"", "h1", "h\"2", "\x01"} {
			for _, r := range results {
				raw, _ := json.Marshal(r)
				want, _ := json.Marshal(Reply{RequestID: id, Host: host, Result: raw})
				if got := ResultReply(id, host, r); !bytes.Equal(got, want) {
					t.Errorf("ResultReply(%q, %q, %v) = %s, want %s", id, host, r, got, want)
				}
			}
		}
	}
}

// TestPlainNameBody: the fast path for {"name":"…"} decodes exactly what
// the JSON decoder does, and leaves every other body to it.
func TestPlainNameBody(t *testing.T) {
	for _, body := range []string{
		`{"name":"web"}`, `{"name":""}`, `{"name":"a b/c.d-e_f~!@#$%^&*()"}`, `{"name":"x\"y"}`, `{"name":"x\\y"}`,
		`{"name":"\u00e9"}`, `{"name":"é"}`, `{"name":"web","x":1}`, `{ "name":"web"}`, `{"name":"web"} `, `{"name":"web"}x`,
		`{"name":"web"}{"name":"b"}`, `{"Name":"web"}`, `{"name":"a"}"}`, `{"name":1}`, `{"name":"web"`,
	} {
		got, gotErr := Decode(OpGet, []byte(body))
		want := &NameRequest{}
		dec := json.NewDecoder(strings.NewReader(strings.TrimSpace(body)))
		dec.DisallowUnknownFields()
		wantErr := dec.Decode(want)
		if wantErr == nil {
			if _, err := dec.Token(); err != io.EOF {
				wantErr = errors.New("trailing data")
			}
		}
		switch {
		case (gotErr == nil) != (wantErr == nil):
			t.Errorf("%s: Decode error %v, the decoder's %v", body, gotErr, wantErr)
		case gotErr == nil && got.(*NameRequest).Name != want.Name:
			t.Errorf("%s: name %q, the decoder's %q", body, got.(*NameRequest).Name, want.Name)
		}
		_, fast := PlainName([]byte(strings.TrimSpace(body)))
		if fast && wantErr != nil {
			t.Errorf("%s: fast path taken for a body the decoder refuses", body)
		}
	}
}
