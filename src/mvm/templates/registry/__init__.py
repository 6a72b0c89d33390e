"""Template registries: an S3-compatible bucket or a local directory.

``from_env()`` picks one from ``MVM_TEMPLATE_REGISTRY*``; push/pull live in
:mod:`mvm.templates.sync` and only use the small :class:`Registry` interface.
"""

from __future__ import annotations

from mvm.templates.registry.base import (
    NullProgress,
    ObjectInfo,
    Progress,
    Registry,
    from_env,
)

__all__ = ["NullProgress", "ObjectInfo", "Progress", "Registry", "from_env"]
