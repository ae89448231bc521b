"""Shared fixtures: the shipped catalog and the example spec files. Puts tests/ on every child process's path,
so worker processes and Ray actors can import the drill tools (`drills:fn`) the tests name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from terrazzo.catalog.catalog_loader import Catalog, load_catalog

pytest_plugins = ["vllm_live"]  # the session's one live vLLM server (tests/vllm_live.py)

SPECS = Path(__file__).parent / "data" / "specs"
TESTS = str(Path(__file__).parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="session")
def specs() -> Path:
    return SPECS
