"""Each package's ``__all__`` names exactly what it exports, and all of it exists."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "module", ["bisik.crypto", "bisik.proto", "bisik.client", "bisik.server", "bisik.cli"]
)
def test_all_is_importable(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__all__, module
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"
    assert sorted(mod.__all__) == sorted(set(mod.__all__))
