"""Secrets that reach the guest without leaking on the host.

:mod:`mvm.secrets.credentials` delivers systemd-style credentials
(``io.systemd.credential:NAME=VALUE``) through fw_cfg or SMBIOS files; the
secrets *drive* lives in :mod:`mvm.drives`.  Both obey one rule: a value is
only ever in a 0600 file inside the VM's 0700 run directory, referenced by
path (``/proc/PID/cmdline`` is world-readable), and removed once QEMU has
read it.
"""

from mvm.secrets.credentials import Credential, parse_credential

__all__ = ["Credential", "parse_credential"]
