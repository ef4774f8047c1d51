// Package config loads substrate_config.yaml: one top-level section per
// driver (declared by the driver's registration in internal/registry, and
// checked with CheckSections) plus config's own sections global, nats and
// worker. Values are looked up by dotted path with a default
// (Get("docker.registry.host", def)), or decoded section by section into
// typed structs whose unknown keys are errors naming the key.
//
// Environment overrides: SUBBUS__<SECTION>__<KEY>[__<KEY>…]=value sets the
// dotted path section.key… (lower-cased); the value is parsed as a YAML
// scalar or flow collection, so SUBBUS__GLOBAL__ENABLE_METRICS=false and
// SUBBUS__WORKER__DRIVERS='[process,docker]' work.
package config

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment override.
const EnvPrefix = "SUBBUS__"

// OwnSections are the top-level sections that belong to no driver: global
// (settings shared by every driver, and their defaults), nats and worker.
// Every other section must be a driver's (CheckSections).
var OwnSections = []string{"global", "nats", "worker"}

// Config is a loaded configuration tree. The zero value is empty (every
// lookup returns its default).
type Config struct {
	root map[string]any
	// Path is the file it was loaded from, if any.
	Path string
}

// Error is a configuration error naming the bad key.
type Error struct {
	Key string
	Msg string
}

func (e *Error) Error() string { return fmt.Sprintf("config: %s: %s", e.Key, e.Msg) }

// Default returns an empty configuration (all defaults) with environment
// overrides applied.
func Default() (*Config, error) {
	c := &Config{root: map[string]any{}}
	return c, c.applyEnv(os.Environ())
}

// Load reads a YAML file, then applies environment overrides. An empty
// path is the same as Default.
func Load(path string) (*Config, error) {
	if path == "" {
		return Default()
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, err
	}
	c.Path = path
	return c, c.applyEnv(os.Environ())
}

// Parse parses YAML (without environment overrides) and checks that every
// top-level section is a mapping. Which sections may exist is checked by
// CheckSections, given the drivers' sections.
func Parse(b []byte) (*Config, error) {
	root := map[string]any{}
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if root == nil {
		root = map[string]any{}
	}
	for k, v := range root {
		if v != nil {
			if _, ok := v.(map[string]any); !ok {
				return nil, &Error{Key: k, Msg: "must be a mapping"}
			}
		}
	}
	return &Config{root: root}, nil
}

// CheckSections returns an *Error naming a top-level section that is
// neither one of OwnSections nor one of driverSections (the sections the
// registered drivers declare); its message lists the known sections.
// Sections set by environment overrides are checked too.
func (c *Config) CheckSections(driverSections []string) error {
	known := append(append([]string(nil), OwnSections...), driverSections...)
	for _, k := range c.Keys("") {
		if !slices.Contains(known, k) {
			return &Error{Key: k, Msg: fmt.Sprintf("unknown section (known: %s)", strings.Join(known, ", "))}
		}
	}
	return nil
}

func (c *Config) applyEnv(env []string) error {
	for _, kv := range env {
		if !strings.HasPrefix(kv, EnvPrefix) {
			continue
		}
		k, v, _ := strings.Cut(kv[len(EnvPrefix):], "=")
		path := strings.Join(strings.Split(strings.ToLower(k), "__"), ".")
		var val any
		if err := yaml.Unmarshal([]byte(v), &val); err != nil {
			val = v
		}
		if err := c.Set(path, val); err != nil {
			return err
		}
	}
	return nil
}

// Set sets the value at a dotted path, creating mappings on the way.
func (c *Config) Set(path string, val any) error {
	if c.root == nil {
		c.root = map[string]any{}
	}
	parts := strings.Split(path, ".")
	m := c.root
	for i, p := range parts[:len(parts)-1] {
		next, ok := m[p]
		if !ok || next == nil {
			nm := map[string]any{}
			m[p] = nm
			m = nm
			continue
		}
		nm, ok := next.(map[string]any)
		if !ok {
			return &Error{Key: strings.Join(parts[:i+1], "."), Msg: "is not a mapping"}
		}
		m = nm
	}
	m[parts[len(parts)-1]] = val
	return nil
}

// Lookup returns the raw value at a dotted path ("docker.registry.host").
func (c *Config) Lookup(path string) (any, bool) {
	var cur any = c.root
	for _, p := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		cur, ok = m[p]
		if !ok {
			return nil, false
		}
	}
	return cur, true
}

// Has reports whether the path is set.
func (c *Config) Has(path string) bool { _, ok := c.Lookup(path); return ok }

// Get returns the value at path, or def when unset.
func (c *Config) Get(path string, def any) any {
	if v, ok := c.Lookup(path); ok && v != nil {
		return v
	}
	return def
}

// Decode decodes the subtree at path (a section, e.g. "docker") into v, a
// pointer to a struct with yaml tags. Keys v does not know are an *Error
// naming the key; so are values of the wrong type. An absent subtree
// leaves v as it is (so callers set defaults first).
func (c *Config) Decode(path string, v any) error {
	sub, ok := c.Lookup(path)
	if !ok || sub == nil {
		return nil
	}
	b, err := yaml.Marshal(sub)
	if err != nil {
		return &Error{Key: path, Msg: err.Error()}
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return &Error{Key: path, Msg: cleanYAMLError(err)}
	}
	return nil
}

func cleanYAMLError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "yaml: unmarshal errors:\n")
	return strings.Join(strings.Fields(s), " ")
}

// String returns the string at path, or def.
func (c *Config) String(path, def string) string {
	if v, ok := c.Lookup(path); ok && v != nil {
		return fmt.Sprint(v)
	}
	return def
}

// Bool returns the bool at path, or def (also when the value is not a bool).
func (c *Config) Bool(path string, def bool) bool {
	if v, ok := c.Lookup(path); ok {
		if b, ok := v.(bool); ok {
			return b
		}
	}
	return def
}

// Int returns the integer at path, or def.
func (c *Config) Int(path string, def int) int {
	if v, ok := c.Lookup(path); ok {
		switch n := v.(type) {
		case int:
			return n
		case float64:
			return int(n)
		}
	}
	return def
}

// Duration returns the duration at path, or def. Strings use Go syntax
// ("30s"); bare numbers are seconds.
func (c *Config) Duration(path string, def time.Duration) time.Duration {
	if v, ok := c.Lookup(path); ok {
		switch n := v.(type) {
		case string:
			if d, err := time.ParseDuration(n); err == nil {
				return d
			}
		case int:
			return time.Duration(n) * time.Second
		case float64:
			return time.Duration(n * float64(time.Second))
		}
	}
	return def
}

// Keys returns the keys under path, sorted.
func (c *Config) Keys(path string) []string {
	var m map[string]any
	if path == "" {
		m = c.root
	} else if v, ok := c.Lookup(path); ok {
		m, _ = v.(map[string]any)
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Duration is a time.Duration that decodes from "30s" or a number of seconds,
// for use in structs passed to Decode.
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	if pd, err := time.ParseDuration(s); err == nil {
		*d = Duration(pd)
		return nil
	}
	var f float64
	if err := n.Decode(&f); err != nil {
		return fmt.Errorf("line %d: %q is not a duration (use e.g. 30s)", n.Line, s)
	}
	*d = Duration(f * float64(time.Second))
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }
