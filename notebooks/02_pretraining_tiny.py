# ---
# jupyter:
#   colab:
#     provenance: []
#     toc_visible: true
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: colab,kernelspec,language_info,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # Pretraining a tiny AlexaTM-style model
#
# AlexaTM 20B was pretrained on a mixture of **80% denoising** (drop 15% of the tokens in Poisson(3)-length
# spans, no mask tokens, reconstruct the whole input) and **20% causal LM** (`[CLM]` + a random 20-80% prefix
# of a document; predict the rest), over 12 languages sampled with alpha = 0.5. This notebook:
#
# 1. shows decoded examples of the same mixture built from the small multilingual corpus bundled with
#    `alexatm_jax` (seqio tasks `alexatm_demo_*`);
# 2. measures its statistics (dropped fraction, span length, CLM prefix fractions, objective and language
#    rates) against the configured ones;
# 3. runs a short pretraining of the `tiny` preset with `alexatm-jax train` into a temporary `MODEL_DIR`;
# 4. plots the loss curve from `metrics.jsonl`, and generates with the trained checkpoint.
#
# With the defaults the training takes about 5 minutes on 2 CPU cores (a free Colab CPU runtime; measured at
# about 1.4 s per step on a 2-core machine), less on a GPU runtime.

# %%
# Install alexatm_jax unless it is already importable (a local `pip install -e .`, or a second run).
# Set ALEXATM_JAX_SOURCE to where your copy of the project lives, in any form pip accepts, e.g.
#   "git+https://github.com/<your-account>/alexatm_jax"          (your fork or mirror)
#   "alexatm_jax[cuda] @ git+https://github.com/<your-account>/alexatm_jax"   (GPU runtime: CUDA build of JAX)
# If pip replaces packages Colab had already imported (jax, numpy), restart the runtime once afterwards.
ALEXATM_JAX_SOURCE = ""

import importlib.util

from IPython import get_ipython

if importlib.util.find_spec("alexatm_jax") is None:
    if not ALEXATM_JAX_SOURCE:
        raise RuntimeError("alexatm_jax is not installed: set ALEXATM_JAX_SOURCE in this cell to a pip "
                           "requirement for the project (see the comments above) and run the cell again.")
    # `%pip install -q ...` written as plain Python: pip of the kernel's own interpreter.
    get_ipython().run_line_magic("pip", f'install -q "{ALEXATM_JAX_SOURCE}"')

# %% [markdown]
# ## Parameters
#
# The training knobs are the gin macros of `alexatm-jax train` (`TRAIN_STEPS`, `BATCH_SIZE`,
# `TASK_FEATURE_LENGTHS`, `MIXTURE_OR_TASK_NAME`, `MODEL_DIR`, `MESH`, `LOG_EVERY_STEPS`). The gin files are
# the ones installed with the package: the model file `models/<MODEL_PRESET>.gin`, then `RUN_GIN_FILES`
# (`runs/pretrain.gin` is AlexaTM's recipe; `runs/demo.gin` scales its learning rate and warmup to a tiny
# model). `GIN_BINDINGS` binds any other parameter, as `--gin.NAME=VALUE` does.

# %% tags=["parameters"]
MIXTURE = "alexatm_demo"   # 80% denoising / 20% CLM over the 12 bundled languages
NUM_EXAMPLES = 400         # examples measured for the statistics
SHOW_EXAMPLES = 3          # of which decoded and printed
MODEL_PRESET = "tiny"      # d_model 128, 2+2 layers
RUN_GIN_FILES = ["runs/pretrain.gin", "runs/demo.gin"]  # demo.gin: learning rate 3e-3 (AlexaTM 20B used 1e-4)
TRAIN_STEPS = 200
BATCH_SIZE = 16            # packed sequences per step
INPUTS_LENGTH = 128        # TASK_FEATURE_LENGTHS
TARGETS_LENGTH = 128
LOG_EVERY_STEPS = 10
MESH = "data=-1"           # every visible device holds a slice of the batch
GIN_BINDINGS = {}          # any other binding, e.g. {"ModelConfig.dropout_rate": 0.1}
MODEL_DIR = None           # None: a fresh temporary directory

# %% [markdown]
# ## 1. The mixture's examples
#
# `alexatm_jax.data.tasks` registers one seqio task per (objective, language) and mixes them. An example's
# `inputs` feed the encoder and its `targets` the decoder. Denoising inputs are the document with spans
# removed (no sentinel or mask tokens); CLM inputs start with `[CLM]`. The command-line equivalent is
# `alexatm-jax show-data --mixture alexatm_demo --stats`.

# %%
import json
import os
import shlex
import subprocess
import sys
import tempfile

import matplotlib.pyplot as plt
from IPython.display import JSON, Markdown, display

from alexatm_jax.data import stats, tasks

lengths = {"inputs": INPUTS_LENGTH, "targets": TARGETS_LENGTH}
examples = stats.take_examples(MIXTURE, lengths, NUM_EXAMPLES, seed=0)
vocabulary = tasks.output_features()["targets"].vocabulary
for i, example in enumerate(examples[:SHOW_EXAMPLES]):
    print(f"--- example {i}: objective={stats.objective_name(example)} lang={stats.lang_name(example)} "
          f"inputs={len(example['inputs'])} targets={len(example['targets'])} tokens")
    print("inputs: ", vocabulary.decode(example["inputs"].tolist())[:400])
    print("targets:", vocabulary.decode(example["targets"].tolist())[:400])

