"""Firecracker launch benchmark: what mvm's configuration adds to Firecracker's own start.

KVM cannot run guests on the CI machines, so no boot is timed here; what is
measured, paired in one run (floor then mvm, N times), is:

* floor — spawn ``firecracker --api-sock …``, poll until ``GET /`` answers, then the
  minimum a boot needs (machine-config, boot-source, one drive, ``InstanceStart``)
  from the same client (``InstanceStart`` itself — loading the kernel, mapping guest
  memory — is most of it);
* mvm — ``FirecrackerBackend.launch`` until it returns: spawn, socket, the
  guest-data drive, the relay, every API call of the plan and ``InstanceStart``
  accepted (``MVM_FIRECRACKER_KVM=unchecked``), then paused and killed;

and reports the medians and their ratio.  Usage: python bench/firecracker.py [--runs N]
(needs the pinned binary: scripts/fetch-firecracker.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def floor_once(binary: str, d: Path, kernel: Path) -> float:
    from mvm.backends.firecracker.api import ApiClient

    sock = d / "floor.sock"
    sock.unlink(missing_ok=True)
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "--api-sock", str(sock), "--id", "floor"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    api = ApiClient(sock)
    try:
        while True:
            if sock.exists():
                try:
                    api.instance(1.0)
                    break
                except Exception:
                    pass
            time.sleep(0.001)
        api.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 256})
        api.put("/boot-source", {"kernel_image_path": str(kernel), "boot_args": "console=ttyS0"})
        api.put("/drives/vda", {"drive_id": "vda", "path_on_host": str(d / "rootfs.ext4"),
                                "is_root_device": False, "is_read_only": True})  # fmt: skip
        api.action("InstanceStart", timeout=30)
        took = time.monotonic() - t0
        api.patch("/vm", {"state": "Paused"})
        return took
    finally:
        api.close()
        p.kill()
        p.wait()


def mvm_once(d: Path, kernel: Path, i: int) -> float:
    from mvm.backends.firecracker.machine import FirecrackerBackend
    from mvm.backends.spec import Disk, GuestCredential, MachineSpec

    rd = d / f"vm{i}"
    rd.mkdir(mode=0o700)
    rootfs = d / "rootfs.ext4"
    if not rootfs.exists():
        rootfs.write_bytes(b"\0" * (1 << 20))
    spec = MachineSpec(name=f"bench{i}", run_dir=rd, kernel=kernel, initramfs=None,
                       disks=(Disk(rootfs, "rootfs"),),
                       credentials=(GuestCredential("TOKEN", b"x" * 64),))  # fmt: skip
    t0 = time.monotonic()
    m = FirecrackerBackend().launch(spec)
    took = time.monotonic() - t0
    m.pause()
    m.kill()
    m.close()
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch-firecracker.py")],
                       capture_output=True, text=True, check=False)  # fmt: skip
    if r.returncode != 0:
        print(r.stderr.strip(), file=sys.stderr)
        return 1
    binary = str(Path(r.stdout.strip()) / "firecracker")
    os.environ["MVM_FIRECRACKER"] = binary
    os.environ["MVM_FIRECRACKER_KVM"] = "unchecked"
    from mvm.image.kernel import mvm_kernel

    kernel = mvm_kernel(build=False).image
    floors, mvms = [], []
    with tempfile.TemporaryDirectory(prefix="mvm-bench-fc-") as tmp:
        d = Path(tmp)
        for i in range(args.runs):
            (d / "rootfs.ext4").write_bytes(b"\0" * (1 << 20))
            floors.append(floor_once(binary, d, kernel))
            mvms.append(mvm_once(d, kernel, i))
    f, m = statistics.median(floors), statistics.median(mvms)
    print(f"firecracker + 4 calls until InstanceStart (floor): median {f * 1000:.1f} ms "
          f"(min {min(floors) * 1000:.1f}, max {max(floors) * 1000:.1f})")  # fmt: skip
    print(f"mvm launch until InstanceStart accepted:         median {m * 1000:.1f} ms "
          f"(min {min(mvms) * 1000:.1f}, max {max(mvms) * 1000:.1f})")  # fmt: skip
    print(f"ratio mvm/floor: {m / f:.2f} ({args.runs} paired runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
