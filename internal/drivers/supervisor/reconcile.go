package supervisor

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Intent before effect. The program file is the durable record of a
// program this driver manages, written (fsync'd, linked into place) before
// supervisord is told about it; a delete first renames the file to
// <file>.deleting (not *.conf, so supervisord never reads it) before it
// removes the group. A crash between the steps therefore leaves either a
// program file supervisord has not loaded (a create to finish) or a
// .deleting file (a delete to finish), and Connect settles both (reconcile),
// so no crash leaves a program that cannot be listed, created again or
// deleted. Leftover temporary files are removed too.

// deletingFile is the path a program file is renamed to while deleting.
func (d *Driver) deletingFile(name string) string { return d.programFile(name) + ".deleting" }

// reconcile runs once, on the first Connect.
func (d *Driver) reconcile(ctx context.Context) error {
	dir := d.opts.ProgramsDir
	tmps, _ := filepath.Glob(filepath.Join(dir, "."+d.opts.FilePrefix+"*.conf.tmp-*"))
	for _, p := range tmps {
		_ = os.Remove(p)
	}
	deleting, _ := filepath.Glob(filepath.Join(dir, d.opts.FilePrefix+"*.conf.deleting"))
	for _, p := range deleting {
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), d.opts.FilePrefix), ".conf.deleting")
		_ = d.rpc.call(ctx, "supervisor.stopProcessGroup", nil, name, true)
		if err := d.rpc.call(ctx, "supervisor.removeProcessGroup", nil, name); err != nil && !isFault(err, faultBadName) {
			return err
		}
		if err := d.removeFiles(name); err != nil {
			return err
		}
	}
	added, _, _, err := d.rpc.reloadConfig(ctx)
	if err != nil {
		return err
	}
	for _, name := range added {
		if _, ours, _ := d.readSpec(name); !ours {
			continue // an operator's own change: theirs to apply
		}
		if err := d.rpc.call(ctx, "supervisor.addProcessGroup", nil, name); err != nil && !isFault(err, faultAlreadyAdded) {
			return err
		}
	}
	return nil
}

// removeDeleting removes the .deleting file of name, if any.
func (d *Driver) removeDeleting(name string) error {
	if err := os.Remove(d.deletingFile(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
