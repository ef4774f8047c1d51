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

// driverNamePattern: a driver name is used verbatim as a subject token.
var driverNamePattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// reservedDriverNames are subject tokens of the event and metric trees
// (substrate.events.>, substrate.metrics.>), so they can never be drivers.
var reservedDriverNames = map[string]bool{"events": true, "metrics": true}

// ValidDriverName checks a driver name: letters, digits, '_' and '-' (it
// is a subject token), at most 128 characters, and not a reserved name
// ("events", "metrics"). The error's code is InvalidArgument.
func ValidDriverName(name string) error {
	switch {
	case !driverNamePattern.MatchString(name):
		return Errorf(InvalidArgument, "driver: %q is not a valid driver name (letters, digits, '-' and '_')", name)
	case reservedDriverNames[name]:
		return Errorf(InvalidArgument, "driver: %q is reserved", name)
	}
	return nil
}
