"""Fixtures for the CLI tests: a fresh store and the test app loaded on it."""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

APPS = Path(__file__).parent / "apps"
_names = itertools.count()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def app_env(store: Path) -> dict[str, str]:
    return {"CLI_TEST_STORE": str(store)}


@pytest.fixture
def cliapp(store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The test app, imported in this process on the test's store (to enqueue and inspect)."""
    monkeypatch.setenv("CLI_TEST_STORE", str(store))
    spec = importlib.util.spec_from_file_location(f"cliapp_{next(_names)}", APPS / "cliapp.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    module.engine.close()
