package messages

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// TestMarshalResultMatchesJSON: the reflection-free encoding of get and
// list results is byte for byte json.Marshal's, on generated instances
// with every field set or not and strings json.Marshal escapes.
func TestMarshalResultMatchesJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"", "web", "a b", "é", "\u2028", "<tag>", "a&b", `q"uote`, `back\slash`, "\x00\x1f", "\xff\xfe", "tab\t", "日本", "~!@#$%^*()"}
	str := func() string {
		s := ""
		for range r.IntN(3) {
			s += pieces[r.IntN(len(pieces))]
		}
		return s
	}
	times := []time.Time{{}, time.Unix(1700000000, 123456789).UTC(), time.Date(2026, 11, 30, 8, 0, 0, 0, time.FixedZone("x", 3600)),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)} // the last cannot be encoded: json.Marshal fails
	inst := func() Instance {
		i := Instance{Name: str(), ID: str(), Driver: str(), Host: str(), State: "running", NativeState: str(), Image: str(),
			Created: times[r.IntN(len(times))], Managed: r.IntN(2) == 0}
		if r.IntN(2) == 0 {
			i.State = State(str())
		}
		switch r.IntN(3) {
		case 0:
			i.Metadata = map[string]string{}
		case 1:
			i.Metadata = map[string]string{str(): str(), str(): str(), "k": str()}
		}
		if r.IntN(4) == 0 {
			i.Limits = ResourceLimits{CPUCores: 1.5, PIDs: int64(r.IntN(3))}
		}
		if r.IntN(4) == 0 {
			i.Networks = []NetworkConfig{{NetworkName: str(), DNSServers: []string{str()}}}
		}
		if r.IntN(3) == 0 {
			i.Command = []string{str(), str()}
			i.Environment = map[string]string{str(): str()}
			i.WorkDir, i.User = str(), str()
			i.PID = r.IntN(2) * 4242
			i.StartedAt = times[r.IntN(len(times))]
			if r.IntN(2) == 0 {
				code := r.IntN(3)
				i.ExitCode = &code
			}
			if r.IntN(2) == 0 {
				i.Volumes = []Volume{{}}
			}
		}
		return i
	}
	check := func(v any) {
		t.Helper()
		want, wantErr := json.Marshal(v)
		got, err := marshalResult(v)
		if (err != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("marshalResult(%#v)\n got %s (%v)\nwant %s (%v)", v, got, err, want, wantErr)
		}
	}
	for range 3000 {
		check(inst())
		list := make([]Instance, r.IntN(4))
		for j := range list {
			list[j] = inst()
		}
		check(list)
	}
	check([]Instance(nil))
	check(ChangedResult{Changed: true})
}

// TestInstanceTailMatches: instanceTail is Instance from Command on, field
// for field and tag for tag, so that appendInstance writes every field.
func TestInstanceTailMatches(t *testing.T) {
	it, tt := reflect.TypeOf(Instance{}), reflect.TypeOf(instanceTail{})
	first, ok := it.FieldByName("Command")
	if !ok {
		t.Fatal("Instance has no Command")
	}
	if n := it.NumField() - first.Index[0]; n != tt.NumField() {
		t.Fatalf("Instance has %d fields from Command on, instanceTail %d: encode.go must write the new ones", n, tt.NumField())
	}
	for k := range tt.NumField() {
		a, b := it.Field(first.Index[0]+k), tt.Field(k)
		if a.Name != b.Name || a.Type != b.Type || a.Tag != b.Tag {
			t.Fatalf("field %d: Instance has %s %s %q, instanceTail %s %s %q", k, a.Name, a.Type, a.Tag, b.Name, b.Type, b.Tag)
		}
	}
}
