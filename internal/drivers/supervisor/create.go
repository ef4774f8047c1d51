package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// programFile is the path of the file this driver writes for name.
func (d *Driver) programFile(name string) string {
	return filepath.Join(d.opts.ProgramsDir, d.opts.FilePrefix+name+".conf")
}

// readSpec reads the spec of a program this driver created. ok is false
// when there is no such file or it lacks the marker.
func (d *Driver) readSpec(name string) (spec, bool, error) {
	if strings.ContainsAny(name, "/:") {
		return spec{}, false, nil
	}
	data, err := os.ReadFile(d.programFile(name))
	if errors.Is(err, fs.ErrNotExist) {
		return spec{}, false, nil
	}
	if err != nil {
		return spec{}, false, err
	}
	return parseSpec(data)
}

// writeExclusive writes data to path atomically and only if path does not
// exist: a temporary file (not matching *.conf, so a concurrent reload
// never reads it half-written) is hard-linked into place.
func writeExclusive(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return err
	}
	syncDir(filepath.Dir(path)) // the file is the durable record of the program
	return nil
}

// syncDir fsyncs a directory, making a link, rename or removal in it durable.
func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync()
		_ = f.Close()
	}
}

// exists reports whether supervisord knows a program or group called name,
// running or only configured.
func (d *Driver) exists(ctx context.Context, name string) (bool, error) {
	_, err := d.rpc.getProcessInfo(ctx, name)
	if err == nil {
		return true, nil
	}
	if !isFault(err, faultBadName) {
		return false, err
	}
	cs, err := d.rpc.getAllConfigInfo(ctx)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(cs, func(c configInfo) bool { return c.Name == name || c.Group == name }), nil
}

// Create writes the program file, has supervisord re-read its
// configuration and adds the program (stopped: autostart=false). On any
// failure the file is removed again and the configuration re-read.
func (d *Driver) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	data, err := renderProgram(t, time.Now(), d.settings())
	if err != nil {
		return drivers.Instance{}, err
	}
	// supervisord looks the command up only at start; say now that it is missing.
	if t.BaseImage != "" && len(t.Command) > 0 {
		image, err := exec.LookPath(t.BaseImage)
		if err != nil {
			return drivers.Instance{}, fmt.Errorf("base_image %q: not found on this host: %w", t.BaseImage, err)
		}
		exe, _ := exec.LookPath(t.Command[0]) // not found: meant as arguments to base_image
		if err := drivers.SameExecutable(t, image, exe); err != nil {
			return drivers.Instance{}, err
		}
	}
	if _, err := exec.LookPath(argv(t)[0]); err != nil {
		return drivers.Instance{}, fmt.Errorf("command %q: not found on this host: %w", argv(t)[0], err)
	}
	taken, err := d.exists(ctx, t.Name)
	if err != nil {
		return drivers.Instance{}, err
	}
	if taken {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "supervisord already has a program or group %q", t.Name)
	}
	path := d.programFile(t.Name)
	if err := writeExclusive(path, data); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return drivers.Instance{}, fmt.Errorf("program file %s already exists: %w", path, err)
		}
		return drivers.Instance{}, fmt.Errorf("writing %s: %w", path, err)
	}
	undo := func() {
		os.Remove(path)
		// A fresh context: the caller's may be what just ended.
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = d.rpc.call(c, "supervisor.removeProcessGroup", nil, t.Name)
		_, _, _, _ = d.rpc.reloadConfig(c)
	}
	added, _, _, err := d.rpc.reloadConfig(ctx)
	if err != nil {
		undo()
		var f *faultError
		if errors.As(err, &f) && f.code == faultCantReread {
			if strings.Contains(f.msg, path) {
				return drivers.Instance{}, classifyAs(drivers.InvalidArgument, err, "supervisord rejected the program definition")
			}
			return drivers.Instance{}, classifyAs(drivers.Internal, err, "supervisord cannot re-read its configuration (not because of this program)")
		}
		return drivers.Instance{}, err
	}
	if !slices.Contains(added, t.Name) {
		undo()
		return drivers.Instance{}, drivers.Errorf(drivers.Internal,
			"supervisord did not pick up %s: is %s/*.conf in its [include] files?", path, d.opts.ProgramsDir)
	}
	if err := d.rpc.call(ctx, "supervisor.addProcessGroup", nil, t.Name); err != nil {
		undo()
		return drivers.Instance{}, err
	}
	return d.Get(ctx, t.Name)
}

