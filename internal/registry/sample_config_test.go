package registry_test

import (
	"strings"
	"testing"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/registry"
	"github.com/subbus/subbus/internal/worker"
)

// The shipped sample must be valid for the worker, every manager and every
// built-in driver, so it can never drift from the code.
func TestSampleConfigIsValid(t *testing.T) {
	cfg, err := config.Load("../../deployments/substrate_config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := worker.OptionsFromConfig(cfg); err != nil {
		t.Fatalf("worker sections: %v", err)
	}
	for _, f := range registry.Builtin() {
		if _, err := manager.OptionsFromConfig(cfg, f.Section); err != nil {
			t.Errorf("manager options for %s: %v", f.Name, err)
		}
		d, err := f.New(cfg)
		if err != nil {
			t.Errorf("driver %s: %v", f.Name, err)
			continue
		}
		_ = d.Close()
	}
}

// A typo in any driver section is an error naming the key.
func TestSampleConfigTypoNamesKey(t *testing.T) {
	for _, f := range registry.Builtin() {
		cfg, err := config.Parse([]byte(f.Name + ":\n  no_such_key: 1\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.New(cfg); err == nil {
			t.Errorf("driver %s accepted an unknown key", f.Name)
		} else if want := "no_such_key"; !strings.Contains(err.Error(), want) {
			t.Errorf("driver %s: error %q does not name %s", f.Name, err, want)
		}
	}
}
