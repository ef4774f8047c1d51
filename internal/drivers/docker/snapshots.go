package docker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// Image repositories for snapshots, clones and restored containers.
const (
	SnapshotRepo = "subbus-snap"
	CloneRepo    = "subbus-clone"
	RestoreRepo  = "subbus-restore"
)

// repoName returns prefix/<instance> as a valid (lower-case) repository
// name; a name that had to be changed gets a hash suffix so two
// instances never share a repository.
func repoName(prefix, instance string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(instance) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	s := strings.TrimRight(b.String(), "-")
	if s != instance {
		h := sha256.Sum256([]byte(instance))
		s += "-" + hex.EncodeToString(h[:4])
	}
	return prefix + "/" + s
}

// SnapshotImage is the image a snapshot of instance is committed to.
func SnapshotImage(instance, snapshot string) string {
	return repoName(SnapshotRepo, instance) + ":" + snapshot
}

// commitLabels blanks the owner labels (a committed image must not make
// containers built from it by hand look managed) and sets extra.
func commitLabels(extra map[string]string) map[string]string {
	l := map[string]string{LabelSnapInstance: "", LabelSnapName: "", LabelCloneOf: ""}
	for _, k := range ownerLabels {
		l[k] = ""
	}
	for k, v := range extra {
		l[k] = v
	}
	return l
}

// CreateSnapshot implements drivers.Snapshotter: it commits the container
// (file system and configuration; not volumes, bind mounts or memory) to
// the image subbus-snap/<instance>:<snapshot>, labelled with both names.
func (d *Driver) CreateSnapshot(ctx context.Context, name, snapshot string) (drivers.Snapshot, error) {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return drivers.Snapshot{}, err
	}
	c, err := d.client()
	if err != nil {
		return drivers.Snapshot{}, err
	}
	ref := SnapshotImage(name, snapshot)
	if _, err := c.ImageInspect(ctx, ref); err == nil {
		return drivers.Snapshot{}, drivers.Errorf(drivers.AlreadyExists, "snapshot %q of %s already exists", snapshot, name)
	} else if classify(err) != drivers.NotFound {
		return drivers.Snapshot{}, fmt.Errorf("inspect image %s: %w", ref, err)
	}
	desc := fmt.Sprintf("subbus snapshot %s of %s", snapshot, name)
	if _, err := c.ContainerCommit(ctx, ins.ID, client.ContainerCommitOptions{
		Reference: ref,
		Comment:   desc,
		Config:    &container.Config{Labels: commitLabels(map[string]string{LabelSnapInstance: name, LabelSnapName: snapshot})},
	}); err != nil {
		return drivers.Snapshot{}, fmt.Errorf("commit %s: %w", name, err)
	}
	img, err := c.ImageInspect(ctx, ref)
	if err != nil {
		return drivers.Snapshot{}, fmt.Errorf("inspect snapshot %s: %w", ref, err)
	}
	s := drivers.Snapshot{Name: snapshot, Instance: name, Description: desc, SizeBytes: img.Size}
	s.Created, _ = time.Parse(time.RFC3339Nano, img.Created)
	return s, nil
}