func classifyAs(code drivers.Code, err error, msg string) error {
	return &drivers.Error{Code: code, Message: msg, Err: err}
}

func (d *Driver) settings() programSettings {
	return programSettings{
		LogDir:       d.opts.LogDir,
		Autorestart:  d.opts.Autorestart,
		StopSignal:   d.opts.StopSignal,
		StopWaitSecs: d.opts.StopWaitSecs,
		StartSecs:    d.opts.StartSecs,
		StartRetries: d.opts.StartRetries,
	}
}

// Delete stops the program (killing it with Force), removes its group,
// its file and its logs, and re-reads the configuration. Programs this
// driver did not create are Conflict.
func (d *Driver) Delete(ctx context.Context, name string, opts drivers.DeleteOptions) (bool, error) {
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	_, managed, specErr := d.readSpec(name)
	p, err := d.rpc.getProcessInfo(ctx, name)
	switch {
	case isFault(err, faultBadName):
		if managed || specErr != nil {
			// A file of ours that supervisord has not loaded: remove it.
			if err := d.removeFiles(name); err != nil {
				return false, err
			}
			_, _, _, err := d.rpc.reloadConfig(ctx)
			return true, err
		}
		if opts.Force {
			return false, nil
		}
		return false, drivers.Errorf(drivers.NotFound, "no program %q", name)
	case err != nil:
		return false, err
	}
	if !managed {
		if specErr != nil {
			return false, fmt.Errorf("reading %s: %w", d.programFile(name), specErr)
		}
		return false, drivers.Errorf(drivers.Conflict,
			"program %q was not created by subbus (it is defined in supervisord's own configuration, not by a subbus file in %s); delete it there", name, d.opts.ProgramsDir)
	}
	if stoppable(p.StateName) || p.StateName == "STOPPING" {
		if !opts.Force {
			return false, drivers.Errorf(drivers.Conflict, "program %q is %s; stop it first or delete with force", name, p.StateName)
		}
		if _, err := d.Stop(ctx, name, drivers.StopOptions{Force: true}); err != nil {
			return false, err
		}
	}
	// Intent before effect: the file becomes <file>.deleting (durably)
	// before the group goes, so a crash in between is finished by the next
	// Connect instead of leaving a program nobody can delete.
	if err := os.Rename(d.programFile(name), d.deletingFile(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	syncDir(d.opts.ProgramsDir)
	if err := d.rpc.call(ctx, "supervisor.removeProcessGroup", nil, name); err != nil && !isFault(err, faultBadName) {
		return false, err
	}
	if err := d.removeFiles(name); err != nil {
		return false, err
	}
	d.mu.Lock()
	delete(d.samples, name)
	d.mu.Unlock()
	if _, _, _, err := d.rpc.reloadConfig(ctx); err != nil {
		return true, err
	}
	return true, nil
}

// removeFiles removes the program file and the logs of a program this
// driver created.
func (d *Driver) removeFiles(name string) error {
	if err := os.Remove(d.programFile(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := d.removeDeleting(name); err != nil {
		return err
	}
	out, errf := logFiles(d.opts.LogDir, name)
	for _, f := range []string{out, errf} {
		// supervisord keeps rotated copies as <file>.1 … .N.
		matches, _ := filepath.Glob(f + "*")
		for _, m := range matches {
			_ = os.Remove(m)
		}
	}
	return nil
}

// Clone writes a copy of a program's definition under a new name (stopped).
// Only programs this driver created can be cloned: the definitions of
// others live in supervisord's own configuration, which is not ours to
// read back faithfully.
func (d *Driver) Clone(ctx context.Context, source, target string) (drivers.Instance, error) {
	if err := drivers.ValidateName("target", target); err != nil {
		return drivers.Instance{}, err
	}
	sp, managed, err := d.readSpec(source)
	if err != nil {
		return drivers.Instance{}, fmt.Errorf("reading %s: %w", d.programFile(source), err)
	}
	if !managed {
		c, cancel := d.ctx(ctx)
		defer cancel()
		ok, err := d.exists(c, source)
		if err != nil {
			return drivers.Instance{}, err
		}
		if !ok {
			return drivers.Instance{}, drivers.Errorf(drivers.NotFound, "no program %q", source)
		}
		return drivers.Instance{}, drivers.Errorf(drivers.Conflict,
			"program %q was not created by subbus, so its definition cannot be copied", source)
	}
	t := sp.Template
	t.Name = target
	return d.Create(ctx, t)
}
