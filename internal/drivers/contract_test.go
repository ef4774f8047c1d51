package drivers

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"reflect"
	"strings"
	"testing"
)

// The driver contract carries no wire format: no struct of this package
// has a field tag (json, yaml, …) and no type has JSON or YAML methods.
// The wire forms, and their JSON, belong to the messages package, so a
// change to the contract cannot silently change schemas/.
func TestContractTypesHaveNoWireTags(t *testing.T) {
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	files := 0
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files++
		for _, p := range wireFormat(fset, f) {
			t.Error(p)
		}
	}
	if files < 5 {
		t.Fatalf("parsed %d files; run from the package directory", files)
	}
	// The reflection view of the same rule, for the types the wire mirrors.
	for _, v := range []any{Instance{}, InstanceTemplate{}, ResourceLimits{}, ResourceUsage{}, UsageCounters{},
		NetworkConfig{}, Volume{}, Snapshot{}, Network{}, Health{}, StopOptions{}, DeleteOptions{},
		ExecRequest{}, LogOptions{}, LogLine{}, Event{}, Capabilities{}} {
		typ := reflect.TypeOf(v)
		for i := range typ.NumField() {
			if tag := typ.Field(i).Tag; tag != "" {
				t.Errorf("%s.%s has tag %q", typ.Name(), typ.Field(i).Name, tag)
			}
		}
	}
}

// wireFormat lists the tagged struct fields and the JSON/YAML methods of
// a file. (Code's MarshalText, its name as text, is the error code's
// string form and is allowed.)
func wireFormat(fset *token.FileSet, f *ast.File) []string {
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.TypeSpec:
			st, ok := n.Type.(*ast.StructType)
			if !ok || !n.Name.IsExported() {
				return true
			}
			for _, fld := range st.Fields.List {
				if fld.Tag != nil {
					out = append(out, fmt.Sprintf("%s: %s has a field tag %s: the contract has no wire format (put it on the messages type)",
						fset.Position(fld.Pos()), n.Name.Name, fld.Tag.Value))
				}
			}
		case *ast.FuncDecl:
			switch n.Name.Name {
			case "MarshalJSON", "UnmarshalJSON", "MarshalYAML", "UnmarshalYAML":
				if n.Recv != nil {
					out = append(out, fmt.Sprintf("%s: %s: the contract has no wire format (encode in the messages package)", fset.Position(n.Pos()), n.Name.Name))
				}
			}
		}
		return true
	})
	return out
}

// The check itself catches a tag and a JSON method.
func TestWireFormatCheck(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "x.go", "package x\ntype T struct{ A int `json:\"a\"`; B int }\nfunc (T) MarshalJSON() ([]byte, error) { return nil, nil }\ntype u struct{ C int `json:\"c\"` }", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := wireFormat(fset, f); len(got) != 2 {
		t.Fatalf("wireFormat found %d problems, want 2 (the tag of T.A, MarshalJSON): %q", len(got), got)
	}
}
