package registry

import "testing"

func TestBuiltinIsWellFormed(t *testing.T) {
	fs := Builtin() // panics on duplicates, reserved or empty names
	for _, f := range fs {
		if _, ok := Lookup(f.Name); !ok {
			t.Fatalf("Lookup(%q) failed", f.Name)
		}
	}
}

func TestCheckRejectsReserved(t *testing.T) {
	for _, name := range []string{"events", "metrics", ""} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("name %q accepted", name)
				}
			}()
			check([]Factory{{Name: name}})
		}()
	}
}
