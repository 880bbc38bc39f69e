"""The Dockerfile passes hadolint (the image itself cannot be built here: no Docker daemon)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration  # hadolint runs as a subprocess
def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_copies_what_the_pipeline_needs() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    for needed in ("params.yaml", "dvc.yaml", "data.dvc", "mtbert", "flows", "torch==2.13.0"):
        assert needed in text, needed
