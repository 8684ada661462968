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
# # Few-shot in-context learning with an AlexaTM-style checkpoint
#
# AlexaTM 20B translates and summarizes from a single in-context example. This notebook walks through that
# workflow with `alexatm_jax`:
#
# 1. load a model directory (`alexatm_jax.load`);
# 2. render a 1-shot prompt from a **task card** (AlexaTM's Flores-101 prompt on the bundled UDHR sentences);
# 3. generate a continuation (greedy, cut at the example separator, as in the paper);
# 4. score candidate continuations by their log-likelihood (**rank classification**);
# 5. compute metrics (spBLEU, chrF++, BLEU);
# 6. run the whole evaluation in one call and show the results table.
#
# With `CHECKPOINT = None` the notebook makes a **randomly initialised stand-in** (the `tiny` preset and the
# bundled SentencePiece vocabulary): every cell runs, but its outputs are gibberish and its **scores are
# meaningless**. Point `CHECKPOINT` at a converted AlexaTM 20B directory (`alexatm-jax convert-pytorch
# SRC DST`) or at a training run's `MODEL_DIR` and the same cells give real results.

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
# `CHECKPOINT`: a model directory, or `None` for the random stand-in. `MESH`: how to lay the parameters over
# several accelerators, e.g. `"tensor=8"` for AlexaTM 20B on 8 GPUs (`None`: one device). `TASK` is a
# generation card from `alexatm_jax/evaluation` (`cards.available_tasks()` lists them) with its `TASK_PARAMS`;
# `CLASSIFICATION_TASK` a rank-classification card.

# %% tags=["parameters"]
CHECKPOINT = None                          # model directory; None = random stand-in (scores meaningless)
MESH = None                                # e.g. "tensor=8" or "fsdp=4,tensor=2" for a 20B checkpoint
TASK = "udhr_translation"                  # a generation task card
TASK_PARAMS = {"src": "en", "tgt": "fr"}   # the card's knobs (any two of the 12 AlexaTM languages)
SHOTS = 1                                  # in-context examples in the prompt
NUM_CANDIDATES = 4                         # continuations ranked in the scoring section
NUM_EXAMPLES = 20                          # evaluation examples for the one-call evaluation (None: all)
MAX_NEW_TOKENS = None                      # None: the card's own setting (64 for udhr_translation)
CLASSIFICATION_TASK = "debian_language_id" # a rank-classification task card
BATCH_SIZE = 8
STANDIN_PRESET = "tiny"                    # model preset of the random stand-in

# %% [markdown]
# ## 1. Load a checkpoint
#
# Without a checkpoint we initialise the stand-in and save it as a model directory (config, parameters and
# tokenizer), exactly the layout `convert-pytorch` writes, so that `alexatm_jax.load` takes the same path for
# both. The stand-in uses this repository's token-id convention for models trained with the bundled
# SentencePiece model (pad 0, EOS 1, decoder start 0, BOS 3: seqio's), the one `alexatm-jax train` uses.

# %%
import os
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from IPython.display import JSON, Markdown, display

import alexatm_jax


def save_random_standin(preset: str) -> str:
    """A randomly initialised model directory of ``preset`` with the bundled vocabulary; returns its path."""
    import sentencepiece as spm

    from alexatm_jax.checkpoints.model_dir import save_model_dir
    from alexatm_jax.data.bundled import bundled_spm_path
    from alexatm_jax.data.vocab import DEFAULT_EXTRA_IDS
    from alexatm_jax.model.config import get_preset
    from alexatm_jax.model.transformer import AlexaTMTransformer

    # The vocabulary is the SentencePiece pieces plus seqio's extra ids, as in training.
    vocab_size = spm.SentencePieceProcessor(model_file=bundled_spm_path()).get_piece_size() + DEFAULT_EXTRA_IDS
    config = get_preset(preset).replace(vocab_size=vocab_size, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                                        decoder_start_token_id=0, bos_token_id=3)
    tokens = jnp.ones((1, 8), jnp.int32)
    variables = AlexaTMTransformer(config).init(jax.random.PRNGKey(0), tokens, tokens, enable_dropout=False)
    directory = os.path.join(tempfile.mkdtemp(prefix="alexatm_standin_"), "model")
    return str(save_model_dir(directory, config, nn.unbox(variables["params"]), tokenizer_path=bundled_spm_path(),
                              provenance={"random_init": preset}))


print("JAX devices:", jax.devices())
RANDOM_STANDIN = CHECKPOINT is None
if RANDOM_STANDIN:
    CHECKPOINT = save_random_standin(STANDIN_PRESET)
    print(f"RANDOM stand-in ({STANDIN_PRESET} preset) saved to {CHECKPOINT}: outputs and scores below are "
          "meaningless.")

lm = alexatm_jax.load(CHECKPOINT, mesh=MESH)  # MESH: None (one device) or a spec such as "tensor=8"
lm

# %% [markdown]
# ## 2. Render a prompt from a task card
#
# A task card (YAML) names the data, the prompt template, how shots are chosen, the post-processing, the
# decoding settings and the metrics. `udhr_translation` uses AlexaTM's Flores-101 prompt in CLM mode:
# `[CLM] Sentence:  {src}; Translation in {Target}: {tgt}; ... Sentence:  {src}; Translation in {Target}:`,
# with the first dev sentences as shots. The functions below are the ones the evaluation runner uses.

# %%
from alexatm_jax.evaluation import cards, metrics, prompts, runner

card = cards.load_card(TASK, params=TASK_PARAMS)
if card.kind != "generate":
    raise ValueError(f"TASK={TASK!r} is a {card.kind} card; choose a generation card such as "
                     f"'udhr_translation' (and put classification cards in CLASSIFICATION_TASK)")
