package docker

import (
	"regexp"

	"github.com/subbus/subbus/internal/drivers"
)

// containerNamePattern is Docker's pattern for container names: at least two
// characters.
var containerNamePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

// NameRule: Docker's container names, [a-zA-Z0-9][a-zA-Z0-9_.-]+ (two
// characters at least).
func (d *Driver) NameRule() drivers.NameRule {
	return drivers.NameRule{
		Text:  "a Docker container name matches [a-zA-Z0-9][a-zA-Z0-9_.-]+ (at least 2 characters)",
		Valid: func(name string, _ bool) bool { return containerNamePattern.MatchString(name) },
	}
}
