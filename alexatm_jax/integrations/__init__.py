"""Adapters to third-party evaluation frameworks (optional extras; nothing here is imported by the package).

* ``alexatm_jax.integrations.lm_eval``: the ``alexatm_jax`` model type of EleutherAI's lm-evaluation-harness
  (``pip install -e ".[lm-eval]"``); importing it registers the model type.
"""
