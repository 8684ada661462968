"""The batch features, named once: what the input pipeline yields and what the model, the train step, scoring
and decoding read.

Names are seqio's ``EncDecFeatureConverter`` names. Every feature is a ``[batch, length]`` array with logical
axes ``('batch', 'length')``; ``length`` is the inputs length for ``encoder_*`` features and the targets length
for ``decoder_*`` ones. Segment id 0 marks padding; positions restart at 0 in each packed segment.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions")
BATCH_FEATURES = ENCODER_FEATURES + DECODER_FEATURES
# Loss weights are the only floating-point feature; the rest are token ids, segment ids and positions.
FLOAT_FEATURES = ("decoder_loss_weights",)
# What the module's __call__ takes (loss weights are the loss function's business, not the network's).
MODEL_INPUT_FEATURES = tuple(name for name in BATCH_FEATURES if name not in FLOAT_FEATURES)


def feature_dtype(name: str):
    return np.float32 if name in FLOAT_FEATURES else np.int32


def feature_length_key(name: str) -> str:
    """'inputs' or 'targets': which of TASK_FEATURE_LENGTHS sizes this feature."""
    return "inputs" if name.startswith("encoder_") else "targets"


def model_inputs(batch: Mapping) -> dict:
    """The features of ``batch`` that the network takes as keyword arguments."""
    return {name: batch[name] for name in MODEL_INPUT_FEATURES if name in batch}


def check_batch(batch: Mapping, where: str = "the batch iterator") -> None:
    """Raises ValueError naming the missing features (a user-supplied iterator must yield all of them)."""
    missing = [name for name in BATCH_FEATURES if name not in batch]
    if missing:
        raise ValueError(f"{where} gave no {missing}: it must yield all of {list(BATCH_FEATURES)}")
