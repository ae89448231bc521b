"""Shared fixtures for the spec tests: the shipped catalog and the example spec files."""

from __future__ import annotations

from pathlib import Path

import pytest

from terrazzo.catalog.load import Catalog, load_catalog

SPECS = Path(__file__).parent / "data" / "specs"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="session")
def specs() -> Path:
    return SPECS
