"""Placeholder while the registry tests are written."""
import urllib.request

import pytest


@pytest.mark.integration
def test_mlflow_server_health(mlflow_server: str) -> None:
    with urllib.request.urlopen(f"{mlflow_server}/health", timeout=5) as resp:
        assert resp.status == 200