// ListSnapshots implements drivers.Snapshotter, newest first.
func (d *Driver) ListSnapshots(ctx context.Context, name string) ([]drivers.Snapshot, error) {
	if _, err := d.inspect(ctx, name); err != nil {
		return nil, err
	}
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	res, err := c.ImageList(ctx, client.ImageListOptions{Filters: make(client.Filters).Add("label", LabelSnapInstance+"="+name)})
	if err != nil {
		return nil, fmt.Errorf("list snapshots of %s: %w", name, err)
	}
	out := []drivers.Snapshot{}
	for _, img := range res.Items {
		snap := img.Labels[LabelSnapName]
		if snap == "" || !hasTag(img.RepoTags, SnapshotImage(name, snap)) {
			continue
		}
		out = append(out, drivers.Snapshot{
			Name:        snap,
			Instance:    name,
			Created:     time.Unix(img.Created, 0).UTC(),
			Description: fmt.Sprintf("subbus snapshot %s of %s", snap, name),
			SizeBytes:   img.Size,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

func hasTag(tags []string, ref string) bool {
	for _, t := range tags {
		if t == ref {
			return true
		}
	}
	return false
}

// snapshotRef returns the image of an existing snapshot, or NotFound.
func (d *Driver) snapshotRef(ctx context.Context, name, snapshot string) (string, error) {
	c, err := d.client()
	if err != nil {
		return "", err
	}
	ref := SnapshotImage(name, snapshot)
	if _, err := c.ImageInspect(ctx, ref); err != nil {
		if classify(err) == drivers.NotFound {
			return "", fmt.Errorf("snapshot %q of %s not found: %w", snapshot, name, err)
		}
		return "", fmt.Errorf("inspect snapshot %s: %w", ref, err)
	}
	return ref, nil
}

// DeleteSnapshot implements drivers.Snapshotter. Like ListSnapshots it
// needs the instance (a missing one is NotFound: its snapshots went with
// it). It removes the snapshot's tag: the image goes too unless a
// container restored from it still holds its own tag (then the image goes
// with that container), and untagged parent layers are pruned, so no
// untagged image is left. A snapshot image a container made by hand runs
// from is Conflict.
func (d *Driver) DeleteSnapshot(ctx context.Context, name, snapshot string) error {
	if _, err := d.inspect(ctx, name); err != nil {
		return err
	}
	ref, err := d.snapshotRef(ctx, name, snapshot)
	if err != nil {
		return err
	}
	c, err := d.client()
	if err != nil {
		return err
	}
	if _, err := c.ImageRemove(ctx, ref, client.ImageRemoveOptions{PruneChildren: true}); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", ref, err)
	}
	return nil
}

// removeImageTag removes one tag (and the image with its untagged parents
// when it was the last tag and no container uses it); best effort,
// bounded, even when the caller's ctx has ended.
func (d *Driver) removeImageTag(ref string) {
	c, err := d.client()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	_, _ = c.ImageRemove(ctx, ref, client.ImageRemoveOptions{PruneChildren: true})
}

// removeOwnedImages removes the image tags a removed container owned: the
// image a clone was committed to, the own tag of a restored container.
func (d *Driver) removeOwnedImages(ins container.InspectResponse) {
	if ins.Config == nil || !isManaged(ins.Config.Labels) {
		return
	}
	for _, l := range []string{LabelCloneImage, LabelOwnImage} {
		if ref := ins.Config.Labels[l]; ref != "" {
			d.removeImageTag(ref)
		}
	}
}

// removeSnapshotImages removes the snapshots of a deleted instance (the
// tags subbus-snap/<instance>:<snapshot> of images labelled with its
// name); best effort: one a hand-made container runs from stays (docker
// refuses to untag it, and forcing would leave an untagged image), and
// health reports it.
func (d *Driver) removeSnapshotImages(name string) {
	c, err := d.client()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	res, err := c.ImageList(ctx, client.ImageListOptions{Filters: make(client.Filters).Add("label", LabelSnapInstance+"="+name)})
	if err != nil {
		return
	}
	for _, img := range res.Items {
		if snap := img.Labels[LabelSnapName]; snap != "" && hasTag(img.RepoTags, SnapshotImage(name, snap)) {
			_, _ = c.ImageRemove(ctx, SnapshotImage(name, snap), client.ImageRemoveOptions{PruneChildren: true})
		}
	}
}

// orphanSnapshots returns one health issue per snapshot image whose
// instance no longer exists (its container was removed outside subbus:
// a delete through subbus removes its snapshots). list is every container.
func (d *Driver) orphanSnapshots(ctx context.Context, list []drivers.Instance) ([]string, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	res, err := c.ImageList(ctx, client.ImageListOptions{Filters: make(client.Filters).Add("label", LabelSnapInstance)})
	if err != nil {
		return nil, fmt.Errorf("list snapshot images: %w", err)
	}
	exists := map[string]bool{}
	for _, i := range list {
		exists[i.Name] = true
	}
	var issues []string
	for _, img := range res.Items {
		inst, snap := img.Labels[LabelSnapInstance], img.Labels[LabelSnapName]
		if inst == "" || snap == "" || exists[inst] || !hasTag(img.RepoTags, SnapshotImage(inst, snap)) {
			continue
		}
		issues = append(issues, fmt.Sprintf("snapshot image %s: instance %s no longer exists (removed outside subbus); docker rmi it if it is not needed",
			SnapshotImage(inst, snap), inst))
	}
	sort.Strings(issues)
	return issues, nil
}

// RestoreSnapshot implements drivers.Snapshotter: the container is
// recreated from the snapshot image with its configuration as it is now
// (templateOf: current limits and networks with their static addresses,
// the creation template's image, command, environment, labels), under the
// same name, and started if it was running. The old container is kept
// (renamed aside) until the new one exists, and put back if recreating
// fails. The new container runs from its own tag of the snapshot image
// (LabelOwnImage), removed with it.
func (d *Driver) RestoreSnapshot(ctx context.Context, name, snapshot string) error {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return err
	}
	ref, err := d.snapshotRef(ctx, name, snapshot)
	if err != nil {
		return err
	}
	c, err := d.client()
	if err != nil {
		return err
	}
	t := templateOf(ins)
	// Checked before anything changes: a network removed since (or an
	// address no longer in its subnet) fails here, not half-way.
	if err := d.checkNetworks(ctx, t.Networks); err != nil {
		return fmt.Errorf("restore %s: %w", name, err)
	}
	own := repoName(RestoreRepo, name) + ":" + snapshot + "-" + randHex(4)
	if _, err := c.ImageTag(ctx, client.ImageTagOptions{Source: ref, Target: own}); err != nil {
		return fmt.Errorf("restore %s: tag %s: %w", name, own, err)
	}
	wasRunning := ins.State != nil && ins.State.Running
	if wasRunning {
		if _, err := d.Stop(ctx, name, drivers.StopOptions{Timeout: 10 * time.Second}); err != nil {
			d.removeImageTag(own)
			return err
		}
	}
	aside := restoreAside(name)
	if _, err := c.ContainerRename(ctx, ins.ID, client.ContainerRenameOptions{NewName: aside}); err != nil {
		d.removeImageTag(own)
		return fmt.Errorf("restore %s: rename the old container: %w", name, err)
	}
	_, err = d.createFrom(ctx, t, own, map[string]string{LabelRestoredFrom: snapshot, LabelOwnImage: own})
	if err != nil {
		// Put the old container back as it was.
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		_, _ = c.ContainerRename(bg, ins.ID, client.ContainerRenameOptions{NewName: name})
		if wasRunning {
			_, _ = c.ContainerStart(bg, ins.ID, client.ContainerStartOptions{})
		}
		d.removeImageTag(own)
		return fmt.Errorf("restore %s from %s: %w", name, snapshot, err)
	}
	if _, err := c.ContainerRemove(ctx, ins.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
		return fmt.Errorf("restore %s: remove the old container %s: %w", name, aside, err)
	}
	d.stats.forget(ins.ID)
	d.removeOwnedImages(ins)
	if wasRunning {
		if _, err := d.Start(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

// restoreAsideInfix marks the temporary name of a container being
// replaced by a restore; the event feed drops events of such names.
const restoreAsideInfix = "-subbus-restore-"

func restoreAside(name string) string { return name + restoreAsideInfix + randHex(4) }

// isRestoreAside reports whether name is a temporary restore name
// (<name>-subbus-restore-<8 hex digits>).
func isRestoreAside(name string) bool {
	i := strings.LastIndex(name, restoreAsideInfix)
	if i <= 0 {
		return false
	}
	suffix := name[i+len(restoreAsideInfix):]
	if len(suffix) != 8 {
		return false
	}
	_, err := hex.DecodeString(suffix)
	return err == nil
}

// Clone implements drivers.Cloner: the source is committed to
// subbus-clone/<target>:latest and a container is created from that image
// under the new name with the source's configuration as it is now
// (templateOf), except static addresses, which two containers cannot
// share: the clone is on the same networks with addresses of its own.
// The image is removed with the clone.
func (d *Driver) Clone(ctx context.Context, source, target string) (drivers.Instance, error) {
	src, err := d.inspect(ctx, source)
	if err != nil {
		return drivers.Instance{}, err
	}
	if _, err := d.inspect(ctx, target); err == nil {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "clone %s: a container %q already exists", source, target)
	} else if classify(err) != drivers.NotFound {
		return drivers.Instance{}, err
	}
	c, err := d.client()
	if err != nil {
		return drivers.Instance{}, err
	}
	t := templateOf(src)
	t.Name = target
	for i := range t.Networks {
		t.Networks[i].IPAddress = ""
	}
	if err := d.checkNetworks(ctx, t.Networks); err != nil {
		return drivers.Instance{}, fmt.Errorf("clone %s: %w", source, err)
	}
	ref := repoName(CloneRepo, target) + ":latest"
	// A tag left by a clone removed outside subbus would be moved by the
	// commit, leaving its image untagged: remove it first.
	d.removeImageTag(ref)
	if _, err := c.ContainerCommit(ctx, src.ID, client.ContainerCommitOptions{
		Reference: ref,
		Comment:   fmt.Sprintf("subbus clone of %s as %s", source, target),
		Config:    &container.Config{Labels: commitLabels(map[string]string{LabelCloneOf: source})},
	}); err != nil {
		return drivers.Instance{}, fmt.Errorf("clone %s: commit: %w", source, err)
	}
	inst, err := d.createFrom(ctx, t, ref, map[string]string{LabelCloneImage: ref})
	if err != nil {
		d.removeImageTag(ref)
		return drivers.Instance{}, err
	}
	return inst, nil
}

// templateOf returns the configuration to recreate a container with, as
// it is now: the creation template of a managed container (image,
// command, environment, working directory, user, volumes, metadata: what
// Docker cannot change after create) with the current limits and
// networks (limits set and networks attached since), else all of it read
// from inspect.
func templateOf(ins container.InspectResponse) drivers.InstanceTemplate {
	name := containerName(ins.Name)
	if ins.Config != nil {
		if t, ok := templateFromLabels(ins.Config.Labels); ok {
			t.Name = name
			if ins.HostConfig != nil {
				t.Resources = limitsOf(ins.HostConfig.Resources)
			}
			if ins.NetworkSettings != nil {
				t.Networks = currentNetworks(t.Networks, ins.NetworkSettings.Networks)
			}
			return t
		}
	}
	t := drivers.InstanceTemplate{Name: name}
	if ins.Config != nil {
		t.BaseImage = ins.Config.Image
		t.Command = ins.Config.Cmd
		t.WorkDir = ins.Config.WorkingDir
		t.User = ins.Config.User
		t.Metadata = metadataFromLabels(ins.Config.Labels)
		for _, e := range ins.Config.Env {
			k, v, _ := strings.Cut(e, "=")
			if t.Environment == nil {
				t.Environment = map[string]string{}
			}
			t.Environment[k] = v
		}
	}
	if ins.HostConfig != nil {
		t.Resources = limitsOf(ins.HostConfig.Resources)
		for _, b := range ins.HostConfig.Binds {
			parts := strings.Split(b, ":")
			if len(parts) < 2 {
				continue
			}
			v := drivers.Volume{Source: parts[0], Target: parts[1]}
			if len(parts) > 2 && strings.Contains(parts[2], "ro") {
				v.ReadOnly = true
			}
			t.Volumes = append(t.Volumes, v)
		}
	}
	if ins.NetworkSettings != nil {
		t.Networks = currentNetworks(nil, ins.NetworkSettings.Networks)
	}
	return t
}

// currentNetworks returns the networks a container is on now, each with
// the static address it was given (not an address the daemon chose):
// those of the creation template first, in its order and with its
// gateway and DNS servers, then the ones attached since, by name.
func currentNetworks(created []drivers.NetworkConfig, eps map[string]*network.EndpointSettings) []drivers.NetworkConfig {
	var out []drivers.NetworkConfig
	static := func(n drivers.NetworkConfig, ep *network.EndpointSettings) drivers.NetworkConfig {
		n.IPAddress = ""
		if ep != nil && ep.IPAMConfig != nil {
			if a := ep.IPAMConfig.IPv4Address; a.IsValid() {
				n.IPAddress = a.String()
			} else if a := ep.IPAMConfig.IPv6Address; a.IsValid() {
				n.IPAddress = a.String()
			}
		}
		return n
	}
	seen := map[string]bool{}
	for _, n := range created {
		if ep, ok := eps[n.NetworkName]; ok && !seen[n.NetworkName] {
			seen[n.NetworkName] = true
			out = append(out, static(n, ep))
		}
	}
	names := make([]string, 0, len(eps))
	for k := range eps {
		if !seen[k] {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		out = append(out, static(drivers.NetworkConfig{NetworkName: k}, eps[k]))
	}
	return out
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
