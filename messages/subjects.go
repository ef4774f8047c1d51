package messages

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
)

// Subject layout (see schemas/asyncapi.yaml):
//
//	substrate.<driver>.<op>                           any worker serving driver (queue group)
//	substrate.<driver>.<host>.<op>                    only that host's worker
//	substrate.events.<driver>.<host>.<instance>.<type> stream SUBSTRATE_EVENTS
//	substrate.metrics.<driver>.<host>.<instance>       stream SUBSTRATE_METRICS
//
// The event and metric trees start with the reserved driver names "events"
// and "metrics", so no stream ever captures a request subject: the streams
// bind substrate.events.> and substrate.metrics.> only.
const (
	SubjectRoot   = "substrate"
	EventsToken   = "events"
	MetricsToken  = "metrics"
	EventsStream  = "SUBSTRATE_EVENTS"
	MetricsStream = "SUBSTRATE_METRICS"
	ServiceName   = "substrate"
	// SubstrateToken stands for "no instance" in event subjects of
	// substrate-level events (breaker state, connection).
	SubstrateToken = "_"
)

var tokenPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// ValidToken reports whether s can be used verbatim as a subject token
// (drivers, hosts): letters, digits, '_' and '-'.
func ValidToken(s string) bool { return len(s) <= 128 && tokenPattern.MatchString(s) }

// EncodeToken encodes an instance name as a subject token, reversibly.
// Names that are valid tokens are kept as they are; others (e.g. with '.')
// become "~" + unpadded base64url of the name ('~' cannot start a name).
func EncodeToken(name string) string {
	if name == "" {
		return SubstrateToken
	}
	if ValidToken(name) && name != SubstrateToken {
		return name
	}
	return "~" + base64.RawURLEncoding.EncodeToString([]byte(name))
}

// DecodeToken reverses EncodeToken.
func DecodeToken(tok string) (string, error) {
	if tok == SubstrateToken {
		return "", nil
	}
	if !strings.HasPrefix(tok, "~") {
		if !ValidToken(tok) {
			return "", fmt.Errorf("invalid subject token %q", tok)
		}
		return tok, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok[1:])
	if err != nil {
		return "", fmt.Errorf("invalid encoded token %q: %w", tok, err)
	}
	return string(b), nil
}

// RequestSubject is the subject of a request: with host == "" any worker
// serving driver answers, otherwise only that host's.
func RequestSubject(driver, host string, op Op) string {
	if host == "" {
		return SubjectRoot + "." + driver + "." + string(op)
	}
	return SubjectRoot + "." + driver + "." + host + "." + string(op)
}

// EventSubject is the subject an event is stored under.
func EventSubject(driver, host, instance, typ string) string {
	return SubjectRoot + "." + EventsToken + "." + driver + "." + host + "." + EncodeToken(instance) + "." + typ
}

// EventFilter builds a subject filter over events; empty parts match anything.
func EventFilter(driver, host, instance, typ string) string {
	w := func(s string) string {
		if s == "" {
			return "*"
		}
		return s
	}
	inst := "*"
	if instance != "" {
		inst = EncodeToken(instance)
	}
	return SubjectRoot + "." + EventsToken + "." + w(driver) + "." + w(host) + "." + inst + "." + w(typ)
}

// MetricsSubject is the subject a metrics sample is stored under.
func MetricsSubject(driver, host, instance string) string {
	return SubjectRoot + "." + MetricsToken + "." + driver + "." + host + "." + EncodeToken(instance)
}
