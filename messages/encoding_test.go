package messages

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/subbus/subbus/internal/drivers"
)

// TestInvalidUTF8Rejected: invalid UTF-8 (raw, or as a lone surrogate
// escape) in a name, an environment key or value, a command or a label is
// invalid_argument, never rewritten to U+FFFD; a real U+FFFD is kept.
func TestInvalidUTF8Rejected(t *testing.T) {
	for _, tc := range []struct {
		name, op, body string
		ok             bool
	}{
		{"name raw", "get", "{\"name\":\"a\xff\"}", false},
		{"name lone high surrogate", "get", `{"name":"a\ud800"}`, false},
		{"name lone low surrogate", "get", `{"name":"a\udc00b"}`, false},
		{"env value raw", "create", "{\"template\":{\"name\":\"a\",\"base_image\":\"x\",\"environment\":{\"K\":\"v\xc3\"}}}", false},
		{"env key raw", "create", "{\"template\":{\"name\":\"a\",\"base_image\":\"x\",\"environment\":{\"K\xe2\x82\":\"v\"}}}", false},
		{"env value surrogate", "create", `{"template":{"name":"a","base_image":"x","environment":{"K":"\udfff"}}}`, false},
		{"command raw", "create", "{\"template\":{\"name\":\"a\",\"base_image\":\"x\",\"command\":[\"echo\",\"\xed\xa0\x80\"]}}", false},
		{"command surrogate", "create", `{"template":{"name":"a","base_image":"x","command":["echo","\uD83D"]}}`, false},
		{"label raw", "create", "{\"template\":{\"name\":\"a\",\"base_image\":\"x\",\"metadata\":{\"k\":\"\x80\"}}}", false},
		{"exec env raw", "exec", "{\"name\":\"a\",\"command\":[\"ls\"],\"env\":{\"K\":\"\xfe\"}}", false},
		{"valid pair", "create", `{"template":{"name":"a","base_image":"x","command":["echo","\ud83d\ude00"]}}`, true},
		{"real U+FFFD", "create", "{\"template\":{\"name\":\"a\",\"base_image\":\"x\",\"command\":[\"echo\",\"\xef\xbf\xbd\",\"\\ufffd\"]}}", true},
		{"escaped backslash then u", "create", `{"template":{"name":"a","base_image":"x","command":["echo","\\ud800"]}}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(Op(tc.op), []byte(tc.body))
			switch {
			case tc.ok && err != nil:
				t.Fatalf("rejected: %v", err)
			case !tc.ok && !errors.Is(err, drivers.ErrInvalidArgument):
				t.Fatalf("got %v, want invalid_argument", err)
			}
		})
	}
}

// FuzzDecodeNeverRewrites: whatever Decode accepts carries no U+FFFD the
// body did not carry itself (encoding/json's silent replacement of invalid
// UTF-8 and lone surrogates never gets through).
func FuzzDecodeNeverRewrites(f *testing.F) {
	for _, s := range []struct{ op, body string }{
		{"get", `{"name":"a"}`}, {"get", "{\"name\":\"a\xff\"}"}, {"get", `{"name":"\ud800"}`},
		{"create", `{"template":{"name":"a","base_image":"x","command":["e","\ud83d\ude00"],"environment":{"K":"v"},"metadata":{"k":"v"}}}`},
		{"exec", `{"name":"a","command":["ls","\udc00"]}`},
	} {
		f.Add(s.op, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, op string, body []byte) {
		req, err := Decode(Op(op), body)
		if err != nil {
			return
		}
		out, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		had := bytes.Contains(body, []byte("\uFFFD")) || bytes.Contains(bytes.ToLower(body), []byte(`\ufffd`))
		if !had && (bytes.Contains(out, []byte("\uFFFD")) || bytes.Contains(out, []byte(`\ufffd`))) {
			t.Fatalf("accepted %q and rewrote it: %s", body, out)
		}
	})
}

// TestCheckUTF8: the client-side check names the first string that is
// not valid UTF-8, wherever it is in the request.
func TestCheckUTF8(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  any
		want string // "" for valid
	}{
		{"valid", &CreateRequest{Template: Template{Name: "a", Command: []string{"é", "\uFFFD"}}}, ""},
		{"name", &NameRequest{Name: "a\xff"}, "request.name"},
		{"env value", &CreateRequest{Template: Template{Name: "a", Environment: map[string]string{"K": "\xc3"}}}, `request.template.environment["K"]`},
		{"env key", &CreateRequest{Template: Template{Name: "a", Environment: map[string]string{"K\xff": "v"}}}, "request.template.environment"},
		{"command", &CreateRequest{Template: Template{Name: "a", Command: []string{"ok", "\x80"}}}, "request.template.command[1]"},
		{"label", &CreateRequest{Template: Template{Name: "a", Metadata: map[string]string{"k": "\xfe"}}}, `request.template.metadata["k"]`},
		{"stdin bytes are not text", &ExecRequest{Name: "a", Command: []string{"cat"}, Stdin: []byte{0xff}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckUTF8(tc.req)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.want != "" && (!errors.Is(err, drivers.ErrInvalidArgument) || !bytes.Contains([]byte(err.Error()), []byte(tc.want))):
				t.Fatalf("got %v, want invalid_argument naming %s", err, tc.want)
			}
		})
	}
}
