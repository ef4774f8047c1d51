package worker

import (
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/config"
)

func TestOptionsFromConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string // substring naming the bad key; "" = valid
		check   func(t *testing.T, o Options)
	}{
		{name: "empty gives defaults", yaml: "", check: func(t *testing.T, o Options) {
			if !o.EnableMetrics || o.MetricsInterval != DefaultMetricsInterval || !o.ManageStreams {
				t.Fatalf("defaults: %+v", o)
			}
		}},
		{name: "sections read", yaml: "global:\n  enable_metrics: false\n  metrics_interval: 3s\n  retry_attempts: 4\nworker:\n  drivers: [process]\n  manage_streams: false\nnats:\n  listen: 127.0.0.1:4333\n",
			check: func(t *testing.T, o Options) {
				if o.EnableMetrics || o.MetricsInterval != 3*time.Second || o.ManageStreams || o.Embedded.Listen != "127.0.0.1:4333" || len(o.Drivers) != 1 {
					t.Fatalf("options: %+v", o)
				}
			}},
		{name: "typo in global", yaml: "global:\n  enable_metric: true\n", wantErr: "enable_metric"},
		{name: "typo in nats", yaml: "nats:\n  lisen: x\n", wantErr: "lisen"},
		{name: "typo in worker", yaml: "worker:\n  drivres: [docker]\n", wantErr: "drivres"},
		{name: "wrong type in global", yaml: "global:\n  enable_events: sometimes\n", wantErr: "global"},
		{name: "bad duration", yaml: "global:\n  metrics_interval: often\n", wantErr: "global"},
		{name: "bad host", yaml: "worker:\n  host: a.b\n", wantErr: "host"},
		{name: "unknown section", yaml: "dokcer:\n  host: x\n", wantErr: "dokcer"},
		{name: "section of a driver being written", yaml: "proxmox:\n  anything: 1\n", check: func(t *testing.T, o Options) {}},
		{name: "pooled drivers absent: all pooled", yaml: "", check: func(t *testing.T, o Options) {
			if o.RestrictPooled {
				t.Fatal("restricted without worker.pooled_drivers")
			}
		}},
		{name: "pooled drivers empty: none pooled", yaml: "worker:\n  pooled_drivers: []\n", check: func(t *testing.T, o Options) {
			if !o.RestrictPooled || len(o.PooledDrivers) != 0 {
				t.Fatalf("options: %+v", o)
			}
		}},
		{name: "pooled drivers listed", yaml: "worker:\n  pooled_drivers: [proxmox]\n", check: func(t *testing.T, o Options) {
			if !o.RestrictPooled || len(o.PooledDrivers) != 1 || o.PooledDrivers[0] != "proxmox" {
				t.Fatalf("options: %+v", o)
			}
		}},
		{name: "stream replicas unset: decided at connect time", yaml: "", check: func(t *testing.T, o Options) {
			if o.Replicas != 0 {
				t.Fatalf("replicas %d, want 0 (auto)", o.Replicas)
			}
		}},
		{name: "stream replicas set", yaml: "worker:\n  stream_replicas: 3\n", check: func(t *testing.T, o Options) {
			if o.Replicas != 3 {
				t.Fatalf("replicas %d, want 3", o.Replicas)
			}
		}},
		{name: "stream replicas too many", yaml: "worker:\n  stream_replicas: 7\n", wantErr: "worker.stream_replicas"},
		{name: "stream replicas negative", yaml: "worker:\n  stream_replicas: -1\n", wantErr: "worker.stream_replicas"},
		{name: "bad pooled driver", yaml: "worker:\n  pooled_drivers: [events]\n", wantErr: "worker.pooled_drivers"},
		{name: "credential keys", yaml: "nats:\n  credential: /x/c.nk\n  credential_group: subbus\n  inbox_prefix: _INBOX_w\n  nkey: /k.nk\n  creds: /c.creds\n  tls_ca: /ca.pem\n  tls_cert: /c.pem\n  tls_key: /k.pem\n",
			check: func(t *testing.T, o Options) {
				if o.Embedded.Credential != "/x/c.nk" || o.Embedded.CredentialGroup != "subbus" {
					t.Fatalf("options: %+v", o.Embedded)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			o, err := OptionsFromConfig(cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
}
