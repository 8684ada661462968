"""Builds random AlexaTM reference checkpoints and their outputs with the PyTorch reference implementation.

The reference runs in its own virtual environment (``make refenv``: torch, transformers 4.26.1,
alexa-teacher-models 1.0.1) and is driven by subprocess through ``tests/reference_worker.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_REFERENCE_PYTHON = HERE.parent / ".venv-ref" / "bin" / "python"

# Several small shapes: head counts, depths, vocabularies, token-type tables and embedding sharing all vary.
REFERENCE_MODELS = {
    "untied": dict(vocab_size=211, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                   type_vocab_size=2, share_embeddings=False, tie_word_embeddings=False,
                   decoder_start_token_id=2),
    # No decoder_start_token_id: transformers falls back to bos (0); the converter must too.
    "shared_tied": dict(vocab_size=512, d_model=48, encoder_layers=3, decoder_layers=1, encoder_attention_heads=3,
                        decoder_attention_heads=3, encoder_ffn_dim=80, decoder_ffn_dim=96,
                        max_position_embeddings=40, type_vocab_size=1, share_embeddings=True,
                        tie_word_embeddings=True),
    "deep_decoder": dict(vocab_size=300, d_model=64, encoder_layers=1, decoder_layers=3, encoder_attention_heads=8,
                         decoder_attention_heads=8, encoder_ffn_dim=128, decoder_ffn_dim=128,
                         max_position_embeddings=48, type_vocab_size=3, share_embeddings=False,
                         tie_word_embeddings=False, decoder_start_token_id=2),
}
MAX_NEW_TOKENS = 24
PAD_ID = 1


def reference_python() -> str:
    path = os.environ.get("ALEXATM_REFERENCE_PYTHON") or str(DEFAULT_REFERENCE_PYTHON)
    if not Path(path).is_file():
        raise RuntimeError(
            f"The AlexaTM reference environment is missing ({path}). Build it with `make refenv` (or run "
            f"`make test`, which does), or set ALEXATM_REFERENCE_PYTHON to its interpreter.")
    return path


def make_batch(vocab_size: int, seed: int) -> dict:
    """Three right-padded inputs of different lengths, decoder inputs, and masked target labels."""
    rng = np.random.RandomState(seed)
    lengths = [12, 7, 4]
    input_ids = np.full((3, 12), PAD_ID, dtype=np.int64)
    attention_mask = np.zeros((3, 12), dtype=np.int64)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = rng.randint(3, vocab_size, size=length)
        attention_mask[row, :length] = 1
    decoder_input_ids = rng.randint(3, vocab_size, size=(3, 9))
    decoder_input_ids[:, 0] = 2
    labels = rng.randint(3, vocab_size, size=(3, 8))
    label_mask = np.ones((3, 8), dtype=np.int64)
    label_mask[1, 5:] = 0
    label_mask[2, 3:] = 0
    return {"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(),
            "decoder_input_ids": decoder_input_ids.tolist(), "labels": labels.tolist(),
            "label_mask": label_mask.tolist()}


def build_reference_models(workdir: Path) -> dict:
    """Runs the reference once for all models; returns {name: {"checkpoint", "outputs", "batch", "config"}}."""
    workdir.mkdir(parents=True, exist_ok=True)
    job = {"models": []}
    for seed, (name, config) in enumerate(sorted(REFERENCE_MODELS.items())):
        job["models"].append({
            "name": name, "config": config, "seed": 1000 + seed, "batch": make_batch(config["vocab_size"], seed),
            "checkpoint_dir": str(workdir / f"{name}_hf"), "output_file": str(workdir / f"{name}_outputs.npz"),
            "max_new_tokens": MAX_NEW_TOKENS, "max_shard_size": "100KB"})
    job_file = workdir / "job.json"
    job_file.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA_", "JAX_"))}
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    completed = subprocess.run([reference_python(), str(HERE / "reference_worker.py"), str(job_file)],
                               capture_output=True, text=True, env=env, timeout=900)
    if completed.returncode != 0:
        raise RuntimeError(f"reference worker failed:\n{completed.stdout}\n{completed.stderr[-4000:]}")
    result = {}
    for spec in job["models"]:
        outputs = dict(np.load(spec["output_file"]))
        result[spec["name"]] = {"checkpoint": Path(spec["checkpoint_dir"]), "outputs": outputs,
                                "batch": {k: np.asarray(v) for k, v in spec["batch"].items()},
                                "config": spec["config"]}
    return result


if __name__ == "__main__":  # manual use: python tests/reference_utils.py OUTDIR
    built = build_reference_models(Path(sys.argv[1]))
    print({k: str(v["checkpoint"]) for k, v in built.items()})