if MAX_NEW_TOKENS:
    card.decoding["max_new_tokens"] = int(MAX_NEW_TOKENS)
print(card.description)
shot_pool, evaluation, source = runner.load_examples(card)
shots = prompts.choose_shots(card, shot_pool, SHOTS)
record, query = evaluation[0]
prompt = prompts.render_prompt(card, [values for _, values in shots], query)
print(f"{len(shot_pool)} shot candidates and {len(evaluation)} evaluation examples from {source}")
print(f"shots: {[r.get('id') for r, _ in shots]}\n")
print(prompt)

# %% [markdown]
# ## 3. Generate
#
# `PromptEncoder` turns the prompt into ids the way the model saw text in pretraining (the `[CLM]` token as
# its own id, EOS at the end). Decoding is greedy and stops early at tokens that contain the cut string
# (`;`), where the output is cut anyway.

# %%
encoder = runner.PromptEncoder(lm, card)
prompt_ids = encoder.prompt_ids(prompt)
output = lm.generate([prompt_ids], max_new_tokens=int(card.decoding["max_new_tokens"]),
                     num_beams=int(card.decoding.get("num_beams", 1)), stop_sequences=encoder.stop_sequences())
raw = encoder.decode(output[0])
prediction = prompts.postprocess(card, raw)
print(f"prompt tokens: {len(prompt_ids)}")
print(f"raw output:  {raw!r}")
print(f"prediction:  {prediction!r}")
print(f"reference:   {query['target']!r}")

# %% [markdown]
# ## 4. Score candidate continuations (rank classification)
#
# Classification in AlexaTM's evaluation scores each candidate continuation with teacher forcing and picks
# the most likely. Here the candidates are the true translation and the translations of other sentences:
# a model that understood the prompt ranks the true one first. `lm.score` returns the summed log-likelihood
# of each target given its input; the sum favours short candidates, so the per-token (length-normalised)
# value is shown too.

# %%
candidates = [query["target"]] + [values["target"] for _, values in evaluation[1:NUM_CANDIDATES]]
candidate_ids = [encoder.target_ids(card.prompt["target_prefix"] + text) for text in candidates]
log_likelihoods = lm.score([prompt_ids] * len(candidates), candidate_ids)
per_token = [float(s) / len(ids) for s, ids in zip(log_likelihoods, candidate_ids)]
ranking = np.argsort(-np.asarray(log_likelihoods))
rows = ["| rank | candidate | tokens | log-likelihood | per token |", "|---:|---|---:|---:|---:|"]
for rank, i in enumerate(ranking, 1):
    marker = " (true)" if i == 0 else ""
    rows.append(f"| {rank} | {candidates[i][:70]}{marker} | {len(candidate_ids[i])} | "
                f"{float(log_likelihoods[i]):.2f} | {per_token[i]:.3f} |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## 5. Metrics
#
# `alexatm_jax.evaluation.metrics` wraps the reference libraries (sacrebleu, rouge-score) with multilingual
# settings. spBLEU uses sacrebleu's official Flores-101 SentencePiece model when it is in sacrebleu's cache;
# offline it tokenises with the checkpoint's SentencePiece model instead, and the signature says so. On a
# single sentence these are sentence-level scores.

# %%
spm_path = os.path.join(CHECKPOINT, "tokenizer.model")  # every model directory carries its tokenizer
single = {}
for name in card.metrics:
    for result in metrics.compute(name, [prediction], [query["target"]], spm_path=spm_path):
        single[result.name] = result.score
        print(f"{result.name:8s} {result.score:6.2f}   {result.signature}")

# %% [markdown]
# ## 6. The whole evaluation in one call
#
# `runner.evaluate` does all of the above for every evaluation example and shot count (length-sorted
# batches, truncation and length checks, post-processing, metrics) and returns a results dict
# (`runner.write_results` saves it as JSON; `alexatm-jax eval` is the command-line version). Below: 0-shot
# and `SHOTS`-shot translation, then the rank-classification card (accuracy).

# %%
shot_counts = sorted({0, SHOTS})
results = runner.evaluate(lm, card, shot_counts, limit=NUM_EXAMPLES, batch_size=BATCH_SIZE, progress=False,
                          spm_path=spm_path)
display(Markdown(runner.markdown_table(results)))
for example in results["runs"][-1]["examples"][:3]:
    print(f"{example['id']}: {example['prediction'][:80]!r}  <-  reference {example['reference'][:80]!r}")

# %%
classification_card = cards.load_card(CLASSIFICATION_TASK)
classification = runner.evaluate(lm, classification_card, [SHOTS], limit=NUM_EXAMPLES, batch_size=BATCH_SIZE,
                                 progress=False, spm_path=spm_path)
display(Markdown(runner.markdown_table(classification)))
chance = 100.0 / len(classification_card.choices)
print(f"chance level: {chance:.1f}% ({len(classification_card.choices)} choices)")

# %% [markdown]
# ## Summary
#
# The figures above in one record (the notebook test reads it; it is also handy to copy into a report).

# %%
summary = {
    "checkpoint": CHECKPOINT, "random_standin": RANDOM_STANDIN, "task": card.name, "params": card.params,
    "prompt": prompt, "prediction": prediction, "reference": query["target"], "single_example_scores": single,
    "candidates": candidates, "candidate_log_likelihoods": [float(s) for s in log_likelihoods],
    "spm_path": spm_path,
}
for key, evaluated in (("generation", results), ("classification", classification)):
    summary[key] = [{"shots": run["shots"], "scores": run["scores"],
                     "predictions": [e["prediction"] for e in run["examples"]],
                     "references": [e["reference"] for e in run["examples"]]} for run in evaluated["runs"]]
display(JSON(summary))
