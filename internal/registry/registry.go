// Package registry lists the built-in drivers (in builtin.go, the one
// place a driver is registered) and builds them from the configuration.
// Each registration declares the driver's configuration section; the
// sections config accepts besides its own are exactly these (Sections,
// CheckConfig). Adding a driver is its package plus one line in builtin.go.
package registry

import (
	"context"
	"fmt"
	"sort"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
)

// Factory builds one driver.
type Factory struct {
	// Name is the driver name used in subjects ("docker"); it must be a
	// valid subject token and never "events" or "metrics".
	Name string
	// Section is the top-level configuration section the driver owns: its
	// own keys plus the manager's (config.SectionKeys). A Factory with only
	// a Section (Reserve) accepts the section of a driver not built yet.
	Section string
	// New builds the driver from the configuration (its own section).
	// Bad configuration is an error naming the key. It must not connect.
	New func(cfg *config.Config) (drivers.Driver, error)
	// Detect reports whether the substrate answers on this host (its
	// socket or endpoint), for auto-detection when no driver list is
	// configured. nil means found; the error says why not.
	Detect func(ctx context.Context, cfg *config.Config) error
}

// Reserve returns a registration that only keeps a configuration section
// known, for a driver whose package is still being written, so that
// configurations written for it load. The driver's own registration line
// replaces its Reserve line.
func Reserve(section string) Factory { return Factory{Section: section} }

// Builtin returns every built-in driver (Reserve lines excluded), in
// registration order.
func Builtin() []Factory {
	var out []Factory
	for _, f := range registrations() {
		if f.New != nil {
			out = append(out, f)
		}
	}
	return out
}

// Sections returns the configuration sections the registrations declare
// (drivers and reserved ones), in registration order.
func Sections() []string {
	var out []string
	for _, f := range registrations() {
		out = append(out, f.Section)
	}
	return out
}

// CheckConfig returns a *config.Error naming a top-level section of cfg
// that is neither config's own nor a registered driver's.
func CheckConfig(cfg *config.Config) error { return cfg.CheckSections(Sections()) }

// Lookup returns the factory with the given name.
func Lookup(name string) (Factory, bool) {
	for _, f := range Builtin() {
		if f.Name == name {
			return f, true
		}
	}
	return Factory{}, false
}

// Names returns the names of the built-in drivers, sorted.
func Names() []string {
	var out []string
	for _, f := range Builtin() {
		out = append(out, f.Name)
	}
	sort.Strings(out)
	return out
}

// check panics on a malformed registry: a programming error caught by the
// registry's test.
func check(fs []Factory) []Factory {
	seen := map[string]bool{}
	sections := map[string]bool{}
	for _, s := range config.OwnSections {
		sections[s] = true
	}
	for _, f := range fs {
		if f.Section == "" || sections[f.Section] {
			panic(fmt.Sprintf("registry: registration %q: section %q is empty or taken", f.Name, f.Section))
		}
		sections[f.Section] = true
		if f.Name == "" && f.New == nil && f.Detect == nil {
			continue // Reserve
		}
		if drivers.ValidDriverName(f.Name) != nil || seen[f.Name] || f.New == nil || f.Detect == nil {
			panic(fmt.Sprintf("registry: bad driver registration %q", f.Name))
		}
		seen[f.Name] = true
	}
	return fs
}
