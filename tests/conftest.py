"""Shared fixtures. Tests run on CPU; multi-device tests start their own subprocesses with virtual devices."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def reference_models(tmp_path_factory):
    """Random AlexaTM reference checkpoints (sharded .bin + index) with the reference's own outputs."""
    from reference_utils import build_reference_models
    return build_reference_models(tmp_path_factory.mktemp("reference"))
