"""Beyond one host: place sandboxes across a Ray cluster (docs/cluster.md).

``placement`` is pure (hosts + request → assignments); ``engine`` is the only
module that imports Ray; ``worker`` runs the ordinary runtime on each host;
``controller`` keeps the desired state and reconciles; ``local`` starts a
cluster on this machine; ``client`` and ``sandbox`` are the library API.
Importing ``mvm.cluster`` does not import Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mvm.cluster.sandbox import Sandbox


def __getattr__(name: str) -> Any:
    if name == "Sandbox":
        from mvm.cluster.sandbox import Sandbox

        return Sandbox
    raise AttributeError(name)


__all__ = ["Sandbox"]
