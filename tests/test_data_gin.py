"""The shipped gin file for mixture rates binds what it documents, and a run file's override reaches the
mixture (an empty or broken file fails here: every value is read back from gin itself)."""

import os

import gin
import pytest

from alexatm_jax.data import tasks

GIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs", "data",
                   "alexatm_mixture.gin")


def test_mixture_gin_file_binds_the_alexatm_rates():
    try:
        gin.parse_config_files_and_bindings([GIN], [], finalize_config=False)
        assert gin.query_parameter("alexatm_mixture.alpha") == 0.5
        assert gin.query_parameter("alexatm_mixture.objective_rates") == {"denoise": 0.8, "clm": 0.2}
    finally:
        gin.clear_config()


def test_override_after_the_file_reaches_the_mixture():
    try:
        gin.parse_config_files_and_bindings([GIN], ["alexatm_mixture.alpha = 0.3",
                                                    "alexatm_mixture.objective_rates = {'denoise': 0.5, 'clm': 0.5}"],
                                            finalize_config=False)
        alpha, rates = tasks.mixture_settings()
        assert alpha == 0.3 and rates == {"denoise": 0.5, "clm": 0.5}
        probs = tasks.language_probabilities({"en": 100.0, "ta": 1.0}, alpha)
        assert probs["ta"] == pytest.approx(1 / (1 + 100 ** 0.3))
    finally:
        gin.clear_config()
