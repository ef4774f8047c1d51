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

// NameRule is a driver's rule for instance names: what its substrate
// accepts, which may be less than ValidateName allows (LXD refuses '_'
// and '.', Docker one-character names). The manager checks it, after
// ValidateName, before the substrate is touched: a name outside it is
// InvalidArgument naming the rule, and nothing changes.
type NameRule struct {
	// Text states the rule in words, for errors, capabilities and docs.
	Text string
	// Valid reports whether an instance may be called name. create is
	// true for a name a request would give a new instance (create, the
	// target of a clone); false for a name that addresses one (a driver
	// may address instances by more names than it can create, as Proxmox
	// does with VMIDs). Valid is only asked about names ValidateName
	// accepts.
	Valid func(name string, create bool) bool
}

// NameRuler is implemented by drivers to declare their NameRule. A driver
// without it accepts every name ValidateName does (GenericNameRule).
type NameRuler interface {
	NameRule() NameRule
}

// GenericNameRule is the rule of ValidateName itself.
func GenericNameRule() NameRule {
	return NameRule{
		Text:  fmt.Sprintf("1 to %d letters, digits, '_', '.' and '-', starting with a letter or digit", MaxNameLen),
		Valid: func(string, bool) bool { return true },
	}
}

// NameRuleOf returns the rule d declares, or GenericNameRule.
func NameRuleOf(d Driver) NameRule {
	if r, ok := d.(NameRuler); ok {
		if rule := r.NameRule(); rule.Valid != nil {
			return rule
		}
	}
	return GenericNameRule()
}

// Check checks name (field names the argument) against ValidateName and
// the rule; the error's code is InvalidArgument.
func (r NameRule) Check(field, name string, create bool) error {
	if err := ValidateName(field, name); err != nil {
		return err
	}
	if !r.Valid(name, create) {
		return Errorf(InvalidArgument, "%s: %q is not a name this driver can have: %s", field, name, r.Text)
	}
	return nil
}

// dnsLabel: letters, digits and '-', not starting or ending with '-'.
var dnsLabel = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$`)

// DNSLabel reports whether s is a DNS label of at most 63 characters
// (RFC 1123: letters, digits and '-', not starting or ending with '-').
func DNSLabel(s string) bool { return len(s) <= 63 && dnsLabel.MatchString(s) }
