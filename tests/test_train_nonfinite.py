"""A diverging run stops with a message naming the step, and its last checkpoint stays a good one."""

import jax
import numpy as np
import pytest

from alexatm_jax.training import checkpointing, trainer
from test_train_support import copy_batches, run_train


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model_dir = tmp_path / "run"
    settings = dict(model_dir=str(model_dir), train_steps=20, batch_size=2,
                    task_feature_lengths={"inputs": 16, "targets": 16}, mesh="data=-1", model_preset="tiny",
                    model_overrides={"d_model": 32, "num_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
                                     "dropout_rate": 0.0},
                    batch_iterator_fn=copy_batches, warmup_steps=1, clip_norm=None, log_every_steps=1,
                    checkpoint_every_steps=1, async_checkpointing=False, tensorboard=False)
    # A learning rate of 1e30 sends the weights past float32's range within a few updates.
    with pytest.raises(trainer.TrainingError, match=r"Non-finite loss or gradients at step (\d+)") as caught:
        run_train(learning_rate=1e30, min_learning_rate=1e30, **settings)
    message = str(caught.value)
    bad_step = int(message.split("at step ")[1].split()[0])
    assert "the last good checkpoint is step" in message and "StepConfig.nonfinite='skip'" in message
    good_step = int(message.split("the last good checkpoint is step ")[1].split()[0])
    assert good_step < bad_step

    manager = checkpointing.make_manager(str(model_dir), keep=3, keep_best=0, async_save=False)
    assert manager.latest_step() == good_step
    from alexatm_jax.checkpoints.model_dir import abstract_params, read_config, restore_params
    _, params = restore_params(model_dir, abstract_params(read_config(model_dir)))
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(params))