# %% [markdown]
# ## 2. Measured statistics
#
# Measured over `NUM_EXAMPLES` examples and set against the configuration (AlexaTM: 15% of tokens dropped in
# spans of mean length 3; CLM prefixes uniform in 20-80%; objective and language rates from the mixture).

# %%
measured = stats.measure(examples)
expected = stats.expected_rates(MIXTURE)
rows = ["| statistic | measured | configured |", "|---|---:|---:|"]
if "denoise_dropped_fraction" in measured:
    rows.append(f"| denoising: fraction of tokens dropped | {measured['denoise_dropped_fraction']:.3f} | 0.15 |")
    rows.append(f"| denoising: mean dropped-span length | {measured['denoise_mean_span_length']:.2f} | 3 |")
if "clm_prefix_fraction" in measured:
    prefix = measured["clm_prefix_fraction"]
    rows.append(f"| CLM: prefix fraction min / mean / max | {prefix['min']:.2f} / {prefix['mean']:.2f} / "
                f"{prefix['max']:.2f} | 0.2 / 0.5 / 0.8 |")
for kind in ("objective_rates", "language_rates"):
    for key, rate in sorted(expected[kind].items()):
        rows.append(f"| {kind.split('_')[0]} rate: {key} | {measured[kind].get(key, 0.0):.3f} | {rate:.3f} |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## 3. A short pretraining run
#
# The run is the command line's: `alexatm-jax train` with the gin files and macros above (in a notebook,
# `!alexatm-jax train ...` does the same). It runs in its own process, so that it gets the accelerators to
# itself (this kernel has not started JAX yet), shards the batch over every visible device (`MESH`), and
# writes `config.json`, `tokenizer.model`, orbax checkpoints and `metrics.jsonl` into `MODEL_DIR`.

# %%
if MODEL_DIR is None:
    MODEL_DIR = os.path.join(tempfile.mkdtemp(prefix="alexatm_pretrain_"), "run")
# Gin values are Python literals (repr); the macro names are T5X's.
macros = {"MODEL_DIR": MODEL_DIR, "TRAIN_STEPS": TRAIN_STEPS, "BATCH_SIZE": BATCH_SIZE,
          "MIXTURE_OR_TASK_NAME": MIXTURE, "TASK_FEATURE_LENGTHS": lengths, "LOG_EVERY_STEPS": LOG_EVERY_STEPS,
          "MESH": MESH}
bindings = {**macros, **GIN_BINDINGS}
arguments = ([f"--gin_file=models/{MODEL_PRESET}.gin"] + [f"--gin_file={path}" for path in RUN_GIN_FILES] +
             [f"--gin.{name}={value!r}" for name, value in bindings.items()])
# The command as one would type it in a shell (values that need quoting in double quotes, as in the README).
shown = [f'--gin.{name}="{value!r}"' if shlex.quote(repr(value)) != repr(value) else f"--gin.{name}={value!r}"
         for name, value in bindings.items()]
print("$ alexatm-jax train " + " ".join(arguments[:-len(bindings)] + shown), flush=True)
# Line by line, so the progress shows while it trains (and in a notebook whatever its kernel does with the
# output of child processes).
with subprocess.Popen([sys.executable, "-m", "alexatm_jax.cli", "train", *arguments], stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True) as process:
    for line in process.stdout:
        print(line, end="", flush=True)
if process.returncode:
    raise RuntimeError(f"alexatm-jax train failed (exit {process.returncode}); its messages are above")

# %% [markdown]
# ## 4. The loss curve
#
# `metrics.jsonl` has one JSON record per logged step (`step`, `loss`, `learning_rate`, `tokens_per_second`,
# ...; held-out evaluations add `eval_loss` records).

# %%
from etils import epath  # local paths and gs:// alike

with epath.Path(MODEL_DIR, "metrics.jsonl").open() as f:
    records = [record for record in map(json.loads, f) if "loss" in record]
steps = [r["step"] for r in records]
losses = [r["loss"] for r in records]
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(steps, losses, marker=".")
ax.set_xlabel("step")
ax.set_ylabel("training loss (per target token)")
ax.set_title(f"{MODEL_PRESET} on {MIXTURE}: batch {BATCH_SIZE} x ({INPUTS_LENGTH}+{TARGETS_LENGTH}) tokens")
ax.grid(alpha=0.3)
plt.show()
print(f"first loss {losses[0]:.4f} (step {steps[0]}), last loss {losses[-1]:.4f} (step {steps[-1]})")
if "tokens_per_second" in records[-1]:
    print(f"throughput at the end: {records[-1]['tokens_per_second']:.0f} tokens/s")

# %% [markdown]
# ## 5. Generate with the trained checkpoint
#
# The run directory is also a model directory: `alexatm_jax.load(MODEL_DIR)` reads its latest checkpoint.
# A denoising-style input asks the model to reconstruct the text (after a few hundred tiny steps, expect
# fragments of the language, not fluent text).

# %%
import alexatm_jax

lm = alexatm_jax.load(MODEL_DIR)
text = "The quick brown fox jumps over the lazy dog."
output = lm.generate(lm.tokenize([text]), max_new_tokens=24)
print(repr(lm.detokenize(output)[0]))
display(JSON({"model_dir": MODEL_DIR, "measured": measured, "expected": expected, "steps": steps,
              "losses": losses, "first_loss": losses[0], "last_loss": losses[-1]}))
