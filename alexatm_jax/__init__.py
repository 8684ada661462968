"""alexatm_jax: AlexaTM-family multilingual encoder-decoder models in JAX/Flax.

``lm = alexatm_jax.load(DIR)`` loads a converted or trained model (see ``alexatm_jax.api``).
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import alexatm_jax` (and `alexatm-jax --help`) must not pay for importing JAX.
    if name in ("load", "LanguageModel"):
        from alexatm_jax import api
        return getattr(api, name)
    if name in ("ModelConfig", "PRESETS", "get_preset"):
        from alexatm_jax.model import config
        return getattr(config, name)
    raise AttributeError(f"module 'alexatm_jax' has no attribute {name!r}")
