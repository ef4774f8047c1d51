package e2etest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/docker"
	"github.com/subbus/subbus/internal/drivers/libvirt"
	"github.com/subbus/subbus/internal/drivers/lxc"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/drivers/proxmox"
	"github.com/subbus/subbus/internal/drivers/supervisor"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/pvesim"
	"github.com/subbus/subbus/internal/testenv"
)

// serve starts a nats-server and a worker serving d (clitest.StartFleet:
// the test must not be parallel) and returns the server's URL.
func serve(t *testing.T, d drivers.Driver) string {
	t.Helper()
	host := clitest.Unique("ee-host")
	return clitest.StartFleet(t, host, time.Minute, manager.New(d, manager.Options{Host: host, CacheTTL: -1})).URL
}

// setupDir is where scripts/test-setup.sh keeps the daemons' test files.
func setupDir(sub string) string {
	base := os.Getenv("SUBBUS_SETUP_DIR")
	if base == "" {
		base = "/var/lib/subbus-test"
	}
	return filepath.Join(base, sub)
}

// sh runs a native command the test needs, failing t when it fails.
func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v %s", name, strings.Join(args, " "), err, out)
	}
}

// conformanceHello is what the test images log when they start
// (scripts/setup/lxd.sh, libvirt.sh), and what the session's command
// logs on the drivers that run one.
const conformanceHello = `^subbus-conformance $NAME$`

