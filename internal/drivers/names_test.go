package drivers

import (
	"strings"
	"testing"
)

func TestValidDriverName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"docker", true}, {"my_driver-2", true}, {strings.Repeat("a", 128), true},
		{"", false}, {"a.b", false}, {"a b", false}, {"a>", false}, {"*", false}, {strings.Repeat("a", 129), false},
		{"events", false}, {"metrics", false},
	} {
		err := ValidDriverName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidDriverName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && CodeOf(err) != InvalidArgument {
			t.Errorf("ValidDriverName(%q): code %v", tc.name, CodeOf(err))
		}
	}
}
