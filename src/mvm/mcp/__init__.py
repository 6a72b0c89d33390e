"""``mvmctl mcp``: sandboxes as MCP tools a model calls directly (docs/sdk.md).

``policy.py`` says what a model may do (templates, how many sandboxes, how
long, which network presets, which secret bindings by name); ``manager.py``
keeps this server's sandboxes (SDK :class:`~mvm.sdk.Sandbox` objects, so
ordinary VMs named ``mcp-…``) within that policy; ``server.py`` exposes the
manager as tools and resources with the official ``mcp`` SDK (imported only
there: ``pip install 'mvmctl[mcp]'``).
"""
