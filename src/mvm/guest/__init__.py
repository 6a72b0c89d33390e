"""Files that run inside the guest, shipped as package data.

``initramfs-init.sh`` loads the virtio modules and switches to the rootfs;
``init.sh`` is PID 1 in the rootfs; ``agent/`` is the guest agent's C source
(compiled on the host by :mod:`mvm.image.guestbin`, protocol in
docs/agent-protocol.md);
``rootops.sh`` (with the freestanding ``mvm-reseed``, source in
``agent/reseed.c``, compiled like the agent) holds the root operations a restored guest needs
(remount, identity, reseed; docs/snapshots.md);
``guestdata.sh`` (and ``guestdata-wipe.sh`` after its consumers) unpacks the
guest-data drive of hypervisors without fw_cfg (Firecracker); ``channels.sh``
picks /init's channel transport (virtio-serial, or vsock with ``mvm-vsock``,
source in ``agent/vsock.c``);
``drives.sh``/``credentials.sh`` mount the config/secrets/data drives and
unpack credentials (init.d), ``env-drives.sh`` puts config and secrets into
the entrypoint's environment (env.d).  The
spec-dependent part (entrypoint, services, uids) is rendered by
:mod:`mvm.image.render` into ``/etc/mvm/`` so these scripts stay static.
"""

from __future__ import annotations

from importlib.resources import files


def read(name: str) -> bytes:
    """Return the bytes of a guest file shipped in this package."""
    return (files(__package__) / name).read_bytes()


# what this package's /init understands; images record it so a newer mvm can
# refuse features an older image's /init would silently ignore
GUEST_FEATURES = ("drives", "credentials", "agent", "rootops", "network", "guestdata", "vsock")

GUEST_FILES = (
    "initramfs-init.sh", "init.sh", "drives.sh", "credentials.sh", "env-drives.sh",
    "rootops.sh", "network.sh", "env-network.sh", "credentials-unpack.sh", "guestdata.sh",
    "guestdata-wipe.sh", "channels.sh",
)  # fmt: skip
# where the builder installs the extension scripts (init.d: sourced by /init as
# root before the entrypoint; env.d: sourced by each launcher as the entrypoint uid)
EXTENSIONS = {
    "guestdata.sh": "/etc/mvm/init.d/05-guestdata.sh",
    "drives.sh": "/etc/mvm/init.d/10-drives.sh",
    "credentials.sh": "/etc/mvm/init.d/20-credentials.sh",
    "env-drives.sh": "/etc/mvm/env.d/50-drives.sh",
    "network.sh": "/etc/mvm/init.d/30-network.sh",
    "env-network.sh": "/etc/mvm/env.d/60-network.sh",
    "guestdata-wipe.sh": "/etc/mvm/init.d/39-guestdata-wipe.sh",
    "credentials-unpack.sh": "/etc/mvm/lib/credentials-unpack.sh",  # also in the initramfs
    "channels.sh": "/etc/mvm/lib/channels.sh",  # /init's channel transport (virtio-serial/vsock)
}
