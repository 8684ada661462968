"""The shipped gin file for mixture rates parses and sets what it says."""

import os

import gin
import pytest

from alexatm_jax.data import tasks

GIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs", "data",
                   "alexatm_mixture.gin")


def test_mixture_gin_file():
    try:
        gin.parse_config_files_and_bindings([GIN], ["alexatm_mixture.alpha = 0.3"], finalize_config=False)
        alpha, rates = tasks.mixture_settings()
        assert alpha == 0.3 and rates == {"denoise": 0.8, "clm": 0.2}
        probs = tasks.language_probabilities({"en": 100.0, "ta": 1.0}, alpha)
        assert probs["ta"] == pytest.approx(1 / (1 + 100 ** 0.3))
    finally:
        gin.clear_config()
