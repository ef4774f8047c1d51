package messages

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/subbus/subbus/internal/drivers"
)

func TestOpTable(t *testing.T) {
	seen := map[Op]bool{}
	for _, s := range opTable {
		if seen[s.Op] {
			t.Errorf("%s listed twice", s.Op)
		}
		seen[s.Op] = true
		if s.Request == nil || s.Reply == nil {
			t.Errorf("%s: no request or reply type", s.Op)
			continue
		}
		if got, err := ParseOp(string(s.Op)); err != nil || got != s.Op {
			t.Errorf("ParseOp(%s) = %v, %v", s.Op, got, err)
		}
		_, named := s.Request().(interface{ Instance() string })
		_, empty := s.Request().(*EmptyRequest)
		if named == empty {
			t.Errorf("%s: request %T: Instance method %v", s.Op, s.Request(), named)
		}
		if s.Long != (s.Doing != "" && s.Done != "") || (s.Long && !s.Mutating) {
			t.Errorf("%s: Long=%v Doing=%q Done=%q Mutating=%v: long ops mutate and have both verbs, others neither",
				s.Op, s.Long, s.Doing, s.Done, s.Mutating)
		}
		_, streams := s.Request().(interface{ Streamed() bool })
		if streams != s.Streams {
			t.Errorf("%s: Streams=%v but its request has Streamed: %v", s.Op, s.Streams, streams)
		}
	}
	if _, err := ParseOp("reboot"); drivers.CodeOf(err) != drivers.InvalidArgument {
		t.Errorf("ParseOp(reboot): %v", err)
	}
}

func TestOpsFor(t *testing.T) {
	core := "list get create start stop restart delete metrics health capabilities op-cancel"
	for _, tc := range []struct {
		caps drivers.Capabilities
		want string
	}{
		{drivers.Capabilities{}, core},
		{drivers.Capabilities{Exec: true, Events: true}, core + " exec"},
		{drivers.Capabilities{Exec: true, Logs: true, Limits: true, Snapshots: true, Clone: true, Networks: true},
			core + " exec logs limits-get limits-set snapshot-create snapshot-restore snapshot-list snapshot-delete clone " +
				"network-attach network-detach network-list"},
	} {
		got := strings.Join(OpNames(OpsFor(tc.caps)), " ")
		if got != tc.want {
			t.Errorf("OpsFor(%+v) = %s, want %s", tc.caps, got, tc.want)
		}
		for _, op := range Ops() {
			err := op.Supported("d", tc.caps)
			if in := strings.Contains(" "+got+" ", " "+string(op)+" "); in != (err == nil) {
				t.Errorf("%s with %+v: listed=%v, Supported: %v", op, tc.caps, in, err)
			}
			if err != nil && drivers.CodeOf(err) != drivers.Unsupported {
				t.Errorf("%s: %v is not unsupported", op, err)
			}
		}
	}
}

// The sample results of the schema tests have the reply type of the table.
func TestReplyTypesMatchSamples(t *testing.T) {
	results := fullResults()
	for _, op := range Ops() {
		spec, _ := Spec(op)
		want := reflect.TypeOf(spec.Reply()).Elem()
		if got := reflect.TypeOf(results[op]); got != want {
			t.Errorf("%s: sample result is %v, the table says %v", op, got, want)
		}
	}
}

// docs/bus.md's table of operations agrees with opTable, row by row.
func TestBusDocOpTable(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(schemaDir(t), "..", "docs", "bus.md"))
	if err != nil {
		t.Fatal(err)
	}
	const header = "| op | mutating | idempotent | capability | streams | no-wait | reply schema |"
	_, table, found := strings.Cut(string(b), header+"\n")
	if !found {
		t.Fatalf("docs/bus.md has no table with the header %s", header)
	}
	rows := map[string]string{}
	for line := range strings.SplitSeq(table, "\n") {
		if !strings.HasPrefix(line, "|") {
			break
		}
		if op, ok := strings.CutPrefix(line, "| `"); ok {
			op, _, _ = strings.Cut(op, "`")
			rows[op] = line
		}
	}
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	for _, s := range opTable {
		capName := string(s.Capability)
		if capName == "" {
			capName = "-"
		}
		want := fmt.Sprintf("| `%s` | %s | %s | %s | %s | %s | %s |", s.Op, yes(s.Mutating), yes(s.Idempotent), capName,
			yes(s.Streams), yes(s.Long), "`"+string(s.Op)+".schema.json`")
		if got := rows[string(s.Op)]; got != want {
			t.Errorf("docs/bus.md row of %s:\n got %s\nwant %s", s.Op, got, want)
		}
		delete(rows, string(s.Op))
	}
	for op := range rows {
		t.Errorf("docs/bus.md lists %s, which is not an op", op)
	}
}

