package messages

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// contractPairs maps each type of the driver contract to its wire form.
// renamed maps a contract field to the wire field of another name;
// wireOnly lists the wire fields with no contract counterpart (what the
// manager or the worker fills, and request-only fields).
var contractPairs = []struct {
	contract, wire any
	renamed        map[string]string
	wireOnly       []string
}{
	{contract: drivers.Instance{}, wire: Instance{}, wireOnly: []string{"Driver", "Host"}},
	{contract: drivers.InstanceTemplate{}, wire: Template{}},
	{contract: drivers.ResourceLimits{}, wire: ResourceLimits{}},
	{contract: drivers.ResourceUsage{}, wire: ResourceUsage{}},
	{contract: drivers.UsageCounters{}, wire: UsageCounters{}},
	{contract: drivers.NetworkConfig{}, wire: NetworkConfig{}},
	{contract: drivers.Volume{}, wire: Volume{}},
	{contract: drivers.Snapshot{}, wire: Snapshot{}},
	{contract: drivers.Network{}, wire: Network{}},
	{contract: drivers.Health{}, wire: Health{}},
	{contract: drivers.LogLine{}, wire: LogLine{}},
	{contract: drivers.Capabilities{}, wire: Capabilities{}},
	{contract: drivers.Event{}, wire: Event{}, renamed: map[string]string{"Err": "Error"},
		wireOnly: []string{"ID", "Driver", "Host", "RequestID", "Source"}},
	{contract: drivers.ExecRequest{}, wire: ExecRequest{}, wireOnly: []string{"Name", "Stream"}},
	{contract: drivers.StopOptions{}, wire: StopRequest{}, wireOnly: []string{"Name"}},
	{contract: drivers.DeleteOptions{}, wire: DeleteRequest{}, wireOnly: []string{"Name"}},
	{contract: drivers.LogOptions{}, wire: LogsRequest{}, wireOnly: []string{"Name"}},
}

// Every field of the driver contract has a wire counterpart, and every
// wire field a contract one (or is listed as wire-only): a field added on
// one side only fails here, before it is silently dropped on the bus.
func TestWireCoversTheContract(t *testing.T) {
	for _, p := range contractPairs {
		ct, wt := reflect.TypeOf(p.contract), reflect.TypeOf(p.wire)
		seen := map[string]bool{}
		for i := range ct.NumField() {
			name := ct.Field(i).Name
			if r, ok := p.renamed[name]; ok {
				name = r
			}
			seen[name] = true
			if _, ok := wt.FieldByName(name); !ok {
				t.Errorf("drivers.%s.%s has no counterpart in messages.%s", ct.Name(), ct.Field(i).Name, wt.Name())
			}
		}
		for i := range wt.NumField() {
			f := wt.Field(i)
			if f.Tag.Get("json") == "" {
				t.Errorf("messages.%s.%s has no json tag", wt.Name(), f.Name)
			}
			if !seen[f.Name] && !slices.Contains(p.wireOnly, f.Name) {
				t.Errorf("messages.%s.%s has no counterpart in drivers.%s", wt.Name(), f.Name, ct.Name())
			}
		}
	}
}

// fill sets every field of the struct v points to to a non-zero value, so
// a conversion that drops a field shows in a round trip.
func fill(t *testing.T, v reflect.Value) {
	t.Helper()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("s" + v.Type().Field(i).Name)
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Int, reflect.Int64:
			if f.Type() == reflect.TypeFor[time.Duration]() {
				f.SetInt(int64(3 * time.Second))
			} else {
				f.SetInt(int64(i + 1))
			}
		case reflect.Uint32, reflect.Uint64:
			f.SetUint(uint64(i + 1))
		case reflect.Float64:
			f.SetFloat(float64(i) + 0.5)
		case reflect.Struct:
			if f.Type() == reflect.TypeFor[time.Time]() {
				f.Set(reflect.ValueOf(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)))
			} else {
				fill(t, f)
			}
		case reflect.Slice:
			e := reflect.New(f.Type().Elem()).Elem()
			switch e.Kind() {
			case reflect.Struct:
				fill(t, e)
			case reflect.String:
				e.SetString("x")
			case reflect.Uint8:
				e.SetUint(7)
			}
			f.Set(reflect.Append(reflect.MakeSlice(f.Type(), 0, 1), e))
		case reflect.Map:
			m := reflect.MakeMap(f.Type())
			k, e := reflect.New(f.Type().Key()).Elem(), reflect.New(f.Type().Elem()).Elem()
			k.SetString("k")
			if e.Kind() == reflect.String {
				e.SetString("v")
			} else {
				e.SetInt(2)
			}
			m.SetMapIndex(k, e)
			f.Set(m)
		case reflect.Pointer:
			p := reflect.New(f.Type().Elem())
			if p.Elem().Kind() == reflect.Int {
				p.Elem().SetInt(int64(i + 1))
			} else {
				fill(t, p.Elem())
			}
			f.Set(p)
		default:
			t.Fatalf("fill: %s.%s of kind %s", v.Type().Name(), v.Type().Field(i).Name, f.Kind())
		}
	}
}

