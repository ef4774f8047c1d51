package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestLookupAndDefaults(t *testing.T) {
	c, err := Parse([]byte("docker:\n  registry:\n    host: reg.local\n  retry_attempts: 4\nglobal:\n  enable_metrics: false\n  metrics_interval: 15s\n"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"nested string", c.String("docker.registry.host", "x"), "reg.local"},
		{"missing string", c.String("docker.registry.port", "5000"), "5000"},
		{"int", c.Int("docker.retry_attempts", 3), 4},
		{"bool false", c.Bool("global.enable_metrics", true), false},
		{"bool default", c.Bool("global.enable_events", true), true},
		{"duration", c.Duration("global.metrics_interval", time.Second), 15 * time.Second},
		{"get default", c.Get("lxc.default_image", "busybox"), "busybox"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Fatalf("got %v, want %v", tc.got, tc.want)
			}
		})
	}
}

func TestUnknownSectionNamesKey(t *testing.T) {
	drivers := []string{"process", "docker"}
	tests := []struct {
		name, yaml string
		env        []string
		bad        string // the section named in the error; "" for none
	}{
		{name: "typo", yaml: "dokcer:\n  host: x\n", bad: "dokcer"},
		{name: "own and driver sections", yaml: "global:\n  retry_attempts: 2\nnats:\n  url: x\nworker:\n  host: h\ndocker:\n  host: x\n"},
		{name: "a section of no registered driver", yaml: "lxc:\n  project: p\n", bad: "lxc"},
		{name: "environment override of an unknown section", env: []string{"SUBBUS__NOPE__X=1"}, bad: "nope"},
		{name: "environment override of a driver section", env: []string{"SUBBUS__DOCKER__HOST=x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.applyEnv(tc.env); err != nil {
				t.Fatal(err)
			}
			err = c.CheckSections(drivers)
			if tc.bad == "" {
				if err != nil {
					t.Fatalf("CheckSections: %v", err)
				}
				return
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.Key != tc.bad {
				t.Fatalf("want *Error naming %s, got %v", tc.bad, err)
			}
			if !strings.Contains(err.Error(), "known: global, nats, worker, process, docker") {
				t.Fatalf("error %q does not list the known sections", err)
			}
		})
	}
}

func TestDecodeUnknownFieldNamesKey(t *testing.T) {
	c, err := Parse([]byte("docker:\n  hots: unix:///x\n"))
	if err != nil {
		t.Fatal(err)
	}
	var opts struct {
		Host    string   `yaml:"host"`
		Timeout Duration `yaml:"timeout"`
	}
	err = c.Decode("docker", &opts)
	if err == nil || !strings.Contains(err.Error(), "hots") || !strings.Contains(err.Error(), "docker") {
		t.Fatalf("want an error naming docker and hots, got %v", err)
	}
}

func TestDecodeDurationAndTypes(t *testing.T) {
	c, err := Parse([]byte("docker:\n  host: unix:///x\n  timeout: 45s\nprocess:\n  timeout: 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	var opts struct {
		Host    string   `yaml:"host"`
		Timeout Duration `yaml:"timeout"`
	}
	if err := c.Decode("docker", &opts); err != nil {
		t.Fatal(err)
	}
	if opts.Host != "unix:///x" || time.Duration(opts.Timeout) != 45*time.Second {
		t.Fatalf("decoded %+v", opts)
	}
	if err := c.Decode("process", &opts); err != nil || time.Duration(opts.Timeout) != 2*time.Second {
		t.Fatalf("bare seconds: %v %v", err, opts.Timeout)
	}
	bad, _ := Parse([]byte("docker:\n  timeout: soon\n"))
	if err := bad.Decode("docker", &opts); err == nil || !strings.Contains(err.Error(), "docker") {
		t.Fatalf("want error naming docker for a bad duration, got %v", err)
	}
}

func TestEnvOverrides(t *testing.T) {
	c, _ := Parse([]byte("global:\n  enable_metrics: true\n"))
	if err := c.applyEnv([]string{"SUBBUS__GLOBAL__ENABLE_METRICS=false", "SUBBUS__LXC__DEFAULT_PROFILE=web", "SUBBUS__WORKER__DRIVERS=[process, docker]", "HOME=/root"}); err != nil {
		t.Fatal(err)
	}
	if c.Bool("global.enable_metrics", true) {
		t.Fatal("override of enable_metrics not applied")
	}
	if got := c.String("lxc.default_profile", ""); got != "web" {
		t.Fatalf("lxc.default_profile = %q", got)
	}
	var w struct {
		Drivers []string `yaml:"drivers"`
	}
	if err := c.Decode("worker", &w); err != nil || len(w.Drivers) != 2 || w.Drivers[1] != "docker" {
		t.Fatalf("worker.drivers = %v (%v)", w.Drivers, err)
	}
}
