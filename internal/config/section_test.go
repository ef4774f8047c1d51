package config

import (
	"reflect"
	"testing"
)

// A driver that decodes its section strictly accepts the manager's keys
// by embedding SectionOptions.
func TestSectionOptionsInline(t *testing.T) {
	cfg, err := Parse([]byte("docker:\n  host: unix:///x.sock\n  retry_attempts: 4\n  breaker_open_timeout: 10s\n"))
	if err != nil {
		t.Fatal(err)
	}
	var opts struct {
		Host           string `yaml:"host"`
		SectionOptions `yaml:",inline"`
	}
	if err := cfg.Decode("docker", &opts); err != nil {
		t.Fatal(err)
	}
	if opts.Host != "unix:///x.sock" {
		t.Fatalf("%+v", opts)
	}
	var strict struct {
		Host string `yaml:"host"`
	}
	if err := cfg.Decode("docker", &strict); err == nil {
		t.Fatal("strict decode accepted retry_attempts: the embedding is what makes it pass")
	}
	// SectionKeys and SectionOptions list the same keys.
	rt := reflect.TypeOf(SectionOptions{})
	tags := map[string]bool{}
	for i := 0; i < rt.NumField(); i++ {
		tags[rt.Field(i).Tag.Get("yaml")] = true
	}
	if len(tags) != len(SectionKeys) {
		t.Fatalf("SectionOptions has %d keys, SectionKeys %d", len(tags), len(SectionKeys))
	}
	for _, k := range SectionKeys {
		if !tags[k] {
			t.Fatalf("SectionKeys has %s, SectionOptions does not", k)
		}
	}
}
