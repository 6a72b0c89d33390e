"""NetworkPlan → NetworkSpec and the guest's network files (pure; no VM)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from mvm.backends.qemu.argv import QemuOptions, build_argv
from mvm.backends.spec import Disk, MachineSpec
from mvm.network import bindings, plan, policy


def _files(blob: bytes) -> dict[str, bytes]:
    """Unpack a newc cpio archive (names and contents)."""
    out, f = {}, io.BytesIO(blob)
    while True:
        hdr = f.read(110)
        size, namesize = int(hdr[54:62], 16), int(hdr[94:102], 16)
        name = f.read(namesize)[:-1].decode()
        f.read((4 - (110 + namesize) % 4) % 4)
        data = f.read(size)
        f.read((4 - size % 4) % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = data


def test_guest_files_and_spec(tmp_path: Path) -> None:
    pol = policy.build("dev", ("api.test:8443", "*.corp.test"), add_hosts=("api.test:127.0.0.1",))
    b = bindings.parse("TOKEN=the-value:api.test", {})
    p = plan.NetworkPlan(pol, (b,))
    spec = plan.prepare(p, tmp_path, "vm1", ())
    files = _files(spec.guest_config)
    env = files["env.sh"].decode()
    assert f"export TOKEN={b.placeholder}" in env and "the-value" not in env
    assert b"the-value" not in spec.guest_config
    assert "HTTPS_PROXY=http://10.0.2.100:3128" in env and "SSL_CERT_FILE" in env
    assert b"10.0.2.100 api.test\n" in files["hosts"] and b"corp.test" not in files["hosts"]
    assert files["resolv.conf"] == b"nameserver 10.0.2.100\noptions use-vc\n"
    assert files["ca.pem"].startswith(b"-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "net" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert sorted(g.port for g in spec.guest_forwards) == [53, 80, 443, 3128, 8443]
    assert not spec.egress
    m = MachineSpec("vm1", tmp_path, tmp_path / "k", None, (Disk(tmp_path / "r", "rootfs"),),
                    network=spec)  # fmt: skip
    argv = " ".join(build_argv(m, QemuOptions()))
    assert "restrict=on" in argv and "guestfwd=tcp:10.0.2.100:443-cmd:" in argv
    assert "the-value" not in argv


def test_modes_and_presets(tmp_path: Path) -> None:
    none = plan.NetworkPlan(policy.build("none"))
    assert not none.uses_proxy and not plan.prepare(none, tmp_path, "v", ()).enabled
    open_ = plan.NetworkPlan(policy.build("open"))
    assert open_.plain_egress and plan.prepare(open_, tmp_path, "v", ()).egress
    b = bindings.parse("K=v:api.test", {})
    drive = plan.NetworkPlan(policy.build("dev", ("api.test",)),
                             (dataclasses.replace(b, placeholder="mvm-managed:K"),), None, "drive")  # fmt: skip
    assert drive.uses_proxy and drive.proxy_bindings == ()
    files = _files(plan.prepare(drive, tmp_path / "d", "v", ()).guest_config)
    assert "ca.pem" not in files and b"export K=mvm-managed:K\n" in files["env.sh"]
    assert "value" not in str(drive.describe())