// The conversions carry every field both ways, and the wire JSON of a
// converted value decodes back to the same value.
func TestConversionsRoundTrip(t *testing.T) {
	var tmpl drivers.InstanceTemplate
	fill(t, reflect.ValueOf(&tmpl).Elem())
	if got := TemplateFrom(tmpl).Contract(); !reflect.DeepEqual(got, tmpl) {
		t.Errorf("template round trip:\n got %+v\nwant %+v", got, tmpl)
	}
	var inst drivers.Instance
	fill(t, reflect.ValueOf(&inst).Elem())
	w := InstanceFrom(inst, "process", "h1")
	if w.Driver != "process" || w.Host != "h1" {
		t.Errorf("InstanceFrom did not stamp driver and host: %+v", w)
	}
	if got := w.Contract(); !reflect.DeepEqual(got, inst) {
		t.Errorf("instance round trip:\n got %+v\nwant %+v", got, inst)
	}
	// Secret-looking environment values never reach the wire.
	inst.Environment = map[string]string{"DB_PASSWORD": "hunter2", "api_key": "k", "GITHUB_TOKEN": "t", "PORT": "8080"}
	w = InstanceFrom(inst, "process", "h1")
	if want := map[string]string{"DB_PASSWORD": MaskedValue, "api_key": MaskedValue, "GITHUB_TOKEN": MaskedValue, "PORT": "8080"}; !reflect.DeepEqual(w.Environment, want) {
		t.Errorf("environment on the wire = %v, want %v", w.Environment, want)
	}
	if inst.Environment["DB_PASSWORD"] != "hunter2" {
		t.Error("InstanceFrom changed the contract value's map")
	}
	b, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	var back Instance
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, w) {
		t.Errorf("instance JSON round trip: %v\n got %+v\nwant %+v", err, back, w)
	}
	var u drivers.ResourceUsage
	fill(t, reflect.ValueOf(&u).Elem())
	u.Measured = drivers.MeasureCPU | drivers.MeasureDiskIO | drivers.MeasureNetwork
	wu := UsageFrom(u)
	if wu.Counters != UsageCounters(u.Counters) || drivers.Measure(wu.Measured) != u.Measured || wu.NetworkTxMbps != u.NetworkTxMbps {
		t.Errorf("UsageFrom = %+v from %+v", wu, u)
	}
	b, _ = json.Marshal(wu)
	var backU ResourceUsage
	if err := json.Unmarshal(b, &backU); err != nil || !reflect.DeepEqual(backU, wu) {
		t.Errorf("usage JSON round trip: %v\n got %+v\nwant %+v", err, backU, wu)
	}
	var h drivers.Health
	fill(t, reflect.ValueOf(&h).Elem())
	if wh := HealthFrom(h); wh.Usage == nil || wh.Usage.CPUPercent != h.Usage.CPUPercent || !reflect.DeepEqual(wh.Instances, h.Instances) || wh.Version != h.Version {
		t.Errorf("HealthFrom = %+v from %+v", wh, h)
	}
	ev := drivers.Event{Type: drivers.EventFailed, Instance: "a", Err: drivers.Errorf(drivers.Conflict, "busy")}
	if we := EventFrom(ev); we.Error == nil || we.Error.Code != drivers.Conflict || we.Error.Message != "busy" || we.Type != ev.Type {
		t.Errorf("EventFrom = %+v", we)
	}
}

// ToWire converts every reply type of the op table: what the worker sends
// is the op's declared Reply type.
func TestToWireGivesTheReplyTypes(t *testing.T) {
	results := map[Op]any{
		OpList: []drivers.Instance{}, OpGet: drivers.Instance{}, OpCreate: drivers.Instance{}, OpClone: drivers.Instance{},
		OpExec: ExecResult{}, OpLogs: []drivers.LogLine{}, OpMetrics: drivers.ResourceUsage{}, OpHealth: drivers.Health{},
		OpCapabilities: CapabilitiesResult{}, OpLimitsGet: drivers.ResourceLimits{}, OpLimitsSet: drivers.ResourceLimits{},
		OpSnapshotCreate: drivers.Snapshot{}, OpSnapshotList: []drivers.Snapshot{}, OpNetworkList: []drivers.Network{},
		OpCancel: Operation{},
	}
	for _, s := range opTable {
		want := reflect.TypeOf(s.Reply()).Elem()
		v, ok := results[s.Op]
		if !ok {
			if want != reflect.TypeFor[ChangedResult]() {
				t.Errorf("%s: no sample result", s.Op)
			}
			continue
		}
		if got := reflect.TypeOf(ToWire(v, "d", "h")); got != want {
			t.Errorf("%s: ToWire gives %s, the op table says %s", s.Op, got, want)
		}
	}
	if l, ok := ToWire([]drivers.Instance(nil), "d", "h").([]Instance); !ok || l == nil {
		t.Errorf("an empty list is not [] on the wire: %#v", l)
	}
}

// Measure encodes as the list of measured field groups, and decodes back;
// an unknown name is an error.
func TestMeasureJSON(t *testing.T) {
	u := ResourceUsage{Measured: Measure(drivers.MeasureCPU | drivers.MeasureMemory)}
	b, _ := json.Marshal(u)
	if !strings.Contains(string(b), `"measured":["cpu","memory"]`) {
		t.Fatalf("measured encoded as %s", b)
	}
	var back ResourceUsage
	if err := json.Unmarshal(b, &back); err != nil || back.Measured != u.Measured {
		t.Fatalf("decoded %v %v", back.Measured, err)
	}
	if back.Measured.Has(drivers.MeasureNetwork) {
		t.Fatal("network must be not-measured")
	}
	if err := json.Unmarshal([]byte(`{"measured":["gpu"]}`), &back); err == nil {
		t.Fatal("unknown measure accepted")
	}
}
