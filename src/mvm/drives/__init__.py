"""Config, secrets and data drives: host directories and in-memory files
turned into ext4 images that the guest mounts at boot.

The contract (from the seeds) is fixed by guest path:

======================  ===========  ===================================================
guest path              device       what the guest sees
======================  ===========  ===================================================
``/mnt/config``         ``vdb``      read-only; every file 0444, directories 0555, root
``/mnt/secrets``        ``vdc``      read-only; files 0400, directories 0500, owned by
                                     the entrypoint's uid
``/any/path`` + SIZE    ``vdd``…     read-write ext4 data volume, created once (seeded
                                     from the host directory) and kept across
                                     ``down``/``up`` of the same VM name
======================  ===========  ===================================================

Config and secrets images are built fresh at every start, without root
(``mkfs.ext4 -d`` from a staging copy, owners fixed with ``debugfs`` by
:func:`mvm.image.rootfs.make_ext4`), inside the VM's private run directory.
The runtime removes them as soon as QEMU has opened them.

**Drive letters.** With virtio-mmio on ``-M microvm`` the guest names
virtio-blk devices in the order of ``-drive``/``-device`` on the command line
(measured: 4 extra drives came up as vdb..vde in argv order).  To keep the
letters fixed when only some drives are given, a zero-length placeholder
(``placeholder.img``: costs no mkfs, shows up as a 0-byte disk) takes the
place of a missing config or secrets drive when a later drive exists.  The
guest mounts only what ``mvm.drives=`` on the kernel command line lists, so
a placeholder is never mounted.
"""

from mvm.drives.images import Attached, layout, materialise, rmtree_force
from mvm.drives.plan import DrivePlan, check_mountpoints, plan, scan_dir
from mvm.drives.spec import (
    CONFIG_MAX,
    CONFIG_PATH,
    SECRETS_MAX,
    SECRETS_PATH,
    DriveFile,
    VolumeSpec,
    check_guest_path,
    parse_size,
    parse_volume,
)
from mvm.drives.volumes import VolumeInfo, list_volumes, remove_volumes, volume_image

__all__ = [
    "CONFIG_MAX",
    "CONFIG_PATH",
    "SECRETS_MAX",
    "SECRETS_PATH",
    "Attached",
    "DriveFile",
    "DrivePlan",
    "VolumeInfo",
    "VolumeSpec",
    "check_guest_path",
    "check_mountpoints",
    "layout",
    "list_volumes",
    "materialise",
    "parse_size",
    "parse_volume",
    "plan",
    "remove_volumes",
    "rmtree_force",
    "scan_dir",
    "volume_image",
]
