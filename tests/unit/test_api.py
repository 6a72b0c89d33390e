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


def test_every_public_error_is_exported() -> None:
    errors = importlib.import_module("mvm.errors")
    public = {
        name for name in dir(errors)
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), Exception)
        and getattr(errors, name).__module__ == "mvm.errors"
    }  # fmt: skip
    assert public <= set(mvm.__all__), public - set(mvm.__all__)
    assert issubclass(mvm.LaunchError, mvm.BackendError)


def test_dir_lists_the_api() -> None:
    assert set(mvm.__all__) <= set(dir(mvm))


def test_library_logger_never_prints(capsys: object) -> None:
    import logging

    from mvm.log import get_logger

    get_logger("mvm.test").warning("should go nowhere")
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("mvm").handlers)
