package messages

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
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
