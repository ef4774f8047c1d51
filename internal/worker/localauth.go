package worker

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/nats-io/nkeys"
)

// localCredential returns the key pair whose public key the embedded
// server accepts, creating its seed at path on first start.
//
// The file holds an nkey user seed (natscli's --nkey format). It is mode
// 0600, owned by the worker's user; with group set it is 0640 and owned by
// that group, so its members can use subbus too (as members of the docker
// group use docker: being able to read the seed is being able to do
// everything the worker does). The mode and group are re-applied on every
// start, so revoking the group takes effect at the next start. An nkey
// rather than a token: the server keeps only the public key, and the seed
// never crosses the connection (the client signs the server's nonce).
func localCredential(path, group string) (nkeys.KeyPair, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("credential directory: %w", err)
	}
	seed, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		seed, err = createSeed(path)
	}
	if err != nil {
		return nil, fmt.Errorf("local credential %s: %w", path, err)
	}
	kp, err := nkeys.FromSeed(bytes.TrimSpace(seed))
	if err != nil {
		return nil, fmt.Errorf("local credential %s: not an nkey seed: %w", path, err)
	}
	if pub, err := kp.PublicKey(); err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return nil, fmt.Errorf("local credential %s: not a user nkey seed", path)
	}
	if err := protect(path, group); err != nil {
		return nil, fmt.Errorf("local credential %s: %w", path, err)
	}
	return kp, nil
}

// createSeed writes a fresh user seed to path atomically: written in full
// to a temporary file, then linked into place, so a concurrent worker
// either wins and the other reads its seed, or the reverse.
func createSeed(path string) ([]byte, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".client.nk-*")
	if err != nil {
		return nil, err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, err
	}
	data := append(seed, '\n')
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return os.ReadFile(path)
		}
		return nil, err
	}
	return data, nil
}

// protect sets the seed file's mode: 0600, or 0640 with the group.
func protect(path, group string) error {
	if group == "" {
		return os.Chmod(path, 0o600)
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return fmt.Errorf("nats.credential_group: %w", err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return fmt.Errorf("nats.credential_group %q: gid %q", group, g.Gid)
	}
	if err := os.Chown(path, -1, gid); err != nil {
		return err
	}
	return os.Chmod(path, 0o640)
}
