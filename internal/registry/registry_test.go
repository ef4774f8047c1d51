package registry

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/subbus/subbus/internal/config"
)

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
			check([]Factory{{Name: name, Section: "s", New: Builtin()[0].New, Detect: Builtin()[0].Detect}})
		}()
	}
}

// Every registration declares its section; config accepts exactly those
// besides its own, and an unknown section's error lists them.
func TestSectionsComeFromRegistrations(t *testing.T) {
	secs := Sections()
	for _, f := range Builtin() {
		if !slices.Contains(secs, f.Section) {
			t.Errorf("driver %s: section %q not in Sections() = %v", f.Name, f.Section, secs)
		}
	}
	for _, s := range []string{"process", "docker", "lxc", "supervisor", "proxmox", "libvirt"} {
		cfg, err := config.Parse([]byte(s + ":\n  key: 1\n"))
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckConfig(cfg); err != nil {
			t.Errorf("section %s rejected: %v", s, err)
		}
	}
	for _, f := range registrations() {
		if f.New == nil {
			if _, ok := Lookup(f.Section); ok {
				t.Errorf("reserved section %s is served as a driver", f.Section)
			}
		}
	}
	cfg, err := config.Parse([]byte("global: {}\ndokcer:\n  host: x\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = CheckConfig(cfg)
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Key != "dokcer" || !strings.Contains(err.Error(), "docker") || !strings.Contains(err.Error(), "libvirt") {
		t.Fatalf("CheckConfig: %v, want an error naming dokcer and listing the known sections", err)
	}
}

func TestCheckRejectsBadSections(t *testing.T) {
	ok := Factory{Name: "a", Section: "a", New: Builtin()[0].New, Detect: Builtin()[0].Detect}
	for name, fs := range map[string][]Factory{
		"no section":              {{Name: "a", New: ok.New, Detect: ok.Detect}},
		"config's own":            {{Name: "a", Section: "global", New: ok.New, Detect: ok.Detect}},
		"taken twice":             {ok, {Name: "b", Section: "a", New: ok.New, Detect: ok.Detect}},
		"reserved and registered": {ok, Reserve("a")},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s accepted", name)
				}
			}()
			check(fs)
		}()
	}
	check([]Factory{ok, Reserve("b")}) // well-formed: no panic
}
