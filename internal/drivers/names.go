package drivers

import (
	"fmt"
	"regexp"
)

// MaxNameLen bounds instance, snapshot and network names.
const MaxNameLen = 63

// namePattern: a letter or digit, then letters, digits, '-', '_' or '.'.
// No path separators, whitespace, control characters, or leading dot/dash.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// ValidateName checks an instance, snapshot or network name; field names
// the argument in the error. The error's code is InvalidArgument.
func ValidateName(field, name string) error {
	switch {
	case name == "":
		return Errorf(InvalidArgument, "%s: must not be empty", field)
	case len(name) > MaxNameLen:
		return Errorf(InvalidArgument, "%s: longer than %d characters", field, MaxNameLen)
	case name == "." || name == "..":
		return Errorf(InvalidArgument, "%s: %q is not a name", field, name)
	case !namePattern.MatchString(name):
		return Errorf(InvalidArgument, "%s: %s must match %s", field, fmt.Sprintf("%q", name), namePattern.String())
	}
	return nil
}
