"""Files that run inside the guest, shipped as package data.

``initramfs-init.sh`` loads the virtio modules and switches to the rootfs;
``init.sh`` is PID 1 in the rootfs; ``agent.sh`` is the agent stub.  The
spec-dependent part (entrypoint, services, uids) is rendered by
:mod:`mvm.build.render` into ``/etc/mvm/`` so these scripts stay static.
"""

from __future__ import annotations

from importlib.resources import files


def read(name: str) -> bytes:
    """Return the bytes of a guest file shipped in this package."""
    return (files(__package__) / name).read_bytes()


GUEST_FILES = ("initramfs-init.sh", "init.sh", "agent.sh")