func processSubstrate(t *testing.T) *substrate {
	dir, err := os.MkdirTemp("", "e2e-process-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	d := process.New(process.Options{StateDir: dir, Cgroups: "auto", DefaultUser: "root", AllowRoot: true})
	return &substrate{driver: "process", url: serve(t, d), image: "/bin/sh", noImage: "/nonexistent/ee-program",
		command: true, env: true, hello: conformanceHello, grace: "5s", limit: time.Minute}
}

func supervisorSubstrate(t *testing.T) *substrate {
	o := supervisor.DefaultOptions()
	o.URL = os.Getenv("SUBBUS_SUPERVISOR_URL")
	if o.URL == "" {
		o.URL = "unix://" + filepath.Join(setupDir("supervisor"), "supervisor.sock")
	}
	o.ProgramsDir = filepath.Join(setupDir("supervisor"), "programs")
	o.LogDir = filepath.Join(setupDir("supervisor"), "log")
	o.PollInterval = config.Duration(250 * time.Millisecond)
	d, err := supervisor.New(o)
	if err != nil {
		t.Fatal(err)
	}
	probe, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	testenv.Require(t, "supervisord", d.Connect(probe), "bash scripts/setup/supervisor.sh")
	return &substrate{driver: "supervisor", url: serve(t, d), image: "/bin/sh", noImage: "/nonexistent/ee-program",
		command: true, env: true, hello: conformanceHello, grace: "5s", limit: time.Minute}
}

// dockerImage is the test image of scripts/setup/docker.sh.
const dockerImage = "subbus-test/busybox:latest"

func dockerSubstrate(t *testing.T) *substrate {
	probe, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := docker.New(docker.Options{})
	err := d.Connect(probe)
	if err == nil {
		err = exec.Command("docker", "image", "inspect", dockerImage).Run()
	}
	_ = d.Close()
	testenv.Require(t, "dockerd with the "+dockerImage+" image", err, "bash scripts/setup/docker.sh")
	// Internal networks (no NAT, no route out), removed after the
	// containers (cleanups run last-in first-out).
	nets := []string{clitest.Unique("ee-home"), clitest.Unique("ee-net")}
	for _, n := range nets {
		sh(t, "docker", "network", "create", "--internal", "--label", "io.subbus.test=true", n)
		t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", n).Run() })
	}
	return &substrate{driver: "docker", url: serve(t, docker.New(docker.Options{})), image: dockerImage, noImage: "subbus-test/ee-nope:1",
		command: true, env: true, hello: conformanceHello, homeNet: nets[0], net: nets[1], grace: "5s", limit: time.Minute,
		remove: func(names ...string) {
			for _, n := range names {
				_ = exec.Command("docker", "rm", "-f", n).Run()
				for _, label := range []string{"io.subbus.snapshot.instance=" + n, "io.subbus.clone.of=" + n} {
					out, _ := exec.Command("docker", "images", "-q", "--filter", "label="+label).Output()
					for _, id := range strings.Fields(string(out)) {
						_ = exec.Command("docker", "rmi", "-f", id).Run()
					}
				}
			}
		}}
}

// lxcImage is the test image of scripts/setup/lxd.sh.
const lxcImage = "subbus-busybox"

func lxcSubstrate(t *testing.T) *substrate {
	// A generous probe: a busy LXD under CI load is slow, not absent.
	probe, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d := lxc.New(lxc.DefaultOptions())
	err := d.Connect(probe)
	if err == nil {
		err = exec.Command("lxc", "image", "info", lxcImage).Run()
	}
	_ = d.Close()
	testenv.Require(t, "LXD with the "+lxcImage+" image", err, "bash scripts/setup/lxd.sh")
	net := clitest.Unique("ee") // LXD network names have at most 15 characters
	sh(t, "lxc", "network", "create", net, "ipv4.address=none", "ipv6.address=none", "ipv4.nat=false", "ipv6.nat=false")
	t.Cleanup(func() { _ = exec.Command("lxc", "network", "delete", net).Run() })
	return &substrate{driver: "lxc", url: serve(t, lxc.New(lxc.DefaultOptions())), image: lxcImage, noImage: "ee-nope",
		env: true, hello: conformanceHello, net: net, grace: "10s", limit: 2 * time.Minute,
		remove: func(names ...string) {
			for _, n := range names {
				_ = exec.Command("lxc", "delete", "--force", n).Run()
			}
		}}
}

// libvirtBase is the base volume of the tiny test guest
// (scripts/setup/libvirt.sh), booted from its kernel as the libvirt
// package's tests do: TCG guests are slow, so the session boots one guest.
const libvirtBase = "subbus-tiny-base.qcow2"

func libvirtSubstrate(t *testing.T) *substrate {
	o := libvirt.DefaultOptions()
	o.Kernel = filepath.Join(setupDir("libvirt"), "guest", "vmlinuz")
	o.Initrd = filepath.Join(setupDir("libvirt"), "guest", "initrd.gz")
	o.Cmdline = "console=ttyS0 quiet panic=-1"
	probe, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := libvirt.New(o)
	err := d.Connect(probe)
	if err == nil {
		_, err = os.Stat(o.Kernel)
	}
	_ = d.Close()
	testenv.Require(t, "libvirtd with the test guest", err, "bash scripts/setup/libvirt.sh")
	// An isolated network (no forward, no address): transient, gone
	// with its destroy.
	net := clitest.Unique("ee-net")
	xml := filepath.Join(t.TempDir(), "net.xml")
	bridge := "eebr" + strings.TrimPrefix(net, "ee-net-")[:6]
	if err := os.WriteFile(xml, []byte(fmt.Sprintf("<network><name>%s</name><bridge name='%s'/></network>", net, bridge)), 0o600); err != nil {
		t.Fatal(err)
	}
	sh(t, "virsh", "-c", o.URI, "net-create", xml)
	t.Cleanup(func() { _ = exec.Command("virsh", "-c", o.URI, "net-destroy", net).Run() })
	return &substrate{driver: "libvirt", url: serve(t, libvirt.New(o)), image: libvirtBase, noImage: "ee-nope.qcow2",
		env: true, hello: conformanceHello, net: net, grace: "60s", limit: 3 * time.Minute,
		remove: func(names ...string) {
			d := libvirt.New(o)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if d.Connect(ctx) != nil {
				return
			}
			defer d.Close()
			for _, n := range names {
				_, _ = d.Delete(ctx, n, drivers.DeleteOptions{Force: true})
			}
		}}
}

// proxmoxSubstrate is the PVE simulator (internal/pvesim) in-process,
// validating every request against PVE 9's API schema from the shared
// reference beside the repository. The session drives a QEMU VM from
// the simulator's seeded ISO; its logs are the guest's PVE task logs.
func proxmoxSubstrate(t *testing.T) *substrate {
	_, file, _, _ := runtime.Caller(0)
	schema, err := pvesim.LoadSchema(filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "reference", "pve", "apischema-pve9.json.gz"))
	testenv.Require(t, "PVE 9's API schema (the shared reference beside the repository)", err, "put the shared reference beside the repository")
	const token, secret = "root@pam!subbus", "0d9a3c1e-5b7f-4e2a-9c8d-1f2e3d4c5b6a"
	sim, err := pvesim.New(pvesim.Options{Schema: schema, Tokens: []string{token + "=" + secret}, AuthFailureDelay: -1,
		Delays: pvesim.DefaultDelays.Scale(0.2)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(sim.Handler())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	sum := sha256.Sum256(srv.Certificate().Raw)
	fp := make([]string, len(sum))
	for i, b := range sum {
		fp[i] = fmt.Sprintf("%02X", b)
	}
	o := proxmox.DefaultOptions()
	o.URL, o.TokenID, o.TokenSecret, o.Fingerprint = srv.URL, token, secret, strings.Join(fp, ":")
	o.TaskPollInterval = config.Duration(50 * time.Millisecond)
	o.EventPollInterval = config.Duration(200 * time.Millisecond)
	o.LogPollInterval = config.Duration(200 * time.Millisecond)
	// net is the internal bridge vmbr1: a guest gets its default NIC on vmbr0.
	return &substrate{driver: "proxmox", url: serve(t, proxmox.New(o)), image: "local:iso/debian-12.7.0-amd64-netinst.iso",
		noImage: "local:iso/ee-nope.iso", hello: `qmstart.*TASK OK`, net: "vmbr1", grace: "10s", limit: time.Minute}
}
