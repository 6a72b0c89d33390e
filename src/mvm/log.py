"""Loggers that import :mod:`logging` only when something is logged.

``import logging`` costs ≈10 ms, a tenth of the time ``mvmctl run`` spends
before QEMU starts; the hot path logs nothing unless ``-v`` is given.  The
first real use attaches the library's ``NullHandler`` to the ``mvm`` logger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging


class LazyLogger:
    """Stands in for ``logging.getLogger(name)`` until first used."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str):
        self._name = name
        self._logger: logging.Logger | None = None

    def _get(self) -> logging.Logger:
        if self._logger is None:
            import logging

            root = logging.getLogger("mvm")
            if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
                root.addHandler(logging.NullHandler())
            self._logger = logging.getLogger(self._name)
        return self._logger

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._get(), attr)


def get_logger(name: str) -> LazyLogger:
    return LazyLogger(name)
