package pvesim

import (
	"encoding/json"
	"sort"
	"strings"
)

// handlerFunc serves one route: the data for the envelope, extra envelope
// fields (e.g. "total"), or an error (*APIError, else 500 with the text).
type handlerFunc func(s *Sim, r *req) (any, map[string]any, error)

type route struct {
	method, path string
	h            handlerFunc
	params       map[string]*Prop
	additional   bool
}

func mk(typ string, optional bool) *Prop {
	return &Prop{TypeRaw: json.RawMessage(`"` + typ + `"`), Optional: flag(optional)}
}

func fptr(f float64) *num { n := num(f); return &n }

var (
	pNode     = func() *Prop { p := mk("string", false); p.FormatRaw = json.RawMessage(`"pve-node"`); return p }
	pVMID     = func() *Prop { p := mk("integer", false); p.Minimum, p.Maximum = fptr(100), fptr(999999999); return p }
	pOptVMID  = func() *Prop { p := pVMID(); p.Optional = true; return p }
	pStr      = func() *Prop { return mk("string", true) }
	pReqStr   = func() *Prop { return mk("string", false) }
	pBool     = func() *Prop { return mk("boolean", true) }
	pInt      = func() *Prop { return mk("integer", true) }
	pNum      = func() *Prop { return mk("number", true) }
	pIntRange = func(min, max float64) *Prop {
		p := mk("integer", true)
		p.Minimum, p.Maximum = fptr(min), fptr(max)
		return p
	}
	pEnum = func(vals ...string) *Prop {
		p := mk("string", true)
		for _, v := range vals {
			p.Enum = append(p.Enum, v)
		}
		return p
	}
	pSnap = func() *Prop {
		p := mk("string", false)
		p.FormatRaw = json.RawMessage(`"pve-configid"`)
		p.MaxLength = fptr(40)
		return p
	}
	pArray = func() *Prop { p := mk("array", false); p.Items = mk("string", false); return p }
)

func ps(kv ...any) map[string]*Prop {
	m := map[string]*Prop{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1].(*Prop)
	}
	return m
}

