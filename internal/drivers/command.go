package drivers

import "path/filepath"

// SameExecutable checks a template of a driver whose image is the
// executable (process, supervisor) against the one rule of `create --image
// X -- ARGS` on every driver: the command is the whole command line,
// program first (docker run IMAGE CMD... style). base_image is then only
// what the instance reports as its image, and must name the executable
// command[0] names; imagePath and argv0Path are the two resolved (by the
// driver's own lookup; argv0Path "" when command[0] is not found). A contradiction such as base_image /bin/sh with
// command [sh -c ...] resolving elsewhere, or [-m http.server] written as
// arguments to base_image, is InvalidArgument.
func SameExecutable(t InstanceTemplate, imagePath, argv0Path string) error {
	if t.BaseImage == "" || len(t.Command) == 0 {
		return nil
	}
	if argv0Path != "" && real(imagePath) == real(argv0Path) {
		return nil
	}
	return Errorf(InvalidArgument, "base_image %q and command[0] %q name different executables: the command is the whole "+
		"command line, program first (--image X -- X ARG..., or just -- X ARG...)", t.BaseImage, t.Command[0])
}

// real resolves symbolic links (/bin/sh and /usr/bin/sh are one program).
func real(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return filepath.Clean(p)
}
