package lxc

import (
	"unicode"

	"github.com/subbus/subbus/internal/drivers"
)

// NameRule: LXD's (and Incus's) instance names are hostnames: 1 to 63
// letters, digits and '-', not starting with a digit or '-', not ending
// with '-' (no '_' or '.').
func (d *Driver) NameRule() drivers.NameRule {
	return drivers.NameRule{
		Text: "an LXD instance name is a hostname: 1 to 63 letters, digits and '-', starting with a letter, not ending with '-' (no '_' or '.')",
		Valid: func(name string, _ bool) bool {
			return drivers.DNSLabel(name) && unicode.IsLetter(rune(name[0]))
		},
	}
}
