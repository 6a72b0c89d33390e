"""One error tree for the whole library.

Every failure a user can cause or meet is an ``MvmError``; the CLI turns it
into a one-line message and a non-zero exit, so nothing below the CLI should
ever let a foreign exception (OSError, CalledProcessError, botocore errors…)
escape un-wrapped.  Wrap with ``raise SomeError(...) from exc`` at the seam.

    MvmError
    ├── ConfigError          mvm.toml or CLI values are invalid (names file + key)
    ├── BuildError           image build failed (kernel fetch, packages, mkfs…)
    │   └── DiskFullError    ran out of space while building
    ├── BackendError         the hypervisor failed to start or answer
    │   ├── HypervisorMissing  qemu-system-x86_64 not installed
    │   └── AgentError       the guest agent refused, failed or is unreachable
    │       └── ProtocolError  the guest agent sent something invalid
    ├── StateError           VM/template records: conflicts and lookups
    │   ├── NotFoundError    unknown VM or template
    │   └── ConflictError    name already in use / wrong lifecycle state
    ├── DriveError           --volume / drive images are invalid
    ├── CredentialError      credentials invalid or too large
    ├── VarsError            generated vars: a generator failed, a var is missing, a bundle is bad
    ├── MetadataError        an image's revision.json is malformed or of an unknown schema
    ├── TemplateError        template records and revisions
    ├── RegistryError        push/pull/verify against a registry
    │   └── IntegrityError   a checksum did not match
    │       └── TrustError   a revision is unsigned or signed by a key nobody trusts
    └── ClusterError         the cluster layer: no cluster, nothing fits, a host failed

Messages must never contain secret values; errors carry context fields
(``hint``, ``log_tail``) that the CLI may show below the one line.
"""

from __future__ import annotations


class MvmError(Exception):
    """Root of every error mvm raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, log_tail: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.log_tail = log_tail

    def __str__(self) -> str:
        return self.message


class ConfigError(MvmError):
    """Invalid mvm.toml, CLI value or environment setting."""

    exit_code = 2


class BuildError(MvmError):
    """The image could not be built."""


class DiskFullError(BuildError):
    """No space left while writing build output; nothing half-built is kept."""


class BackendError(MvmError):
    """The hypervisor failed to start, answer or stop."""


class HypervisorMissing(BackendError):
    """The hypervisor binary is not installed."""


class AgentError(BackendError):
    """The guest agent is unreachable, refused a request or reported a failure."""


class ProtocolError(AgentError):
    """The guest agent (or the sidecar) sent a frame or message that is not valid."""


class StateError(MvmError):
    """A VM or template record is inconsistent with the request."""


class NotFoundError(StateError):
    """Unknown VM or template."""


class ConflictError(StateError):
    """Name already in use, or the VM is in the wrong state for the verb."""


class DriveError(MvmError):
    """A --volume specification or drive image is invalid."""

    exit_code = 2


class CredentialError(MvmError):
    """A credential is invalid, unreadable or too large."""

    exit_code = 2


class VarsError(MvmError):
    """A generator failed or produced the wrong files, a var is missing or cannot be
    decrypted, or an export bundle is malformed (messages name vars, never values)."""


class NetworkError(MvmError):
    """A network setting (preset, allow rule, secret binding, forward) is invalid,
    or the VM's egress proxy could not start."""

    exit_code = 2


class MetadataError(MvmError):
    """An image's ``revision.json`` is malformed, or written for a schema this mvm
    does not know (it names the file and the key)."""


class TemplateError(MvmError):
    """Template records and revisions."""


class RegistryError(MvmError):
    """Push, pull or verify against a template registry failed."""


class IntegrityError(RegistryError):
    """An artefact does not match its recorded sha256."""


class TrustError(IntegrityError):
    """Trust is configured and a revision is unsigned or its signer is not trusted."""


class SnapshotError(MvmError):
    """A snapshot cannot be saved, or cannot be restored on this host (mismatch, damage)."""


class DeadlineError(MvmError):
    """A call did not finish within its timeout (SDK calls, MCP tools)."""


class ClusterError(MvmError):
    """The cluster layer (``mvmctl cluster``): no cluster to connect to, the Ray extra
    missing, a request that fits no host, or a host that failed a start."""
