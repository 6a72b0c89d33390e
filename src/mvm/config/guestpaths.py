"""Rules for paths that come from outside mvm: which names can be written
into an image at all, and which guest paths a project may not write.

**Names.** Image and drive owners are fixed by a ``debugfs -w -f SCRIPT``
session that names each path inside double quotes.  A name holding ``"``,
``\\``, a newline or another control character could end that quoting and
inject debugfs commands (``dump``/``rdump``/``write`` read and write *host*
files), so :func:`unsafe_name` refuses such names, wherever they come from
(a ``copy`` tree, a Debian package, ``[files]``, a ``-v`` directory).  Names
that are not valid UTF-8 are refused too (the script could not hold them),
and so are paths longer than :data:`PATH_BYTES_MAX`.

**Reserved paths**, two kinds, one list each:

* **mvm's own files.** The builder writes them after the project's files
  (``/init``, ``/etc/mvm/…``, the agent, the users), so a project file there
  would validate and then be silently replaced.
* **Mounted over at boot.** ``/init`` mounts a filesystem on these (a tmpfs,
  devtmpfs, proc, sysfs), so whatever the image holds there is hidden;
  a sealed image's home is a private tmpfs too.

``mvmctl validate`` checks each declared destination; the builder checks the
path every written entry *resolves* to, so neither a ``copy`` tree that holds
``etc/mvm/…`` nor a symlink that points into ``/etc/mvm`` gets through.  A
unit test checks that every file the builder writes is in :data:`MVM_FILES`
or under :data:`MVM_TREES`, so this list stays the one truth.
"""

from __future__ import annotations

import re

# quote, backslash, C0/C1 control characters, DEL, and undecodable bytes (surrogateescape)
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f-\x9f\udc80-\udcff]')


# PATH_MAX - 1: no guest program could open a longer path, and debugfs reads its script
# in BUFSIZ (8 KiB) lines, so a longer one would be split into two commands
PATH_BYTES_MAX = 4095


def unsafe_name(name: str) -> bool:
    """Whether ``name`` cannot be named safely in a debugfs script."""
    return _UNSAFE.search(name) is not None or len(name.encode(errors="replace")) > PATH_BYTES_MAX


def name_problem(where: str, name: str) -> str | None:
    """The one-line error for an unsafe ``name`` found in ``where``, or None."""
    if not unsafe_name(name):
        return None
    return (
        f"{where}: unsupported file name {name!r} (a quote, backslash or control character, "
        f"or over {PATH_BYTES_MAX} bytes: debugfs could not be told about it)"
    )


MVM_FILES = (
    "/init", "/bin/busybox", "/usr/local/bin/mvm-guest-agent", "/etc/fstab", "/etc/hostname",
    "/etc/passwd", "/etc/group", "/etc/shadow", "/etc/resolv.conf", "/etc/hosts", "/etc/profile",
)  # fmt: skip
MVM_TREES = ("/etc/mvm", "/lib/modules/mvm", "/.mvm")  # /.mvm: an OCI image's mvm tools
# systemd guests: the units, generator and settings mvm writes (a project may add its own
# units, but not under mvm's names)
SYSTEMD_FILES = (
    "/etc/machine-id", "/etc/mtab", "/etc/systemd/system/default.target",
    "/etc/systemd/system-generators/mvm-credentials", "/etc/systemd/system.conf.d/mvm.conf",
)  # fmt: skip
# units a microVM has no use for (no dbus, no logins, no udev, read-only /etc); each
# one costs boot time under TCG or fails noisily
SYSTEMD_MASKED = (
    "getty.target", "systemd-logind.service", "systemd-user-sessions.service",
    "systemd-firstboot.service", "systemd-sysusers.service", "modprobe@.service",
    "systemd-pstore.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount", "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service", "systemd-ask-password-wall.path",
    "systemd-ask-password-console.path", "systemd-boot-system-token.service",
    "systemd-hwdb-update.service", "systemd-journal-catalog-update.service",
    "systemd-machine-id-commit.service", "e2scrub_reap.service",
    # measured with systemd-analyze blame under TCG: each 0.6-1.8 s and of no use here
    # (the kernel's CRNG is trusted from the CPU, mvm loads its modules itself, the root
    # has no fstab line, the journal stays in /run, nothing uses hugepages)
    "systemd-random-seed.service", "systemd-modules-load.service",
    "systemd-remount-fs.service", "systemd-journal-flush.service", "dev-hugepages.mount",
)  # fmt: skip
_SYSTEMD_MVM = re.compile(r"/etc/systemd/system/(?:[^/]+\.wants/)?mvm-[^/]*")
MOUNTED = ("/dev", "/proc", "/sys", "/run", "/tmp")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def reserved(path: str, sealed_home: str | None = None) -> str | None:
    """Why the normalised absolute guest ``path`` may not come from the project, or None.

    ``sealed_home`` is the entrypoint's home when the image is sealed (it is then a
    tmpfs at boot)."""
    if path in MVM_FILES or any(_under(path, t) for t in MVM_TREES):
        return "is written by mvm itself"
    masked = path.startswith("/etc/systemd/system/") and path[20:] in SYSTEMD_MASKED
    if path in SYSTEMD_FILES or masked or _SYSTEMD_MVM.fullmatch(path):
        return "is written by mvm itself (systemd guests)"
    for top in MOUNTED:
        if _under(path, top):
            return f"is hidden at boot: the guest mounts a filesystem on {top}"
    if sealed_home and _under(path, sealed_home):
        return f"is hidden at boot: a sealed image's home {sealed_home} is a private tmpfs"
    return None
