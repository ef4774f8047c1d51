package manager

import (
	"fmt"
	"math"
	"net/netip"
	"path"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/subbus/subbus/internal/drivers"
)

// Validation bounds. They are generous for real use and small enough that
// a hostile request cannot make a driver allocate without bound.
const (
	MaxTemplateBytes = 256 << 10 // all strings of a template together
	MaxImageLen      = 1024
	MaxArgs          = 1024
	MaxEnv           = 1024
	MaxEnvKeyLen     = 256
	MaxVolumes       = 64
	MaxNetworks      = 16
	MaxDNSServers    = 8
	MaxMetadata      = 64
	MaxMetaKeyLen    = 128
	MaxMetaValueLen  = 4096
	MaxPathLen       = 4096
	MaxUserLen       = 256
	MaxStdinBytes    = 16 << 20

	MaxCPUCores    = 1024
	MaxMemoryMB    = 16 << 20 // 16 TiB
	MaxDiskGB      = 1 << 20  // 1 PiB
	MaxNetworkMbps = 1 << 20  // ~1 Tbit/s
	MaxPIDs        = 1 << 22  // Linux pid_max ceiling
)

// envKeyPattern is what a portable environment variable name looks like.
var envKeyPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func invalid(field, format string, args ...any) error {
	return drivers.Errorf(drivers.InvalidArgument, "%s: %s", field, fmt.Sprintf(format, args...))
}

// hasControl reports whether s has a control character (including NUL,
// newline and tab) or is not valid UTF-8.
func hasControl(s string) bool {
	if !utf8.ValidString(s) {
		return true
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return true
		}
	}
	return false
}

// printable reports whether s is valid UTF-8 made only of printable
// characters (spaces allowed).
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// ValidateTemplate checks a template field by field, before any driver
// sees it. The error is InvalidArgument naming the first bad field, e.g.
// `template.environment["1X"]`.
func ValidateTemplate(t drivers.InstanceTemplate) error {
	if err := drivers.ValidateName("template.name", t.Name); err != nil {
		return err
	}
	size := len(t.Name) + len(t.BaseImage) + len(t.WorkDir) + len(t.User)
	switch {
	case t.BaseImage == "" && len(t.Command) == 0:
		return invalid("template.base_image", "is required (or, on drivers whose image is the executable, a command)")
	case len(t.BaseImage) > MaxImageLen:
		return invalid("template.base_image", "longer than %d bytes", MaxImageLen)
	case hasControl(t.BaseImage):
		return invalid("template.base_image", "contains control characters")
	case strings.TrimSpace(t.BaseImage) != t.BaseImage:
		return invalid("template.base_image", "has leading or trailing whitespace")
	}
	if err := validateArgv("template.command", t.Command, false); err != nil {
		return err
	}
	for _, a := range t.Command {
		size += len(a)
	}
	if t.WorkDir != "" {
		if err := validateAbsPath("template.workdir", t.WorkDir); err != nil {
			return err
		}
	}
	if len(t.User) > MaxUserLen || hasControl(t.User) {
		return invalid("template.user", "must be at most %d bytes without control characters", MaxUserLen)
	}
	if err := validateLimits("template.resources", t.Resources); err != nil {
		return err
	}
	if len(t.Networks) > MaxNetworks {
		return invalid("template.networks", "more than %d networks", MaxNetworks)
	}
	seen := map[string]bool{}
	for i, n := range t.Networks {
		f := fmt.Sprintf("template.networks[%d]", i)
		if err := validateNetworkConfig(f, n); err != nil {
			return err
		}
		if seen[n.NetworkName] {
			return invalid(f+".network_name", "%q listed twice", n.NetworkName)
		}
		seen[n.NetworkName] = true
		size += len(n.NetworkName) + len(n.IPAddress) + len(n.Gateway)
	}
	if err := validateEnv("template.environment", t.Environment); err != nil {
		return err
	}
	for k, v := range t.Environment {
		size += len(k) + len(v)
	}
	if len(t.Volumes) > MaxVolumes {
		return invalid("template.volumes", "more than %d volumes", MaxVolumes)
	}
	targets := map[string]bool{}
	for i, v := range t.Volumes {
		f := fmt.Sprintf("template.volumes[%d]", i)
		switch {
		case v.Source == "":
			return invalid(f+".source", "is required")
		case len(v.Source) > MaxPathLen || hasControl(v.Source):
			return invalid(f+".source", "must be at most %d bytes without control characters", MaxPathLen)
		}
		if err := validateAbsPath(f+".target", v.Target); err != nil {
			return err
		}
		if path.Clean(v.Target) == "/" {
			return invalid(f+".target", "must not be the root directory")
		}
		if targets[path.Clean(v.Target)] {
			return invalid(f+".target", "%q mounted twice", v.Target)
		}
		targets[path.Clean(v.Target)] = true
		size += len(v.Source) + len(v.Target)
	}
	if err := validateMetadata("template.metadata", t.Metadata); err != nil {
		return err
	}
	for k, v := range t.Metadata {
		size += len(k) + len(v)
	}
	if size > MaxTemplateBytes {
		return invalid("template", "larger than %d bytes in total", MaxTemplateBytes)
	}
	return nil
}

