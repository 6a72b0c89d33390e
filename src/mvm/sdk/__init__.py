"""The sandbox SDK: :class:`Sandbox` and :class:`AsyncSandbox`, shaped for code
that runs many short-lived VMs (AI agents, test runners).

Built on the runtime the CLI uses (``mvm.up`` / ``runtime.start``, the guest
agent API in :mod:`mvm.runtime.guest`, ``fork``, ``down``): a sandbox is an
ordinary mvm VM that ``mvmctl ls`` lists and ``mvmctl down`` removes.
See docs/sdk.md.
"""

from __future__ import annotations

from mvm.sdk.aio import AsyncSandbox
from mvm.sdk.result import Chunk, CommandResult
from mvm.sdk.sandbox import Files, Sandbox

__all__ = ["AsyncSandbox", "Chunk", "CommandResult", "Files", "Sandbox"]
