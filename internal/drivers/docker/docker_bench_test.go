package docker_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/docker"
	"github.com/subbus/subbus/internal/testenv"
)

// benchContainers is how many running containers the benchmarks sample.
const benchContainers = 20

// BenchmarkDocker compares the driver with the docker CLI on the same
// containers, in the same run:
//
//	Metrics20/driver-MetricsMany      cgroup stats of 20 containers (default source)
//	Metrics20/driver-MetricsMany-api-only  the same through the stats API only
//	Metrics20/docker-stats-no-stream  `docker stats --no-stream` of the same 20
//	List/driver                       Driver.List
//	List/subbus-cli-in-process        `subbus docker list` through a worker (cli.Run)
//	List/subbus-binary                the built subbus binary, exec'd like docker
//	List/docker-ps-a                  `docker ps -a`
//
// The comparisons are custom metrics of the docker CLI's sub-benchmarks,
// so they show in `make bench`'s table:
//
//	driver-x-faster  docker stats time / MetricsMany time (target >= 5)
//	api-x-faster     docker stats time / MetricsMany time, stats API only
//	bin/ps-ratio     subbus binary list time / docker ps -a time (target <= 1.5)
//
// Each sub-benchmark is bounded by -benchtime; the whole run by a
// 10-minute context. Run: go test -run '^$' -bench . ./internal/drivers/docker/
func BenchmarkDocker(b *testing.B) {
	d := docker.New(docker.Options{HostID: "bench"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	testenv.Require(b, "dockerd", d.Connect(ctx), "bash scripts/setup/docker.sh")
	defer d.Close()
	names := startBenchContainers(b, ctx, d, internalNetwork(b))

	res := map[string]float64{} // ns/op by sub-benchmark
	record := func(b *testing.B, key string) {
		res[key] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	}

	b.Run("Metrics20/driver-MetricsMany", func(b *testing.B) {
		for range b.N {
			for _, r := range d.MetricsMany(ctx, names) {
				if r.Err != nil {
					b.Fatal(r.Err)
				}
			}
		}
		record(b, "metrics-driver")
	})
	api := docker.New(docker.Options{HostID: "bench", StatsSource: docker.StatsAPI})
	if err := api.Connect(ctx); err != nil {
		b.Fatal(err)
	}
	defer api.Close()
	b.Run("Metrics20/driver-MetricsMany-api-only", func(b *testing.B) {
		for range b.N {
			for _, r := range api.MetricsMany(ctx, names) {
				if r.Err != nil {
					b.Fatal(r.Err)
				}
			}
		}
		record(b, "metrics-api")
	})
	b.Run("Metrics20/docker-stats-no-stream", func(b *testing.B) {
		args := append([]string{"stats", "--no-stream"}, names...)
		for range b.N {
			if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
				b.Fatalf("docker stats: %v %s", err, out)
			}
		}
		record(b, "metrics-docker")
		if res["metrics-driver"] > 0 && res["metrics-api"] > 0 {
			b.ReportMetric(res["metrics-docker"]/res["metrics-driver"], "driver-x-faster")
			b.ReportMetric(res["metrics-docker"]/res["metrics-api"], "api-x-faster")
		}
	})

	b.Run("List/driver", func(b *testing.B) {
		for range b.N {
			if _, err := d.List(ctx); err != nil {
				b.Fatal(err)
			}
		}
		record(b, "list-driver")
	})
	f := startFleet(b)
	b.Run("List/subbus-cli-in-process", func(b *testing.B) {
		for range b.N {
			out, errs, st := f.subbus("docker", "list")
			if st != 0 || !strings.Contains(out, names[0]) {
				b.Fatalf("subbus docker list: %d %s", st, errs)
			}
		}
		record(b, "list-cli")
	})
	bin := clitest.Build(b, "./cmd/subbus")
	b.Run("List/subbus-binary", func(b *testing.B) {
		clitest.BenchBinary(b, bin, f.url, names[0], "docker", "list")
		record(b, "list-binary")
	})
	b.Run("List/docker-ps-a", func(b *testing.B) {
		for range b.N {
			if out, err := exec.Command("docker", "ps", "-a").CombinedOutput(); err != nil {
				b.Fatalf("docker ps -a: %v %s", err, out)
			}
		}
		record(b, "list-docker")
		if res["list-binary"] > 0 {
			b.ReportMetric(res["list-binary"]/res["list-docker"], "bin/ps-ratio")
		}
	})
	b.Logf("machine: %d CPUs, %s memory, docker %s", runtime.NumCPU(), memTotal(), dockerVersion())
}

// memTotal is MemTotal from /proc/meminfo.
func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// startBenchContainers creates and starts benchContainers idle
// containers on network, removed when the benchmark ends.
func startBenchContainers(b *testing.B, ctx context.Context, d *docker.Driver, network string) []string {
	b.Helper()
	prefix := "sbdk-bench-" + randHex()
	names := make([]string, benchContainers)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%02d", prefix, i)
	}
	b.Cleanup(func() {
		args := append([]string{"rm", "-f"}, names...)
		_ = exec.Command("docker", args...).Run()
	})
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	sem := make(chan struct{}, 4)
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			t := drivers.InstanceTemplate{Name: n, BaseImage: e2eImage,
				Command:  []string{"sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"},
				Networks: []drivers.NetworkConfig{{NetworkName: network}}}
			if _, err := d.Create(ctx, t); err != nil {
				errs <- err
				return
			}
			if _, err := d.Start(ctx, n); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return names
}

func dockerVersion() string {
	out, err := exec.Command("docker", "version", "-f", "{{.Server.Version}} (API {{.Server.APIVersion}})").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