// The event and metric trees' tokens can never be driver names.
func TestReservedTokensAreNotDriverNames(t *testing.T) {
	for _, tok := range []string{EventsToken, MetricsToken} {
		if drivers.ValidDriverName(tok) == nil {
			t.Errorf("%q is accepted as a driver name", tok)
		}
	}
}

// ExecRequest carries every field of the driver contract's ExecRequest, and
// Options converts each.
func TestExecRequestCoversTheContract(t *testing.T) {
	want := drivers.ExecRequest{Command: []string{"ls"}, Env: map[string]string{"A": "1"}, WorkDir: "/", User: "u", Stdin: []byte("in")}
	ct := reflect.TypeOf(want)
	for i := range ct.NumField() {
		if _, ok := reflect.TypeOf(ExecRequest{}).FieldByName(ct.Field(i).Name); !ok {
			t.Errorf("messages.ExecRequest lacks %s", ct.Field(i).Name)
		}
	}
	r := ExecRequest{Name: "a", Command: want.Command, Env: want.Env, WorkDir: want.WorkDir, User: want.User, Stdin: want.Stdin}
	if got := r.Options(); !reflect.DeepEqual(got, want) {
		t.Errorf("Options() = %+v, want %+v", got, want)
	}
}

// The error-code tables of docs/bus.md and README.md, and the exit
// statuses of docs/cli.md, list exactly the codes of drivers.CodeTable
// with their numbers, retryability and exit statuses.
func TestDocCodeTables(t *testing.T) {
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(schemaDir(t), "..", rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	rows := func(doc, header string) map[string]string {
		_, table, found := strings.Cut(doc, header+"\n")
		if !found {
			t.Fatalf("no table with the header %s", header)
		}
		out := map[string]string{}
		for line := range strings.SplitSeq(table, "\n") {
			if !strings.HasPrefix(line, "|") {
				break
			}
			cells := strings.Split(line, "|")
			for _, c := range cells {
				c = strings.TrimSpace(c)
				if strings.HasPrefix(c, "`") && strings.HasSuffix(c, "`") {
					out[strings.Trim(c, "`")] = line
					break
				}
			}
		}
		return out
	}
	yes := map[bool]string{true: "yes", false: "no"}
	bus := rows(read("docs/bus.md"), "| code | number | meaning |")
	readme := rows(read("README.md"), "| code | number | retryable | meaning |")
	cli := rows(read("docs/cli.md"), "| Status | Code | Meaning |")
	for _, r := range drivers.CodeTable() {
		if got, want := bus[r.Name], fmt.Sprintf("| `%s` | %d |", r.Name, int(r.Code)); !strings.HasPrefix(got, want) {
			t.Errorf("docs/bus.md row of %s: %q, want it to start %q", r.Name, got, want)
		}
		if got, want := readme[r.Name], fmt.Sprintf("| `%s` | %d | %s |", r.Name, int(r.Code), yes[r.Retryable]); !strings.HasPrefix(got, want) {
			t.Errorf("README.md row of %s: %q, want it to start %q", r.Name, got, want)
		}
		if got, want := cli[r.Name], fmt.Sprintf("| %d | `%s` |", r.Exit, r.Name); !strings.HasPrefix(got, want) {
			t.Errorf("docs/cli.md exit status of %s: %q, want it to start %q", r.Name, got, want)
		}
	}
	if len(bus) != len(drivers.Codes()) || len(readme) != len(drivers.Codes()) {
		t.Errorf("docs/bus.md lists %d codes, README.md %d, the code table has %d", len(bus), len(readme), len(drivers.Codes()))
	}
}
