"""/init's channel transport on the host: the selection from the kernel command
line (guest/channels.sh under busybox sh) and the real ``mvm-vsock`` relay over
its ``unix:PATH`` seam (the same code as ``vsock:PORT``: status reported by
``connect``, the control protocol served by ``listen``, one host at a time)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm.guest import read as guest_file
from mvm.image import guestbin
from mvm.image.initramfs import BUSYBOX
from tests.unit.guestbin_support import install


@pytest.fixture(scope="module")
def vsock_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(tmp_path_factory.mktemp("vsock-bin"), "mvm-vsock")


def sh(tmp: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    lib = tmp / "channels.sh"
    lib.write_bytes(guest_file("channels.sh"))
    return subprocess.run([str(BUSYBOX), "sh", "-c", f'. "{lib}"\n{script}'],
                          env={"PATH": "/nonexistent", **env}, capture_output=True, text=True,
                          timeout=60, cwd=tmp)  # fmt: skip


@pytest.mark.skipif(not BUSYBOX.is_file(), reason="busybox-static not installed")
@pytest.mark.parametrize(
    ("cmdline", "transport"),
    [("console=ttyS0 quiet", "virtio-serial"), ("mvm.channels=vsock", "vsock"),
     ("reboot=k mvm.channels=vsock mvm.guestdata=vdd", "vsock"),
     ("mvm.channels=virtio-serial", "virtio-serial"), ("mvm.channels=vsockx", "virtio-serial"),
     ("mvm.channels=", "virtio-serial"), ("xmvm.channels=vsock", "virtio-serial"),
     ("mvm.channels=vsock mvm.channels=other", "virtio-serial")],
)  # fmt: skip
def test_transport_from_cmdline(tmp_path: Path, cmdline: str, transport: str) -> None:
    r = sh(tmp_path, 'mvm_channels_transport "$CL"; echo "$MVM_CHANNELS"', CL=cmdline)
    assert r.stdout == f"{transport}\n", r.stderr


def unix_listener(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    s.settimeout(10)
    return s


@pytest.mark.skipif(not BUSYBOX.is_file(), reason="busybox-static not installed")
def test_status_reported_through_mvm_vsock(tmp_path: Path, vsock_bin: Path) -> None:
    """mvm_report_status with a socket address: one connection, "exit N", closed."""
    host = unix_listener(tmp_path / "status.sock")
    (tmp_path / "channels.sh").write_bytes(guest_file("channels.sh"))
    p = subprocess.Popen([str(BUSYBOX), "sh", "-c",
                          f'. "{tmp_path}/channels.sh"; MVM_VSOCK={vsock_bin}; '
                          f'mvm_report_status "unix:{tmp_path}/status.sock" 42'])  # fmt: skip
    conn, _ = host.accept()
    conn.settimeout(10)
    data = b""
    while chunk := conn.recv(100):
        data += chunk
    assert data == b"exit 42\n"
    assert p.wait(timeout=10) == 0
    # a path (virtio-serial port) is written to
    r = sh(tmp_path, f'mvm_report_status "{tmp_path}/port" 7')
    assert r.returncode == 0 and (tmp_path / "port").read_text() == "exit 7\n"
    assert sh(tmp_path, 'mvm_report_status "" 7').returncode == 1


def test_connect_fails_fast_without_a_host(tmp_path: Path, vsock_bin: Path) -> None:
    t0 = time.monotonic()
    r = subprocess.run([str(vsock_bin), "connect", f"unix:{tmp_path}/none.sock"],
                       input=b"exit 0\n", capture_output=True, timeout=30)  # fmt: skip
    assert r.returncode == 1 and time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    "args",
    [[], ["connect"], ["listen", "vsock:0"], ["connect", "vsock:abc"], ["bind", "vsock:1"],
     ["listen", "unix:"], ["connect", "tcp:1"], ["listen", "vsock:1", "x"]],
)  # fmt: skip
def test_bad_arguments(vsock_bin: Path, args: list[str]) -> None:
    assert subprocess.run([str(vsock_bin), *args], capture_output=True, timeout=10).returncode == 2


@pytest.fixture
def control(vsock_bin: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``mvm-vsock listen`` as /init runs it for the control channel (here on pipes)."""
    path = tmp_path / "control.sock"
    p = subprocess.Popen([str(vsock_bin), "listen", f"unix:{path}"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        yield p, path
    finally:
        p.kill()
        p.wait(timeout=10)


def host_connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


def test_control_requests_and_answers_relayed(
    control: tuple[subprocess.Popen[bytes], Path],
) -> None:
    p, path = control
    assert p.stdin is not None and p.stdout is not None
    assert (path.stat().st_mode & 0o077) == 0
    for round_ in range(2):  # a second host connection is served after the first ends
        host = host_connect(path)
        host.sendall(f"ping r{round_}\n".encode())
        assert p.stdout.readline() == f"ping r{round_}\n".encode()  # /init reads the request
        p.stdin.write(f"r{round_} ok\n".encode())  # /init answers
        p.stdin.flush()
        assert host.recv(100) == f"r{round_} ok\n".encode()
        host.close()
    p.stdin.close()  # /init's end gone: the relay exits
    assert p.wait(timeout=10) == 0


def test_answers_without_a_host_are_dropped(
    control: tuple[subprocess.Popen[bytes], Path],
) -> None:
    """An answer written while no host is connected must not reach the next host
    (nor block /init's watcher)."""
    p, path = control
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(b"stale ok\n")
    p.stdin.flush()
    time.sleep(0.3)
    host = host_connect(path)
    host.sendall(b"ping fresh\n")
    assert p.stdout.readline() == b"ping fresh\n"
    p.stdin.write(b"fresh ok\n")
    p.stdin.flush()
    assert host.recv(100) == b"fresh ok\n"
    host.close()


def test_reproducible_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a = guestbin.build("mvm-vsock")
    monkeypatch.setenv("MVM_CACHE", str(tmp_path / "fresh-cache"))
    assert guestbin.build("mvm-vsock") == a
    assert os.path.getsize(tmp_path / "fresh-cache" / "guestbin" / guestbin.cache_key()
                           / "mvm-vsock") == len(a)  # fmt: skip


def test_image_carries_the_vsock_helper_and_modules() -> None:
    """The builder installs mvm-vsock and channels.sh; a modular kernel's vsock
    transport goes to modules.vsock (loaded instead of virtio_console under vsock)."""
    from mvm.config.schema import Entrypoint, GuestSpec, Uids
    from mvm.image.builder import own_files

    spec = GuestSpec("a", Entrypoint("command", command=("/x",)), uids=Uids(990, 1000))
    late = [("virtio_console", b"\x7fELF1")]
    vsock = [("vsock", b"\x7fELF2"), ("vmw_vsock_virtio_transport", b"\x7fELF3")]
    files = {f.path: f for f in own_files(spec, late, None, vsock)}
    assert files["/etc/mvm/bin/mvm-vsock"].content == guestbin.build("mvm-vsock")
    assert files["/etc/mvm/lib/channels.sh"].content == guest_file("channels.sh")
    assert files["/etc/mvm/modules.late"].content == b"virtio_console\n"
    assert files["/etc/mvm/modules.vsock"].content == b"vsock vmw_vsock_virtio_transport\n"
    assert files["/lib/modules/mvm/vsock.ko"].content == b"\x7fELF2"
    assert "/etc/mvm/modules.vsock" not in {f.path for f in own_files(spec, late)}  # built in


def test_connect_does_not_wait_for_a_host_that_keeps_the_connection(
    tmp_path: Path, vsock_bin: Path
) -> None:
    """/init's last act: a status host that never closes costs at most the drain."""
    host = unix_listener(tmp_path / "status.sock")
    t0 = time.monotonic()
    p = subprocess.Popen([str(vsock_bin), "connect", f"unix:{tmp_path}/status.sock"],
                         stdin=subprocess.PIPE)  # fmt: skip
    conn, _ = host.accept()
    assert p.stdin is not None
    p.stdin.write(b"exit 3\n")
    p.stdin.close()
    assert p.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 2.0
    conn.settimeout(5)
    assert conn.recv(100) == b"exit 3\n"
    conn.close()