func merge(ms ...map[string]*Prop) map[string]*Prop {
	out := map[string]*Prop{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// qemuConfigProps are the QEMU config keys the builtin table knows.
func qemuConfigProps() map[string]*Prop {
	name := pStr()
	name.FormatRaw = json.RawMessage(`"dns-name"`)
	desc := pStr()
	desc.MaxLength = fptr(8192)
	tags := pStr()
	tags.FormatRaw = json.RawMessage(`"pve-tag-list"`)
	m := ps("name", name, "description", desc, "tags", tags,
		"memory", pStr(), "balloon", pIntRange(0, 4194304), "cores", pIntRange(1, 1024), "sockets", pIntRange(1, 64),
		"vcpus", pInt(), "cpu", pStr(), "cpulimit", pNum(), "cpuunits", pInt(), "numa", pBool(),
		"ostype", pEnum("other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11", "l24", "l26", "solaris"),
		"agent", pStr(), "onboot", pBool(), "boot", pStr(), "bootdisk", pStr(), "scsihw", pStr(), "bios", pEnum("seabios", "ovmf"),
		"machine", pStr(), "vga", pStr(), "kvm", pBool(), "acpi", pBool(), "protection", pBool(), "hotplug", pStr(),
		"template", pBool(), "startup", pStr(), "tablet", pBool(), "localtime", pBool(), "serial[n]", pStr(),
		"net[n]", pStr(), "scsi[n]", pStr(), "virtio[n]", pStr(), "sata[n]", pStr(), "ide[n]", pStr(), "unused[n]", pStr(),
		"efidisk0", pStr(), "tpmstate0", pStr(), "ipconfig[n]", pStr(), "ciuser", pStr(), "cipassword", pStr(),
		"citype", pEnum("configdrive2", "nocloud", "opennebula"), "sshkeys", pStr(), "nameserver", pStr(), "searchdomain", pStr(),
		"smbios1", pStr(), "vmgenid", pStr(), "args", pStr(), "hookscript", pStr(), "lock", pStr())
	return m
}

func lxcConfigProps() map[string]*Prop {
	tags := pStr()
	tags.FormatRaw = json.RawMessage(`"pve-tag-list"`)
	mem := pInt()
	mem.Minimum = fptr(16)
	return ps("hostname", pStr(), "description", pStr(), "tags", tags, "memory", mem, "swap", pIntRange(0, 1<<40),
		"cores", pIntRange(1, 8192), "cpulimit", pNum(), "cpuunits", pInt(), "net[n]", pStr(), "rootfs", pStr(), "mp[n]", pStr(),
		"unused[n]", pStr(), "unprivileged", pBool(), "features", pStr(), "nameserver", pStr(), "searchdomain", pStr(),
		"ostype", pStr(), "arch", pEnum("amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"), "protection", pBool(),
		"onboot", pBool(), "startup", pStr(), "template", pBool(), "console", pBool(), "tty", pIntRange(0, 6),
		"cmode", pEnum("shell", "console", "tty"), "timezone", pStr(), "lock", pStr())
}

var routes = buildRoutes()

func buildRoutes() []route {
	vm := ps("node", pNode(), "vmid", pVMID())
	snapNamed := merge(vm, ps("snapname", pSnap()))
	qemuCreate := merge(qemuConfigProps(), ps("node", pNode(), "vmid", pVMID(), "start", pBool(), "pool", pStr(),
		"storage", pStr(), "unique", pBool(), "archive", pStr(), "force", pBool(), "live-restore", pBool()))
	qemuConfigPost := merge(qemuConfigProps(), vm, ps("delete", pStr(), "digest", pStr(), "revert", pStr(),
		"skiplock", pBool(), "force", pBool(), "background_delay", pIntRange(1, 30)))
	qemuConfigPut := merge(qemuConfigProps(), vm, ps("delete", pStr(), "digest", pStr(), "revert", pStr(),
		"skiplock", pBool(), "force", pBool()))
	lxcCreate := merge(lxcConfigProps(), ps("node", pNode(), "vmid", pVMID(), "ostemplate", pReqStr(), "password", pStr(),
		"ssh-public-keys", pStr(), "storage", pStr(), "start", pBool(), "pool", pStr(), "restore", pBool(), "force", pBool(),
		"unique", pBool(), "ignore-unpack-errors", pBool()))
	lxcConfigPut := merge(lxcConfigProps(), vm, ps("delete", pStr(), "digest", pStr(), "revert", pStr()))
	clone := merge(vm, ps("newid", pVMID(), "name", pStr(), "description", pStr(), "full", pBool(), "pool", pStr(),
		"snapname", pStr(), "storage", pStr(), "format", pEnum("raw", "qcow2", "vmdk"), "target", pStr(), "bwlimit", pInt()))
	lxcClone := merge(vm, ps("newid", pVMID(), "hostname", pStr(), "description", pStr(), "full", pBool(), "pool", pStr(),
		"snapname", pStr(), "storage", pStr(), "target", pStr(), "bwlimit", pNum()))
	upid := ps("node", pNode(), "upid", pReqStr())

	var rs []route
	add := func(method, path string, h handlerFunc, params map[string]*Prop) {
		rs = append(rs, route{method: method, path: path, h: h, params: params})
	}
	add("POST", "/access/ticket", hTicket, ps("username", pReqStr(), "password", pReqStr(), "realm", pStr(),
		"otp", pStr(), "path", pStr(), "privs", pStr(), "new-format", pBool(), "tfa-challenge", pStr()))
	add("GET", "/access/ticket", hNull, nil)
	add("GET", "/version", hVersion, nil)
	add("GET", "/cluster/nextid", hNextID, ps("vmid", pOptVMID()))
	add("GET", "/cluster/resources", hResources, ps("type", pEnum("vm", "storage", "node", "sdn")))
	add("GET", "/cluster/status", hClusterStatus, nil)
	add("GET", "/cluster/tasks", hClusterTasks, nil)
	add("GET", "/cluster/sdn/vnets", hVNets, ps("pending", pBool(), "running", pBool()))
	add("GET", "/nodes", hNodes, nil)
	add("GET", "/nodes/{node}/status", hNodeStatus, ps("node", pNode()))
	add("GET", "/nodes/{node}/storage", hStorageList, ps("node", pNode(), "content", pStr(), "enabled", pBool(),
		"format", pBool(), "storage", pStr(), "target", pStr()))
	add("GET", "/nodes/{node}/storage/{storage}/status", hStorageStatus, ps("node", pNode(), "storage", pReqStr()))
	add("GET", "/nodes/{node}/storage/{storage}/content", hStorageContent, ps("node", pNode(), "storage", pReqStr(),
		"content", pStr(), "vmid", pOptVMID()))
	add("GET", "/nodes/{node}/network", hNetwork, ps("node", pNode(), "type", pEnum("bridge", "bond", "eth", "alias",
		"vlan", "fabric", "OVSBridge", "OVSBond", "OVSPort", "OVSIntPort", "vnet", "any_bridge", "any_local_bridge", "include_sdn")))
	add("GET", "/nodes/{node}/tasks", hTaskIndex, ps("node", pNode(), "errors", pBool(), "limit", pIntRange(0, 1<<31),
		"since", pInt(), "source", pEnum("archive", "active", "all"), "start", pIntRange(0, 1<<31), "statusfilter", pStr(),
		"typefilter", pStr(), "until", pInt(), "userfilter", pStr(), "vmid", pOptVMID()))
	add("GET", "/nodes/{node}/tasks/{upid}/status", hTaskStatus, upid)
	add("GET", "/nodes/{node}/tasks/{upid}/log", hTaskLog, merge(upid, ps("start", pIntRange(0, 1<<31),
		"limit", pIntRange(0, 1<<31), "download", pBool())))
	add("DELETE", "/nodes/{node}/tasks/{upid}", hTaskStop, upid)

	for _, kind := range []string{"qemu", "lxc"} {
		k := kind
		base := "/nodes/{node}/" + k
		add("GET", base, guestList(k), ps("node", pNode()))
		if k == "qemu" {
			add("POST", base, hCreate("qemu"), qemuCreate)
			add("GET", base+"/{vmid}/config", hConfigGet("qemu"), merge(vm, ps("current", pBool(), "snapshot", pStr())))
			add("POST", base+"/{vmid}/config", hConfigSet("qemu", true), qemuConfigPost)
			add("PUT", base+"/{vmid}/config", hConfigSet("qemu", false), qemuConfigPut)
			add("DELETE", base+"/{vmid}", hDestroy("qemu"), merge(vm, ps("purge", pBool(), "destroy-unreferenced-disks", pBool(), "skiplock", pBool())))
			add("POST", base+"/{vmid}/status/start", hStart("qemu"), merge(vm, ps("skiplock", pBool(), "timeout", pInt(),
				"machine", pStr(), "migratedfrom", pStr(), "migration_network", pStr(), "migration_type", pStr(),
				"stateuri", pStr(), "targetstorage", pStr(), "force-cpu", pStr(), "with-conntrack-state", pBool(), "nets-host-mtu", pStr())))
			add("POST", base+"/{vmid}/status/stop", hStop("qemu"), merge(vm, ps("skiplock", pBool(), "timeout", pIntRange(0, 1<<31),
				"keepActive", pBool(), "migratedfrom", pStr(), "overrule-shutdown", pBool())))
			add("POST", base+"/{vmid}/status/shutdown", hShutdown("qemu"), merge(vm, ps("skiplock", pBool(), "timeout", pIntRange(0, 1<<31),
				"forceStop", pBool(), "keepActive", pBool())))
			add("POST", base+"/{vmid}/status/reboot", hReboot("qemu"), merge(vm, ps("timeout", pIntRange(0, 1<<31))))
			add("POST", base+"/{vmid}/status/reset", hReset, merge(vm, ps("skiplock", pBool())))
			add("POST", base+"/{vmid}/status/suspend", hSuspend("qemu"), merge(vm, ps("skiplock", pBool(), "todisk", pBool(), "statestorage", pStr())))
			add("POST", base+"/{vmid}/status/resume", hResume("qemu"), merge(vm, ps("skiplock", pBool(), "nocheck", pBool())))
			add("POST", base+"/{vmid}/clone", hClone("qemu"), clone)
			add("POST", base+"/{vmid}/template", hTemplate("qemu"), merge(vm, ps("disk", pStr())))
			add("POST", base+"/{vmid}/snapshot", hSnapshot("qemu"), merge(vm, ps("snapname", pSnap(), "description", pStr(), "vmstate", pBool())))
			add("POST", base+"/{vmid}/agent/ping", hAgentPing, vm)
			add("POST", base+"/{vmid}/agent/exec", hAgentExec, merge(vm, ps("command", pArray(), "input-data", pStr())))
			add("GET", base+"/{vmid}/agent/exec-status", hAgentExecStatus, merge(vm, ps("pid", mk("integer", false))))
			add("GET", base+"/{vmid}/agent/get-osinfo", hAgentInfo("get-osinfo"), vm)
			add("GET", base+"/{vmid}/agent/network-get-interfaces", hAgentInfo("network-get-interfaces"), vm)
			add("GET", base+"/{vmid}/agent/get-host-name", hAgentInfo("get-host-name"), vm)
		} else {
			add("POST", base, hCreate("lxc"), lxcCreate)
			add("GET", base+"/{vmid}/config", hConfigGet("lxc"), merge(vm, ps("current", pBool(), "snapshot", pStr())))
			add("PUT", base+"/{vmid}/config", hConfigSet("lxc", false), lxcConfigPut)
			add("DELETE", base+"/{vmid}", hDestroy("lxc"), merge(vm, ps("purge", pBool(), "destroy-unreferenced-disks", pBool(), "force", pBool())))
			add("POST", base+"/{vmid}/status/start", hStart("lxc"), merge(vm, ps("skiplock", pBool(), "debug", pBool())))
			add("POST", base+"/{vmid}/status/stop", hStop("lxc"), merge(vm, ps("skiplock", pBool(), "overrule-shutdown", pBool())))
			add("POST", base+"/{vmid}/status/shutdown", hShutdown("lxc"), merge(vm, ps("timeout", pIntRange(0, 1<<31), "forceStop", pBool())))
			add("POST", base+"/{vmid}/status/reboot", hReboot("lxc"), merge(vm, ps("timeout", pIntRange(0, 1<<31))))
			add("POST", base+"/{vmid}/status/suspend", hSuspend("lxc"), vm)
			add("POST", base+"/{vmid}/status/resume", hResume("lxc"), vm)
			add("POST", base+"/{vmid}/clone", hClone("lxc"), lxcClone)
			add("POST", base+"/{vmid}/template", hTemplate("lxc"), vm)
			add("GET", base+"/{vmid}/interfaces", hLXCInterfaces, vm)
			add("POST", base+"/{vmid}/snapshot", hSnapshot("lxc"), merge(vm, ps("snapname", pSnap(), "description", pStr())))
		}
		add("GET", base+"/{vmid}/status/current", hCurrent(k), vm)
		add("GET", base+"/{vmid}/snapshot", hSnapshotList(k), vm)
		add("DELETE", base+"/{vmid}/snapshot/{snapname}", hSnapshotDelete(k), merge(snapNamed, ps("force", pBool())))
		add("POST", base+"/{vmid}/snapshot/{snapname}/rollback", hRollback(k), merge(snapNamed, ps("start", pBool())))
		add("GET", base+"/{vmid}/snapshot/{snapname}/config", hSnapshotConfig(k), snapNamed)
		add("GET", base+"/{vmid}/rrddata", hRRDData(k), merge(vm, ps("timeframe", mkEnum(false, "hour", "day", "week", "month", "year", "decade"),
			"cf", pEnum("AVERAGE", "MAX"))))
	}
	return rs
}

func mkEnum(optional bool, vals ...string) *Prop {
	p := pEnum(vals...)
	p.Optional = flag(optional)
	return p
}

var handlers = func() map[string]handlerFunc {
	m := map[string]handlerFunc{}
	for _, r := range routes {
		m[r.method+" "+r.path] = r.h
	}
	return m
}()

func routeHandler(method, tpl string) handlerFunc { return handlers[method+" "+tpl] }

// Routes lists the "METHOD /template" pairs the simulator implements.
func Routes() []string {
	out := make([]string, 0, len(routes))
	for _, r := range routes {
		out = append(out, r.method+" "+r.path)
	}
	sort.Strings(out)
	return out
}

// builtinSchema turns the route table into a Schema tree, so that
// requests are validated the same way with or without PVE's schema.
func builtinSchema() *Schema {
	s := &Schema{Name: "builtin"}
	byPath := map[string]*schemaNode{}
	var ensure func(path string) *schemaNode
	ensure = func(path string) *schemaNode {
		if n := byPath[path]; n != nil {
			return n
		}
		n := &schemaNode{Path: path, Text: lastSeg(path), Info: map[string]*Method{}}
		byPath[path] = n
		parent := path[:strings.LastIndexByte(path, '/')]
		if parent == "" {
			s.roots = append(s.roots, n)
		} else {
			p := ensure(parent)
			p.Children = append(p.Children, n)
		}
		return n
	}
	for _, r := range routes {
		n := ensure(r.path)
		params := merge(r.params)
		for _, seg := range strings.Split(r.path, "/") {
			if strings.HasPrefix(seg, "{") {
				name := seg[1 : len(seg)-1]
				if params[name] == nil {
					params[name] = pReqStr()
				}
			}
		}
		add := "0"
		if r.additional {
			add = "1"
		}
		n.Info[r.method] = &Method{Method: r.method, Name: r.method + " " + r.path,
			Parameters: &Prop{TypeRaw: json.RawMessage(`"object"`), Properties: params, AdditionalProperties: json.RawMessage(add)}}
	}
	return s
}
