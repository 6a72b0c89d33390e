"""The host side of the guest agent: frame codec (:mod:`.codec`), typed
messages (:mod:`.protocol`) and a blocking client (:mod:`.client`) that speaks
to the VM's sidecar multiplexer (:mod:`mvm.runtime.sidecar`).  The protocol
is documented in docs/agent-protocol.md.

Modules on ``mvmctl exec``'s path (this package, :mod:`.codec`,
:mod:`.protocol`, :mod:`.client`) import neither ``typing`` nor
``dataclasses`` at run time: together they cost more than an exec round trip.
"""

MUX_SOCKET = "agent-mux.sock"  # the sidecar's socket in the VM's run directory
