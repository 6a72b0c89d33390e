"""The host side of the guest agent: frame codec (:mod:`.codec`), typed
messages (:mod:`.protocol`) and a blocking client (:mod:`.client`) that speaks
to the VM's sidecar multiplexer (:mod:`mvm.runtime.sidecar`).  The protocol
is documented in docs/agent-protocol.md."""
