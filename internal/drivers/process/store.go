package process

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// recordVersion is the version of the state file format.
const recordVersion = 1

// record is what the driver persists about one instance, as
// <state_dir>/instances/<name>/instance.json.
type record struct {
	Version  int                      `json:"version"`
	Name     string                   `json:"name"`
	ID       string                   `json:"id"`
	Template drivers.InstanceTemplate `json:"template"`
	Limits   drivers.ResourceLimits   `json:"limits,omitzero"`
	Created  time.Time                `json:"created"`
	State    drivers.State            `json:"state"`
	Native   string                   `json:"native_state,omitempty"`
	// Pid and StartTicks identify the running process: the pid together
	// with its start time (field 22 of /proc/<pid>/stat, clock ticks since
	// boot), so a reused pid is never taken for the instance.
	Pid        int       `json:"pid,omitempty"`
	StartTicks uint64    `json:"start_ticks,omitempty"`
	BootID     string    `json:"boot_id,omitempty"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	ExitedAt   time.Time `json:"exited_at,omitzero"`
	ExitCode   *int      `json:"exit_code,omitempty"`
	ExitSignal string    `json:"exit_signal,omitempty"`
	// Nonce is the marker nonce of the running process (see markEnv).
	Nonce string `json:"nonce,omitempty"`
	// Starting is the intent of a start not yet confirmed: written before
	// the process is spawned, cleared when its pid is recorded.
	Starting *startIntent `json:"starting,omitempty"`
}

func (d *Driver) instancesDir() string           { return filepath.Join(d.opts.StateDir, "instances") }
func (d *Driver) instanceDir(name string) string { return filepath.Join(d.instancesDir(), name) }
func (d *Driver) recordPath(name string) string {
	return filepath.Join(d.instanceDir(name), "instance.json")
}

// writeRecord persists r atomically: a temporary file in the same
// directory, fsync, rename over the old file, fsync of the directory.
func (d *Driver) writeRecord(r *record) error {
	dir := d.instanceDir(r.Name)
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		syncDir(d.instancesDir()) // the new directory's entry
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, "instance.json"), append(b, '\n'))
}

func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	fault("write.tmp")
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	syncDir(dir)
	return nil
}

// syncDir fsyncs a directory, making renames and removals in it durable.
func syncDir(dir string) {
	if df, err := os.Open(dir); err == nil {
		_ = df.Sync()
		_ = df.Close()
	}
}

// readRecords loads every state file. A file that does not parse is
// reported (by name) and skipped, never deleted.
func (d *Driver) readRecords() (map[string]*record, []string, error) {
	entries, err := os.ReadDir(d.instancesDir())
	if os.IsNotExist(err) {
		return map[string]*record{}, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	out := map[string]*record{}
	var bad []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if drivers.ValidateName("name", e.Name()) != nil {
			bad = append(bad, fmt.Sprintf("%s: not an instance name", e.Name()))
			continue
		}
		b, err := os.ReadFile(d.recordPath(e.Name()))
		if os.IsNotExist(err) {
			continue // left by an interrupted create or delete (cleanTemp removes it)
		}
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", e.Name(), err))
			continue
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.Name != e.Name() || r.Version != recordVersion {
			bad = append(bad, fmt.Sprintf("%s: unreadable state file (err %v, name %q, version %d)", e.Name(), err, r.Name, r.Version))
			continue
		}
		out[r.Name] = &r
	}
	return out, bad, nil
}
