// Package version is the one place subbus's version is set: the worker
// advertises it (micro discovery, heartbeats, /metrics) and the CLI prints
// it (`subbus version`, `subbus --version`), so the two always agree.
package version

import "runtime/debug"

// Version is the release, a SemVer string (micro discovery requires one).
// Set at build time with
// -ldflags "-X github.com/subbus/subbus/internal/version.Version=1.2.3".
var Version = "0.1.0"

// String is Version with the VCS revision the binary was built from
// (SemVer build metadata, "0.1.0+0123456789ab", "+dirty" when the tree
// had changes), read from the build information when the go command
// recorded it; Version alone otherwise.
func String() string {
	v := Version
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) >= 12 {
		v += "+" + rev[:12]
		if dirty {
			v += ".dirty"
		}
	}
	return v
}
