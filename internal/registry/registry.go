// Package registry lists the built-in drivers (in builtin.go, the one
// place a driver is registered) and builds them from the configuration.
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
	// New builds the driver from the configuration (its own section).
	// Bad configuration is an error naming the key. It must not connect.
	New func(cfg *config.Config) (drivers.Driver, error)
	// Detect reports whether the substrate answers on this host (its
	// socket or endpoint), for auto-detection when no driver list is
	// configured. nil means found; the error says why not.
	Detect func(ctx context.Context, cfg *config.Config) error
}

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
	for _, f := range fs {
		if drivers.ValidDriverName(f.Name) != nil || seen[f.Name] || f.New == nil || f.Detect == nil {
			panic(fmt.Sprintf("registry: bad driver registration %q", f.Name))
		}
		seen[f.Name] = true
	}
	return fs
}
