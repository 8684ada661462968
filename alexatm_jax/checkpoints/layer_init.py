"""A smaller student from a teacher's layers ("shrink and fine-tune", as DistilBERT and DistilBART start):
same widths, fewer encoder and/or decoder layers, each student layer a copy of a chosen teacher layer;
embeddings, final norms and the logits head copied as they are.

The trainer calls it when ``train.init_from`` holds a model with other layer counts (or ``train.init_layers``
is given)::

    train.init_from = '/runs/teacher'
    train.init_layers = {'encoder': 'every_other', 'decoder': [0, 2, 5]}   # None: evenly spaced

Works on either parameter layout (unrolled ``layers_<i>`` or scanned ``layers`` with a leading layer axis) on
both sides, on numpy or JAX arrays; the caller places the result on its mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

import numpy as np

from alexatm_jax.model import param_layout
from alexatm_jax.model.config import ModelConfig

LayerSpec = Union[None, str, Sequence[int]]
SIDES = ("encoder", "decoder")
# Fields that may differ between teacher and student: layer counts, the parameter layout and what only affects
# computation (dropout, dtypes, remat). Every other field shapes parameters or the function computed.
FREE_FIELDS = {"encoder_layers", "decoder_layers", "scan_layers", "remat_policy", "attention_impl", "dtype",
               "param_dtype", "dropout_rate", "attention_dropout_rate"}


def choose_layers(spec: LayerSpec, teacher_layers: int, student_layers: int, side: str) -> list[int]:
    """Teacher layer indices (increasing, distinct) for the ``student_layers`` layers of ``side``.

    ``spec``: None or ``"evenly"`` (spread over the depth, first layer included: 6 -> 3 gives [0, 2, 4], every
    other one, DistilBERT's choice); ``"every_other"`` (0, 2, 4, ...; needs the teacher to have enough);
    ``"first"``; ``"last"``; or an explicit list."""
    if student_layers > teacher_layers:
        raise ValueError(f"the student has {student_layers} {side} layers, more than the teacher's {teacher_layers}: "
                         "a student can only take a subset of its teacher's layers")
    if spec is None or spec == "evenly":
        return [int(i * teacher_layers // student_layers) for i in range(student_layers)]
    if spec == "every_other":
        chosen = list(range(0, teacher_layers, 2))[:student_layers]
        if len(chosen) < student_layers:
            raise ValueError(f"{side}: 'every_other' gives {len(chosen)} of the teacher's {teacher_layers} layers, "
                             f"the student needs {student_layers}: use 'evenly' or a list of indices")
        return chosen
    if spec == "first":
        return list(range(student_layers))
    if spec == "last":
        return list(range(teacher_layers - student_layers, teacher_layers))
    if isinstance(spec, str):
        raise ValueError(f"{side} layer choice {spec!r} is unknown: use 'evenly', 'every_other', 'first', 'last' "
                         "or a list of teacher layer indices")
    chosen = list(spec)
    if (len(chosen) != student_layers or any(not isinstance(i, (int, np.integer)) or isinstance(i, bool)
                                             for i in chosen)
            or any(not 0 <= i < teacher_layers for i in chosen) or sorted(set(chosen)) != chosen):
        raise ValueError(f"{side} layers {chosen!r}: give {student_layers} distinct increasing teacher layer indices "
                         f"in 0..{teacher_layers - 1}")
    return [int(i) for i in chosen]


def check_compatible(teacher: ModelConfig, student: ModelConfig) -> None:
    """Raises ValueError naming every field (other than layer counts and computation settings) that differs."""
    differing = [f"{f.name} {getattr(teacher, f.name)!r} vs {getattr(student, f.name)!r}"
                 for f in dataclasses.fields(ModelConfig)
                 if f.name not in FREE_FIELDS and getattr(teacher, f.name) != getattr(student, f.name)]
    if differing:
        raise ValueError("the initialising model (init_from) and this run's model differ in " + "; ".join(differing)
                         + ": only layer counts may differ (start from a model of the same widths, or bind this "
                           "run's ModelConfig to its values)")


def _stack(trees: Sequence[Any]) -> Any:
    if isinstance(trees[0], dict):
        return {k: _stack([t[k] for t in trees]) for k in trees[0]}
    return np.stack([np.asarray(t) for t in trees])


def student_params_from_teacher(teacher_params: Any, teacher_config: ModelConfig, student_config: ModelConfig,
                                encoder_layers: LayerSpec = None, decoder_layers: LayerSpec = None
                                ) -> tuple[Any, dict[str, list[int]]]:
    """(student parameters, ``{"encoder": [...], "decoder": [...]}`` chosen teacher layers). The result has
    exactly the tree of ``EncoderDecoderModel(student_config).abstract_params()`` (checked)."""
    from alexatm_jax.models import EncoderDecoderModel

    check_compatible(teacher_config, student_config)
    chosen = {side: choose_layers(spec, getattr(teacher_config, f"{side}_layers"),
                                  getattr(student_config, f"{side}_layers"), side)
              for side, spec in zip(SIDES, (encoder_layers, decoder_layers))}
    params = dict(teacher_params)
    for side in SIDES:
        tree = dict(teacher_params[side])
        layers = param_layout.layer_trees(tree, getattr(teacher_config, f"{side}_layers"),
                                          teacher_config.scan_layers)
        for key in [k for k in tree if k == "layers" or k.startswith("layers_")]:
            del tree[key]
        picked = [layers[i] for i in chosen[side]]
        if student_config.scan_layers:
            tree["layers"] = _stack(picked)
        else:
            tree.update({f"layers_{i}": layer for i, layer in enumerate(picked)})
        params[side] = tree
    EncoderDecoderModel(student_config).check_params(params, "the student parameters built from the teacher")
    return params, chosen
