package libvirt_test

import (
	"context"
	"fmt"
	"os/exec"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/libvirt"
	"github.com/subbus/subbus/internal/testenv"
)

// benchDomains is how many running domains the benchmarks sample.
const benchDomains = 5

// BenchmarkLibvirt compares the driver with virsh on the same domains, in
// the same run:
//
//	Metrics5/driver-MetricsBatch  one ConnectGetAllDomainStats for 5 running domains
//	Metrics5/virsh-domstats       `virsh domstats` of the same 5
//	List/driver                   Driver.List
//	List/subbus-binary            `subbus libvirt list` through a worker (built binary)
//	List/virsh-list-all           `virsh list --all`
//
// Custom metrics (shown in make bench's table):
//
//	driver-x-faster  virsh domstats time / MetricsBatch time
//	bin/virsh-ratio  subbus binary list time / virsh list --all time
//
// The running domains boot no OS (no kernel, an empty disk: SeaBIOS finds
// nothing to boot and idles), so they cost almost no CPU. Run:
// go test -run '^$' -bench . ./internal/drivers/libvirt/
func BenchmarkLibvirt(b *testing.B) {
	o := e2eOptions()
	d := libvirt.New(o)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	testenv.Require(b, "libvirtd", d.Connect(ctx), "bash scripts/setup/libvirt.sh")
	b.Cleanup(func() { _ = d.Close() }) // after the domains' cleanup (cleanups run last-in first-out)
	names := startBenchDomains(b, ctx, d)

	res := map[string]float64{}
	record := func(b *testing.B, key string) { res[key] = float64(b.Elapsed().Nanoseconds()) / float64(b.N) }

	b.Run(fmt.Sprintf("Metrics%d/driver-MetricsBatch", benchDomains), func(b *testing.B) {
		for range b.N {
			got, failed, err := d.MetricsBatch(ctx, names)
			if err != nil || len(failed) > 0 || len(got) != len(names) {
				b.Fatalf("MetricsBatch: %v %v", err, failed)
			}
		}
		record(b, "metrics-driver")
	})
	b.Run(fmt.Sprintf("Metrics%d/virsh-domstats", benchDomains), func(b *testing.B) {
		args := append([]string{"-c", o.URI, "domstats"}, names...)
		for range b.N {
			if out, err := exec.Command("virsh", args...).CombinedOutput(); err != nil {
				b.Fatalf("virsh domstats: %v %s", err, out)
			}
		}
		record(b, "metrics-virsh")
		if res["metrics-driver"] > 0 {
			b.ReportMetric(res["metrics-virsh"]/res["metrics-driver"], "driver-x-faster")
		}
	})
	b.Run("List/driver", func(b *testing.B) {
		for range b.N {
			if _, err := d.List(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	f := startFleet(b)
	bin := clitest.Build(b, "./cmd/subbus")
	b.Run("List/subbus-binary", func(b *testing.B) {
		clitest.BenchBinary(b, bin, f.URL, names[0], "libvirt", "list")
		record(b, "list-binary")
	})
	b.Run("List/virsh-list-all", func(b *testing.B) {
		for range b.N {
			if out, err := exec.Command("virsh", "-c", o.URI, "list", "--all").CombinedOutput(); err != nil {
				b.Fatalf("virsh list --all: %v %s", err, out)
			}
		}
		record(b, "list-virsh")
		if res["list-binary"] > 0 {
			b.ReportMetric(res["list-binary"]/res["list-virsh"], "bin/virsh-ratio")
		}
	})
}

// startBenchDomains creates and starts benchDomains domains that boot no
// OS, removed when the benchmark ends.
func startBenchDomains(b *testing.B, ctx context.Context, d *libvirt.Driver) []string {
	b.Helper()
	prefix := clitest.Unique("lv-bench")
	names := make([]string, benchDomains)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	b.Cleanup(func() {
		for _, n := range names {
			_, _ = d.Delete(context.Background(), n, drivers.DeleteOptions{Force: true})
		}
	})
	for _, n := range names {
		t := drivers.InstanceTemplate{Name: n, BaseImage: e2eBase, Resources: drivers.ResourceLimits{MemoryMB: 64},
			Metadata: map[string]string{libvirt.MetaKernel: "", libvirt.MetaInitrd: ""}}
		if _, err := d.Create(ctx, t); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Start(ctx, n); err != nil {
			b.Fatal(err)
		}
	}
	return names
}
