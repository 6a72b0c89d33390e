"""The public API is small, complete and importable."""

from __future__ import annotations

import importlib

import mvm


def test_all_names_resolve() -> None:
    for name in mvm.__all__:
        assert getattr(mvm, name) is not None


def test_all_is_sorted_and_unique() -> None:
    assert mvm.__all__ == sorted(set(mvm.__all__))


def test_errors_share_one_root() -> None:
    errors = importlib.import_module("mvm.errors")
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == "mvm.errors":
            assert issubclass(obj, errors.MvmError)
