"""Training: losses, optimisers, the sharded train step, checkpoints, metrics and the gin-configured loop.

Import the pieces from their modules (``alexatm_jax.training.trainer.train`` is the gin entry point); this
package init stays empty so that importing one piece does not pull in TensorFlow or orbax.
"""
