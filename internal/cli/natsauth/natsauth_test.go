package natsauth

import (
	"strings"
	"testing"

	"github.com/subbus/subbus/messages"
)

func TestReadOnlyOps(t *testing.T) {
	ops := ReadOnlyOps()
	has := map[messages.Op]bool{}
	for _, op := range ops {
		if op.Mutating() || op == messages.OpLogs {
			t.Errorf("%s is not read-only", op)
		}
		has[op] = true
	}
	for _, op := range []messages.Op{messages.OpList, messages.OpGet, messages.OpMetrics, messages.OpHealth} {
		if !has[op] {
			t.Errorf("%s missing", op)
		}
	}
}

func TestIdentitiesValidation(t *testing.T) {
	tests := []struct {
		name    string
		f       Fleet
		wantErr string
	}{
		{"no hosts", Fleet{}, "hosts"},
		{"bad host", Fleet{Hosts: []string{"a.b"}}, "a.b"},
		{"reserved cluster driver", Fleet{Hosts: []string{"h"}, ClusterDrivers: []string{"events"}}, "events"},
		{"unknown role", Fleet{Hosts: []string{"h"}, Clients: []Identity{{Name: "x", Role: "root"}}}, "role"},
		{"scope on admin", Fleet{Hosts: []string{"h"}, Clients: []Identity{{Name: "x", Role: RoleAdmin, Hosts: []string{"h"}}}}, "scope"},
		{"duplicate", Fleet{Hosts: []string{"h"}, Clients: []Identity{{Name: "worker-h", Role: RoleOperator}}}, "twice"},
		{"bad name", Fleet{Hosts: []string{"h"}, Clients: []Identity{{Name: "a b", Role: RoleOperator}}}, "subject token"},
		{"inbox-like name", Fleet{Hosts: []string{"h"}, Clients: []Identity{{Name: "_x", Role: RoleOperator}}}, "subject token"},
		{"ok", Fleet{Hosts: []string{"h1", "h2"}, ClusterDrivers: []string{"proxmox"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ids, err := tt.f.Identities()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// workers, the four default clients, sys; every key distinct.
			if len(ids) != 7 {
				t.Fatalf("%d identities", len(ids))
			}
			seen := map[string]bool{}
			for _, id := range ids {
				if !strings.HasPrefix(id.Public, "U") || !strings.HasPrefix(string(id.Seed), "SU") || seen[id.Public] {
					t.Fatalf("identity %s: key %q", id.Name, id.Public)
				}
				seen[id.Public] = true
			}
		})
	}
}
