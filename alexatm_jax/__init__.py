"""alexatm_jax: AlexaTM-family multilingual encoder-decoder models in JAX/Flax."""

__version__ = "0.1.0"
