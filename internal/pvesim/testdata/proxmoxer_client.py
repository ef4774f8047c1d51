#!/usr/bin/python3
"""Drives bin/pvesim with Debian's python3-proxmoxer (1.2.x): an independent
client (form-encoded bodies, HTTP reason phrases for errors, ticket renewal
and token auth). Usage: proxmoxer_client.py HOST:PORT password|token
Prints PASS on success; any failure raises."""
import sys
import time

from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

host, mode = sys.argv[1], sys.argv[2]
if mode == "password":
    px = ProxmoxAPI(host, user="root@pam", password="secret", verify_ssl=False)
else:
    px = ProxmoxAPI(host, user="root@pam", token_name="ci", token_value="tok", verify_ssl=False)
NODE = "pve1"


def wait(upid, timeout=30):
    node = upid.split(":")[1]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = px.nodes(node).tasks(upid).status.get()
        if st["status"] == "stopped":
            return st.get("exitstatus", "")
        time.sleep(0.05)
    raise TimeoutError(upid)


def ok(upid):
    es = wait(upid)
    assert es == "OK" or es.startswith("WARNINGS"), (upid, es)


assert px.version.get()["version"].startswith("9.")
vmid = int(px.cluster.nextid.get())  # a string on the wire
assert px.cluster.nextid.get() == str(vmid)
ok(px.nodes(NODE).qemu.post(vmid=vmid, name="ci-vm", memory=512, cores=1,
                            scsi0="local-lvm:1", net0="virtio,bridge=vmbr0", agent=1))
vm = px.nodes(NODE).qemu(vmid)
ok(vm.status.start.post())
assert vm.status.current.get()["status"] == "running"
assert wait(vm.status.start.post()) == "VM %d already running" % vmid
ok(vm.snapshot.post(snapname="s1", description="ci"))
names = [s["name"] for s in vm.snapshot.get()]
assert names == ["s1", "current"], names
pid = vm.agent.exec.post(command="hostname")["pid"]
st = vm.agent("exec-status").get(pid=pid)
assert st["exited"] == 1 and st["out-data"] == "ci-vm\n", st

# Python's True is form-encoded as "True", which PVE refuses.
try:
    vm.status.shutdown.post(timeout=30, forceStop=True)
    raise AssertionError("forceStop=True accepted")
except ResourceException as e:
    # proxmoxer 1.2 reads errors from "data" (null), so only the status line.
    assert e.status_code == 400 and e.content == "Parameter verification failed.", e

ok(vm.status.shutdown.post(timeout=30, forceStop=1))
ok(vm.snapshot("s1").delete())
ok(vm.delete(purge=1))  # DELETE parameters travel in the query string
try:
    vm.status.current.get()
    raise AssertionError("deleted VM answers")
except ResourceException as e:
    assert e.status_code == 500, e
    # proxmoxer takes PVE's message from the HTTP reason phrase.
    assert e.content == "Configuration file 'nodes/pve1/qemu-server/%d.conf' does not exist" % vmid, e.content

# LXC side by side.
ctid = int(px.cluster.nextid.get())
ok(px.nodes(NODE).lxc.post(vmid=ctid, ostemplate="local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
                           hostname="ci-ct", rootfs="local-lvm:2", net0="name=eth0,bridge=vmbr0,ip=dhcp"))
ct = px.nodes(NODE).lxc(ctid)
ok(ct.status.start.post())
try:
    ct.status.start.post()
    raise AssertionError("second CT start accepted")
except ResourceException as e:
    assert e.status_code == 500 and e.content == "CT %d already running" % ctid, e
ok(ct.status.stop.post())
ok(ct.delete())
assert [r for r in px.cluster.resources.get(type="vm") if r["vmid"] in (vmid, ctid)] == []
print("PASS")
