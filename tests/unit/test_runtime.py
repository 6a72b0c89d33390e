"""The runtime against a fake backend (the one seam): start failure rollback,
guarded transitions, `down` during `up`, settings precedence and provenance.

The fake's "hypervisor" is a real process (``sleep``), so liveness, pids and
stopping are the real code paths; only the VM inside is missing.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mvm import paths
from mvm.backends import base
from mvm.backends.base import Backend, Capabilities, LaunchError, Machine, RunStatus
from mvm.backends.spec import HostChannels, MachineSpec
from mvm.config import load_project
from mvm.errors import ConfigError, ConflictError, CredentialError, StateError
from mvm.image.builder import Image
from mvm.runtime import lifecycle, start, vm
from mvm.runtime.config import RunConfig
from mvm.runtime.resolve import RuntimeDefaults, resolve
from mvm.secrets.credentials import Credential
from mvm.state.procs import proc_start_time
from mvm.state.records import VmState
from tests.unit.template_fakes import FakeBuilder

PROJECT = """name = "app"
vcpus = 2
memory_mib = 512
ports = ["18080:80"]
network = true
[entrypoint]
command = ["/bin/true"]
[credentials]
TOKEN = {{ file = "{cred}" }}
"""


class FakeMachine(Machine):
    def __init__(self, backend: FakeBackend, run_dir: Path, popen: subprocess.Popen[bytes]):
        super().__init__(backend, run_dir, popen.pid, proc_start_time(popen.pid))
        self.popen = popen
        self.paused = False

    def status(self, timeout: float = 1.0) -> RunStatus:
        if not self.alive():
            return "gone"
        return "paused" if self.paused else "running"

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def _answering(self) -> bool:
        fb = self.backend
        assert isinstance(fb, FakeBackend)
        fb.ready.wait(10)
        if fb.fail_ready:
            raise LaunchError("fake: never answered", command=["fake"])
        return True

    def _quit(self) -> None:
        self.popen.terminate()

    def close(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


class FakeBackend(Backend):
    name = "fake"
    capabilities = Capabilities(smbios=False, fw_cfg=False, snapshots=False,
                                agent_transport="none")  # fmt: skip
    launched: list[MachineSpec] = []
    machines: list[FakeMachine] = []
    fail_launch = False
    fail_ready = False
    ready = threading.Event()

    def version(self) -> str:
        return "fake 1"

    def command(self, spec: MachineSpec) -> list[str]:
        return ["fake-hv", "--name", spec.name, "--mem", str(spec.memory_mib)]

    def launch(self, spec: MachineSpec, restore: object = None) -> FakeMachine:
        if self.fail_launch:
            raise LaunchError("fake: cannot start", command=self.command(spec))
        type(self).launched.append(spec)
        popen = subprocess.Popen(["sleep", "300"], cwd=spec.run_dir)
        m = FakeMachine(self, spec.run_dir, popen)
        type(self).machines.append(m)
        return m

    def channels(self, run_dir: Path) -> HostChannels:
        return HostChannels(run_dir / "status", run_dir / "control.in", run_dir / "agent.sock",
                            run_dir / "console.sock", run_dir / "console.log")  # fmt: skip

    def ephemeral(self, run_dir: Path) -> tuple[Path, ...]:
        return ()

    def owned_pid(self, run_dir: Path) -> int | None:
        for m in self.machines:
            if m.run_dir == run_dir and m.alive():
                return m.pid
        return None

    def attach(self, run_dir: Path, pid: int, pid_start: int | None) -> Machine:
        for m in self.machines:
            if m.pid == pid:
                return m
        raise AssertionError("unknown machine")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeBackend]:
    monkeypatch.setitem(base.FACTORIES, "fake", FakeBackend)
    FakeBackend.launched, FakeBackend.machines = [], []
    FakeBackend.fail_launch = FakeBackend.fail_ready = False
    FakeBackend.ready = threading.Event()
    FakeBackend.ready.set()
    yield FakeBackend
    for m in FakeBackend.machines:
        m.popen.kill()
        m.popen.wait()


@pytest.fixture
def image(tmp_path: Path) -> tuple[Image, RuntimeDefaults]:
    cred = tmp_path / "token"
    cred.write_text("from-toml")
    root = tmp_path / "proj"
    root.mkdir()
    (root / "mvm.toml").write_text(PROJECT.format(cred=cred))
    project = load_project(root)
    return FakeBuilder()(project), RuntimeDefaults.from_spec(project.spec)


def run_of(img: tuple[Image, RuntimeDefaults], **kw: object) -> start.ResolvedRun:
    cfg = RunConfig(hypervisor="fake", forward_host_credentials=False, **kw)  # type: ignore[arg-type]
    return resolve(img[0], cfg, img[1], source="test")


def test_precedence_and_provenance(image: tuple[Image, RuntimeDefaults]) -> None:
    r = run_of(image)
    assert (r.vcpus.value, r.memory_mib.value, r.egress.value) == (2, 512, True)
    assert [str(p) for p in r.ports] == ["18080:80"]
    assert [c.name for c in r.credentials] == ["TOKEN"]
    assert r.provenance() == {"name": "image", "vcpus": "mvm.toml", "memory_mib": "mvm.toml",
                              "network": "mvm.toml", "hypervisor": "cli", "machine": "default", "ports": "mvm.toml",
                              "credentials": "mvm.toml"}  # fmt: skip
    r = run_of(image, name="n1", cpus=4, network=False, ports=["9090:90", "18080:80"],
               credentials=[Credential("TOKEN", b"cli")])  # fmt: skip
    assert (r.name, r.vcpus.value, r.memory_mib.value, r.egress.value) == ("n1", 4, 512, False)
    assert [str(p) for p in r.ports] == ["9090:90", "18080:80"]  # the same forward once
    assert {c.name: c.value for c in r.credentials} == {"TOKEN": b"cli"}
    assert r.sources["vcpus"] == "cli" and r.sources["memory_mib"] == "mvm.toml"
    assert r.sources["ports"] == "cli+mvm.toml"
    with pytest.raises(ConfigError, match="forwarded twice"):
        run_of(image, ports=["18080:81"])
    # a template's explicit settings win over mvm.toml, the caller over both
    tpl = RuntimeDefaults("mvm.toml", vcpus=1, memory_mib=256, template="tpl", template_vcpus=3,
                          data_disk_mib=64)  # fmt: skip
    r = resolve(image[0], RunConfig(hypervisor="fake", memory_mib=1024), tpl, source="t")
    assert (r.name, r.vcpus.value, r.memory_mib.value) == ("tpl", 3, 1024)
    assert r.sources["vcpus"] == "template" and r.sources["memory_mib"] == "cli"
    assert [(v.host, v.guest, v.size) for v in r.volumes] == [(None, "/data", 64 << 20)]


def test_start_records_what_was_resolved(
    fake: type[FakeBackend], image: tuple[Image, RuntimeDefaults]
) -> None:
    started = start.start(run_of(image, name="ok1"))
    rec = json.loads((paths.vm_dir("ok1") / "vm.json").read_text())
    assert rec["phase"] == "running" and rec["hypervisor"] == "fake" and rec["pid"]
    assert rec["settings"]["vcpus"] == "mvm.toml" and rec["credentials"] == ["TOKEN"]
    assert "from-toml" not in json.dumps(rec)  # names only, never values
    spec = fake.launched[-1]
    assert (spec.vcpus, spec.memory_mib, spec.network.egress) == (2, 512, True)
    assert [c.name for c in spec.credentials] == ["TOKEN"]
    assert vm.get("ok1").state is VmState.RUNNING
    assert vm.get("ok1").info()["settings"]["ports"] == "mvm.toml"
    vm.down("ok1")
    assert not started.machine.alive() and not paths.vm_dir("ok1").exists()


@pytest.mark.parametrize("where", ["launch", "ready"])
def test_a_failed_start_leaves_nothing(
    fake: type[FakeBackend], image: tuple[Image, RuntimeDefaults], tmp_path: Path, where: str
) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    fake.fail_launch = where == "launch"
    fake.fail_ready = where == "ready"
    with pytest.raises(LaunchError) as exc:
        start.start(run_of(image, name="bad1", volumes=[f"{seed}:/data:16M"]))
    assert exc.value.command  # the error carries the command line
    assert not paths.vm_dir("bad1").exists()
    assert not (paths.volumes_dir() / "bad1").exists()  # the new data volume is undone
    assert all(not m.alive() for m in fake.machines)  # and its process is gone


def test_guarded_transitions(fake: type[FakeBackend], image: tuple[Image, RuntimeDefaults]) -> None:
    start.start(run_of(image, name="g1"))
    with pytest.raises(ConflictError, match="cannot resume VM g1: it is running"):
        vm.resume("g1")
    vm.pause("g1")
    assert vm.get("g1").state is VmState.PAUSED
    assert vm.get("g1").info()["state"] == "paused"
    with pytest.raises(ConflictError, match="cannot pause VM g1: it is paused"):
        vm.pause("g1")
    vm.resume("g1")
    assert vm.get("g1").state is VmState.RUNNING
    vm.detach("g1")
    vm.down("g1")
    with pytest.raises(Exception, match="no VM named 'g1'"):
        vm.pause("g1")


def test_down_during_up_waits_for_the_start(
    fake: type[FakeBackend], image: tuple[Image, RuntimeDefaults]
) -> None:
    fake.ready.clear()  # the start blocks in wait_ready, holding the VM's lock
    result: dict[str, object] = {}
    t = threading.Thread(target=lambda: result.update(s=start.start(run_of(image, name="d1"))))
    t.start()
    deadline = time.monotonic() + 10
    while not (paths.vm_dir("d1") / "vm.json").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert vm.get("d1").state is VmState.CREATING
    with pytest.raises(ConflictError, match="VM d1 is busy"), lifecycle.vm_lock("d1", timeout=0.2):
        pass  # a short wait refuses cleanly ...
    downer = threading.Thread(target=lambda: result.update(down=vm.down("d1")))
    downer.start()  # ... a normal one waits for the start to finish, then stops the VM
    time.sleep(0.3)
    assert paths.vm_dir("d1").exists(), "down removed the run directory mid-start"
    fake.ready.set()
    t.join(10)
    downer.join(10)
    assert result["down"] is VmState.RUNNING
    assert not paths.vm_dir("d1").exists()


def test_wait_and_broken_records(
    fake: type[FakeBackend], image: tuple[Image, RuntimeDefaults]
) -> None:
    start.start(run_of(image, name="w1"))
    m = fake.machines[-1]
    (paths.vm_dir("w1") / "status").write_text("exit 3\n")
    m.popen.kill()
    m.popen.wait()
    assert vm.wait("w1", timeout=5) == 3
    (paths.vm_dir("w1") / "vm.json").write_text("[]")
    assert vm.get("w1").info()["state"] == "broken"
    with pytest.raises(StateError, match="broken and reported no exit status"):
        vm.wait("w1", timeout=5)
    vm.down("w1")


def test_bad_input_fails_before_anything_exists(
    fake: type[FakeBackend], image: tuple[Image, RuntimeDefaults], tmp_path: Path
) -> None:
    with pytest.raises(CredentialError):
        start.start(run_of(image, name="c1", credentials=[Credential("A", b"x" * (1 << 20)),
                                                          Credential("B", b"x")]))  # fmt: skip
    with pytest.raises(ConfigError, match="invalid port"):
        run_of(image, ports=["70000:1"])
    assert not paths.vm_dir("c1").exists() and fake.launched == []


def test_show_command_creates_nothing(
    fake: type[FakeBackend], image: tuple[Image, RuntimeDefaults]
) -> None:
    argv = start.show_command(run_of(image, name="s1", memory_mib=640))
    assert argv == ["fake-hv", "--name", "s1", "--mem", "640"]
    assert not paths.vm_dir("s1").exists() and fake.launched == []


def test_a_callers_forward_of_a_guest_port_replaces_mvm_tomls(
    image: tuple[Image, RuntimeDefaults],
) -> None:
    # several VMs of one template each publish guest port 80 on their own host port
    r = run_of(image, ports=["9000:80"])
    assert [str(p) for p in r.ports] == ["9000:80"]
    r = run_of(image, ports=["9000:80/udp"])  # another protocol: mvm.toml's tcp forward stays
    assert sorted(str(p) for p in r.ports) == ["18080:80", "9000:80/udp"]


def test_auto_hypervisor_yields_to_snapshots(image: tuple[Image, RuntimeDefaults],
                                             tmp_path: Path) -> None:  # fmt: skip
    """An automatic Firecracker never meets a QEMU snapshot: a restore runs under the
    snapshot's hypervisor, a VM to be snapshotted under QEMU; an explicit choice stays."""
    from dataclasses import replace

    from mvm.runtime.resolve import Setting
    from mvm.runtime.restore import Restore
    from mvm.runtime.snapshots import Snapshot

    auto = replace(run_of(image), hypervisor=Setting("firecracker", "auto"))
    restore = Restore(Snapshot(tmp_path, {"hypervisor": "qemu"}))
    r = start._snapshot_hypervisor(auto, restore, None)
    assert r.hypervisor == Setting("qemu", "auto") and "saved by qemu" in r.hypervisor_reason
    r = start._snapshot_hypervisor(auto, None, tmp_path)
    assert r.hypervisor.value == "qemu" and "snapshotted" in r.hypervisor_reason
    assert start._snapshot_hypervisor(auto, None, None) is auto
    explicit = replace(auto, hypervisor=Setting("firecracker", "cli"))
    assert start._snapshot_hypervisor(explicit, restore, tmp_path) is explicit