// validateArgv checks a command line: bounded, no NUL bytes, a non-empty
// first element. required says whether an empty argv is an error.
func validateArgv(field string, argv []string, required bool) error {
	if len(argv) == 0 {
		if required {
			return invalid(field, "is required")
		}
		return nil
	}
	if len(argv) > MaxArgs {
		return invalid(field, "more than %d elements", MaxArgs)
	}
	if argv[0] == "" {
		return invalid(field+"[0]", "must not be empty")
	}
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return invalid(fmt.Sprintf("%s[%d]", field, i), "contains a NUL byte")
		}
		if !utf8.ValidString(a) {
			return invalid(fmt.Sprintf("%s[%d]", field, i), "is not valid UTF-8")
		}
	}
	return nil
}

func validateAbsPath(field, p string) error {
	switch {
	case p == "":
		return invalid(field, "is required")
	case len(p) > MaxPathLen:
		return invalid(field, "longer than %d bytes", MaxPathLen)
	case hasControl(p):
		return invalid(field, "contains control characters")
	case !path.IsAbs(p):
		return invalid(field, "%q is not an absolute path", p)
	}
	return nil
}

func validateEnv(field string, env map[string]string) error {
	if len(env) > MaxEnv {
		return invalid(field, "more than %d variables", MaxEnv)
	}
	for k, v := range env {
		f := fmt.Sprintf("%s[%q]", field, k)
		if len(k) > MaxEnvKeyLen || !envKeyPattern.MatchString(k) {
			return invalid(f, "name must match %s", envKeyPattern)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return invalid(f, "value contains a NUL byte")
		}
		if !utf8.ValidString(v) {
			return invalid(f, "value is not valid UTF-8")
		}
	}
	return nil
}

func validateMetadata(field string, md map[string]string) error {
	if len(md) > MaxMetadata {
		return invalid(field, "more than %d entries", MaxMetadata)
	}
	for k, v := range md {
		f := fmt.Sprintf("%s[%q]", field, k)
		switch {
		case k == "" || len(k) > MaxMetaKeyLen:
			return invalid(f, "key must be 1 to %d bytes", MaxMetaKeyLen)
		case !printable(k) || strings.ContainsAny(k, " "):
			return invalid(f, "key must be printable without spaces")
		case len(v) > MaxMetaValueLen:
			return invalid(f, "value longer than %d bytes", MaxMetaValueLen)
		case !printable(v):
			return invalid(f, "value must be printable")
		}
	}
	return nil
}

// validateLimits checks resource limits: finite, non-negative, bounded.
func validateLimits(field string, l drivers.ResourceLimits) error {
	floats := []struct {
		name string
		v    float64
		max  float64
	}{
		{"cpu_cores", l.CPUCores, MaxCPUCores},
		{"disk_gb", l.DiskGB, MaxDiskGB},
		{"network_mbps", l.NetworkMbps, MaxNetworkMbps},
	}
	for _, f := range floats {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 || f.v > f.max {
			return invalid(field+"."+f.name, "%v is out of range [0, %v]", f.v, f.max)
		}
	}
	if l.MemoryMB < 0 || l.MemoryMB > MaxMemoryMB {
		return invalid(field+".memory_mb", "%d is out of range [0, %d]", l.MemoryMB, MaxMemoryMB)
	}
	if l.PIDs < 0 || l.PIDs > MaxPIDs {
		return invalid(field+".pids", "%d is out of range [0, %d]", l.PIDs, MaxPIDs)
	}
	return nil
}

// validateNetworkConfig checks a network attachment: a valid network name
// and addresses that parse.
func validateNetworkConfig(field string, n drivers.NetworkConfig) error {
	if err := drivers.ValidateName(field+".network_name", n.NetworkName); err != nil {
		return err
	}
	if n.IPAddress != "" && !parsesAsIP(n.IPAddress, true) {
		return invalid(field+".ip_address", "%q is not an IP address", n.IPAddress)
	}
	if n.Gateway != "" && !parsesAsIP(n.Gateway, false) {
		return invalid(field+".gateway", "%q is not an IP address", n.Gateway)
	}
	if len(n.DNSServers) > MaxDNSServers {
		return invalid(field+".dns_servers", "more than %d servers", MaxDNSServers)
	}
	for i, s := range n.DNSServers {
		if !parsesAsIP(s, false) {
			return invalid(fmt.Sprintf("%s.dns_servers[%d]", field, i), "%q is not an IP address", s)
		}
	}
	return nil
}

// parsesAsIP accepts an IPv4/IPv6 address, and with prefixOK also an
// address with a prefix length ("10.0.0.5/24").
func parsesAsIP(s string, prefixOK bool) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	if prefixOK {
		if _, err := netip.ParsePrefix(s); err == nil {
			return true
		}
	}
	return false
}

// validateExec checks an exec request.
func validateExec(req drivers.ExecRequest) error {
	if err := validateArgv("exec.command", req.Command, true); err != nil {
		return err
	}
	if err := validateEnv("exec.env", req.Env); err != nil {
		return err
	}
	if req.WorkDir != "" {
		if err := validateAbsPath("exec.workdir", req.WorkDir); err != nil {
			return err
		}
	}
	if len(req.User) > MaxUserLen || hasControl(req.User) {
		return invalid("exec.user", "must be at most %d bytes without control characters", MaxUserLen)
	}
	if len(req.Stdin) > MaxStdinBytes {
		return invalid("exec.stdin", "larger than %d bytes", MaxStdinBytes)
	}
	return nil
}
