"""Student initialisation from a subset of the teacher's layers (checkpoints/layer_init.py), and its use by
`train.init_from` + `train.init_layers`."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from alexatm_jax.checkpoints import layer_init
from alexatm_jax.checkpoints.model_dir import abstract_params, read_config, restore_params
from alexatm_jax.model.config import get_preset
from alexatm_jax.models import EncoderDecoderModel

from test_train_support import copy_batches, run_train


def _config(layers, scan=False, **changes):
    return get_preset("tiny").replace(vocab_size=64, d_model=32, num_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48,
                                      encoder_layers=layers[0], decoder_layers=layers[1], scan_layers=scan,
                                      dropout_rate=0.0, **changes)


def _layer(params, side, index, scanned):
    tree = params[side]
    if scanned:
        return jax.tree_util.tree_map(lambda x: np.asarray(x)[index], tree["layers"])
    return jax.tree_util.tree_map(np.asarray, tree[f"layers_{index}"])


def _assert_same(a, b):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("teacher_scan,student_scan", [(False, False), (False, True), (True, False), (True, True)])
def test_student_layers_are_exact_copies_of_the_chosen_teacher_layers(teacher_scan, student_scan):
    teacher_config, student_config = _config((4, 3), teacher_scan), _config((2, 2), student_scan)
    teacher = EncoderDecoderModel(teacher_config).init_params(jax.random.PRNGKey(0))
    student, chosen = layer_init.student_params_from_teacher(teacher, teacher_config, student_config,
                                                             encoder_layers="every_other", decoder_layers=[0, 2])
    assert chosen == {"encoder": [0, 2], "decoder": [0, 2]}
    for side in ("encoder", "decoder"):
        for i, t in enumerate(chosen[side]):
            _assert_same(_layer(student, side, i, student_scan), _layer(teacher, side, t, teacher_scan))
        rest = {k: v for k, v in teacher[side].items() if not k.startswith("layers")}
        _assert_same({k: v for k, v in student[side].items() if not k.startswith("layers")}, rest)
    _assert_same({k: v for k, v in student.items() if k not in ("encoder", "decoder")},
                 {k: v for k, v in teacher.items() if k not in ("encoder", "decoder")})
    EncoderDecoderModel(student_config).check_params(student)


def test_keeping_every_layer_reproduces_the_teachers_logits_in_either_layout():
    teacher_config = _config((3, 2))
    teacher = EncoderDecoderModel(teacher_config).init_params(jax.random.PRNGKey(1))
    tokens = np.random.RandomState(0).randint(3, 64, (2, 7)).astype(np.int32)
    batch = {"encoder_input_tokens": tokens, "decoder_input_tokens": tokens, "decoder_target_tokens": tokens}
    expected = EncoderDecoderModel(teacher_config).logits(teacher, batch)
    for scan in (False, True):
        student_config = _config((3, 2), scan)
        student, _ = layer_init.student_params_from_teacher(teacher, teacher_config, student_config)
        np.testing.assert_allclose(EncoderDecoderModel(student_config).logits(student, batch), expected,
                                   rtol=1e-5, atol=1e-5)


def test_layer_choices_and_their_errors():
    assert layer_init.choose_layers(None, 6, 3, "encoder") == [0, 2, 4]
    assert layer_init.choose_layers("every_other", 6, 3, "encoder") == [0, 2, 4]
    assert layer_init.choose_layers("evenly", 12, 4, "encoder") == [0, 3, 6, 9]
    assert layer_init.choose_layers("first", 6, 2, "decoder") == [0, 1]
    assert layer_init.choose_layers("last", 6, 2, "decoder") == [4, 5]
    assert layer_init.choose_layers([1, 5], 6, 2, "decoder") == [1, 5]
    for spec, message in ((["x"], "decoder layers"), ([0], "give 2 distinct"), ([0, 6], "in 0..5"),
                          ([2, 2], "distinct increasing"), ([3, 1], "distinct increasing"), ("half", "unknown")):
        with pytest.raises(ValueError, match=message):
            layer_init.choose_layers(spec, 6, 2, "decoder")
    with pytest.raises(ValueError, match="'every_other' gives 2 of the teacher's 4 layers, the student needs 3"):
        layer_init.choose_layers("every_other", 4, 3, "encoder")
    with pytest.raises(ValueError, match="student has 5 encoder layers, more than the teacher's 4"):
        layer_init.choose_layers(None, 4, 5, "encoder")


def test_different_widths_are_named():
    with pytest.raises(ValueError, match=r"d_model 32 vs 64.*num_heads 2 vs 4"):
        layer_init.check_compatible(_config((2, 2)), _config((2, 2)).replace(d_model=64, num_heads=4))
    layer_init.check_compatible(_config((4, 4)), _config((1, 2), True).replace(dropout_rate=0.3, dtype="bfloat16"))


def test_train_init_from_a_deeper_model_takes_the_chosen_layers(tmp_path):
    """`train(init_from=deeper run, init_layers=...)`: the first step's learning rate is 0 (the start of the
    warmup), so the student saved after it is exactly the chosen teacher layers."""
    common = dict(batch_size=2, task_feature_lengths={"inputs": 8, "targets": 8}, batch_iterator_fn=copy_batches,
                  async_checkpointing=False, checkpoint_every_steps=1, warmup_steps=1, learning_rate=1e-3)
    teacher_dir, student_dir = str(tmp_path / "teacher"), str(tmp_path / "student")
    run_train(model_dir=teacher_dir, train_steps=1, model_overrides=dict(encoder_layers=4, decoder_layers=3), **common)
    run_train(model_dir=student_dir, train_steps=1, init_from=teacher_dir,
              init_layers={"encoder": "last", "decoder": [0, 2]}, **common)
    teacher = restore_params(teacher_dir, abstract_params(read_config(teacher_dir)))[1]
    student = restore_params(student_dir, abstract_params(read_config(student_dir)))[1]
    assert read_config(student_dir).encoder_layers == 2
    for side, picks in (("encoder", [2, 3]), ("decoder", [0, 2])):
        for i, t in enumerate(picks):
            _assert_same(_layer(student, side, i, read_config(student_dir).scan_layers),
                         _layer(teacher, side, t, read_config(teacher_dir).scan_layers))
    with pytest.raises(ValueError, match="d_model 128 vs 64"):
        run_train(model_dir=str(tmp_path / "other"), train_steps=1, init_from=teacher_dir,
                  model_overrides=dict(d_model=64), **common)
