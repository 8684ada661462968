"""Writes the Colab notebooks under ``notebooks/`` from the Python source below, so that reviews read plain
Python diffs and the committed ``.ipynb`` files never carry outputs.

    python scripts/make_notebooks.py            # (re)write notebooks/*.ipynb
    python scripts/make_notebooks.py --check    # exit 1 if a committed notebook differs from this source

Every notebook has the same skeleton: a title cell, the install cell, a ``parameters`` cell (tagged for
papermill / ``tests/test_notebooks.py``, which swaps in tiny settings), then the work. Cell ids are
derived from the notebook and position (not random), so regenerating an unchanged notebook changes nothing.
Cells that want to hand a result to the test display it as ``application/json`` (``IPython.display.JSON``):
it renders as a collapsible tree in Jupyter and Colab, and the test reads it without parsing printed text.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

import nbformat
from nbformat import v4

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a source checkout: `python scripts/make_notebooks.py`

from alexatm_jax import atomic_files  # noqa: E402
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
PARAMETERS_TAG = "parameters"

INSTALL = '''\
# Install alexatm_jax unless it is already importable (a local `pip install -e .`, or a second run).
# Set ALEXATM_JAX_SOURCE to where your copy of the project lives, in any form pip accepts, e.g.
#   "git+https://github.com/<your-account>/alexatm_jax"          (your fork or mirror)
#   "alexatm_jax[cuda] @ git+https://github.com/<your-account>/alexatm_jax"   (GPU runtime: CUDA build of JAX)
# If pip replaces packages Colab had already imported (jax, numpy), restart the runtime once afterwards.
ALEXATM_JAX_SOURCE = ""

import importlib.util

if importlib.util.find_spec("alexatm_jax") is None:
    if not ALEXATM_JAX_SOURCE:
        raise RuntimeError("alexatm_jax is not installed: set ALEXATM_JAX_SOURCE in this cell to a pip "
                           "requirement for the project (see the comments above) and run the cell again.")
    %pip install -q "{ALEXATM_JAX_SOURCE}"
'''


def _cells(notebook: str, spec: list[tuple[str, str]]) -> list:
    cells = []
    for index, (kind, source) in enumerate(spec):
        source = textwrap.dedent(source).strip("\n")
        cell_id = f"{notebook[:2]}-{index:02d}"
        if kind == "md":
            cell = v4.new_markdown_cell(source, id=cell_id)
        else:
            cell = v4.new_code_cell(source, id=cell_id)
            if kind == PARAMETERS_TAG:
                cell.metadata["tags"] = [PARAMETERS_TAG]
        cells.append(cell)
    return cells


def _notebook(name: str, spec: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = v4.new_notebook()
    nb.cells = _cells(name, spec)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "colab": {"provenance": [], "toc_visible": True},
    }
    return nb


# --------------------------------------------------------------------------------------------------------------
# 01: few-shot in-context learning
# --------------------------------------------------------------------------------------------------------------

FEW_SHOT = [
    ("md", """
    # Few-shot in-context learning with an AlexaTM-style checkpoint

    AlexaTM 20B translates and summarizes from a single in-context example. This notebook walks through that
    workflow with `alexatm_jax`:

    1. load a model directory (`alexatm_jax.load`);
    2. render a 1-shot prompt from a **task card** (AlexaTM's Flores-101 prompt on the bundled UDHR sentences);
    3. generate a continuation (greedy, cut at the example separator, as in the paper);
    4. score candidate continuations by their log-likelihood (**rank classification**);
    5. compute metrics (spBLEU, chrF++, BLEU);
    6. run the whole evaluation in one call and show the results table.

    With `CHECKPOINT = None` the notebook makes a **randomly initialised stand-in** (the `tiny` preset and the
    bundled SentencePiece vocabulary): every cell runs, but its outputs are gibberish and its **scores are
    meaningless**. Point `CHECKPOINT` at a converted AlexaTM 20B directory (`alexatm-jax convert-pytorch
    SRC DST`) or at a training run's `MODEL_DIR` and the same cells give real results.
    """),
    ("code", INSTALL),
    ("md", """
    ## Parameters

    `CHECKPOINT`: a model directory, or `None` for the random stand-in. `MESH`: how to lay the parameters over
    several accelerators, e.g. `"tensor=8"` for AlexaTM 20B on 8 GPUs (`None`: one device). `TASK` is a
    generation card from `alexatm_jax/evaluation` (`cards.available_tasks()` lists them) with its `TASK_PARAMS`;
    `CLASSIFICATION_TASK` a rank-classification card.
    """),
    (PARAMETERS_TAG, """
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
    """),
    ("md", """
    ## 1. Load a checkpoint

    Without a checkpoint we initialise the stand-in and save it as a model directory (config, parameters and
    tokenizer), exactly the layout `convert-pytorch` writes, so that `alexatm_jax.load` takes the same path for
    both. The stand-in uses this repository's token-id convention for models trained with the bundled
    SentencePiece model (pad 0, EOS 1, decoder start 0), the one `alexatm-jax train` uses.
    """),
    ("code", """
    import os
    import tempfile

    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    import numpy as np
    from IPython.display import JSON, Markdown, display

    import alexatm_jax
    from alexatm_jax.checkpoints import model_dir
    from alexatm_jax.data.bundled import bundled_spm_path
    from alexatm_jax.model.transformer import AlexaTMTransformer
    from alexatm_jax.training.trainer import build_model_config

    print("JAX devices:", jax.devices())
    RANDOM_STANDIN = CHECKPOINT is None
    if RANDOM_STANDIN:
        import sentencepiece as spm
        from alexatm_jax.data.vocab import DEFAULT_EXTRA_IDS

        # The vocabulary is the SentencePiece pieces plus seqio's extra ids, as in training.
        vocab_size = spm.SentencePieceProcessor(model_file=bundled_spm_path()).get_piece_size() + DEFAULT_EXTRA_IDS
        config = build_model_config(STANDIN_PRESET, {"dropout_rate": 0.0}, vocab_size)
        model = AlexaTMTransformer(config)
        tokens = jnp.ones((1, 8), jnp.int32)
        params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens, tokens, enable_dropout=False)["params"])
        standin_dir = os.path.join(tempfile.mkdtemp(prefix="alexatm_standin_"), "model")
        CHECKPOINT = str(model_dir.save_model_dir(standin_dir, config, params, tokenizer_path=bundled_spm_path(),
                                                  provenance={"random_init": STANDIN_PRESET}))
        print(f"RANDOM stand-in ({STANDIN_PRESET} preset) saved to {CHECKPOINT}: outputs and scores below are "
              "meaningless.")

    mesh = None
    if MESH:
        from alexatm_jax.partitioning import make_mesh
        mesh = make_mesh(MESH)
    lm = alexatm_jax.load(CHECKPOINT, mesh=mesh)
    lm
    """),
    ("md", """
    ## 2. Render a prompt from a task card

    A task card (YAML) names the data, the prompt template, how shots are chosen, the post-processing, the
    decoding settings and the metrics. `udhr_translation` uses AlexaTM's Flores-101 prompt in CLM mode:
    `[CLM] Sentence:  {src}; Translation in {Target}: {tgt}; ... Sentence:  {src}; Translation in {Target}:`,
    with the first dev sentences as shots. The functions below are the ones the evaluation runner uses.
    """),
    ("code", """
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
    print(f"shots: {[r.get('id') for r, _ in shots]}\\n")
    print(prompt)
    """),
    ("md", """
    ## 3. Generate

    `PromptEncoder` turns the prompt into ids the way the model saw text in pretraining (the `[CLM]` token as
    its own id, EOS at the end). Decoding is greedy and stops early at tokens that contain the cut string
    (`;`), where the output is cut anyway.
    """),
    ("code", """
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
    """),
    ("md", """
    ## 4. Score candidate continuations (rank classification)

    Classification in AlexaTM's evaluation scores each candidate continuation with teacher forcing and picks
    the most likely. Here the candidates are the true translation and the translations of other sentences:
    a model that understood the prompt ranks the true one first. `lm.score` returns the summed log-likelihood
    of each target given its input; the sum favours short candidates, so the per-token (length-normalised)
    value is shown too.
    """),
    ("code", """
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
    display(Markdown("\\n".join(rows)))
    """),
    ("md", """
    ## 5. Metrics

    `alexatm_jax.evaluation.metrics` wraps the reference libraries (sacrebleu, rouge-score) with multilingual
    settings. spBLEU uses sacrebleu's official Flores-101 SentencePiece model when it is in sacrebleu's cache;
    offline it tokenises with the checkpoint's SentencePiece model instead, and the signature says so. On a
    single sentence these are sentence-level scores.
    """),
    ("code", """
    spm_path = str(model_dir.tokenizer_path(CHECKPOINT))
    single = {}
    for name in card.metrics:
        for result in metrics.compute(name, [prediction], [query["target"]], spm_path=spm_path):
            single[result.name] = result.score
            print(f"{result.name:8s} {result.score:6.2f}   {result.signature}")
    """),
    ("md", """
    ## 6. The whole evaluation in one call

    `runner.evaluate` does all of the above for every evaluation example and shot count (length-sorted
    batches, truncation and length checks, post-processing, metrics) and returns a results dict
    (`runner.write_results` saves it as JSON; `alexatm-jax eval` is the command-line version). Below: 0-shot
    and `SHOTS`-shot translation, then the rank-classification card (accuracy).
    """),
    ("code", """
    shot_counts = sorted({0, SHOTS})
    results = runner.evaluate(lm, card, shot_counts, limit=NUM_EXAMPLES, batch_size=BATCH_SIZE, progress=False)
    display(Markdown(runner.markdown_table(results)))
    for example in results["runs"][-1]["examples"][:3]:
        print(f"{example['id']}: {example['prediction'][:80]!r}  <-  reference {example['reference'][:80]!r}")
    """),
    ("code", """
    classification_card = cards.load_card(CLASSIFICATION_TASK)
    classification = runner.evaluate(lm, classification_card, [SHOTS], limit=NUM_EXAMPLES, batch_size=BATCH_SIZE,
                                     progress=False)
    display(Markdown(runner.markdown_table(classification)))
    chance = 100.0 / len(classification_card.choices)
    print(f"chance level: {chance:.1f}% ({len(classification_card.choices)} choices)")
    """),
    ("md", """
    ## Summary

    The figures above in one record (the notebook test reads it; it is also handy to copy into a report).
    """),
    ("code", """
    def _run_record(results):
        return [{"shots": run["shots"], "scores": run["scores"],
                 "predictions": [e["prediction"] for e in run["examples"]],
                 "references": [e["reference"] for e in run["examples"]]} for run in results["runs"]]

    summary = {
        "checkpoint": CHECKPOINT, "random_standin": RANDOM_STANDIN, "task": card.name, "params": card.params,
        "prompt": prompt, "prediction": prediction, "reference": query["target"], "single_example_scores": single,
        "candidates": candidates, "candidate_log_likelihoods": [float(s) for s in log_likelihoods],
        "spm_path": spm_path, "generation": _run_record(results), "classification": _run_record(classification),
    }
    display(JSON(summary))
    """),
]


# --------------------------------------------------------------------------------------------------------------
# 02: pretraining a tiny model
# --------------------------------------------------------------------------------------------------------------

PRETRAINING = [
    ("md", """
    # Pretraining a tiny AlexaTM-style model

    AlexaTM 20B was pretrained on a mixture of **80% denoising** (drop 15% of the tokens in Poisson(3)-length
    spans, no mask tokens, reconstruct the whole input) and **20% causal LM** (`[CLM]` + a random 20-80% prefix
    of a document; predict the rest), over 12 languages sampled with alpha = 0.5. This notebook:

    1. shows decoded examples of the same mixture built from the small multilingual corpus bundled with
       `alexatm_jax` (seqio tasks `alexatm_demo_*`);
    2. measures its statistics (dropped fraction, span length, CLM prefix fractions, objective and language
       rates) against the configured ones;
    3. runs a short pretraining of the `tiny` preset with the project's trainer into a temporary `MODEL_DIR`;
    4. plots the loss curve from `metrics.jsonl`, and generates with the trained checkpoint.

    With the defaults the training takes about 5 minutes on 2 CPU cores (a free Colab CPU runtime; measured at
    about 1.4 s per step on a 2-core machine), less on a GPU runtime.
    """),
    ("code", INSTALL),
    ("md", """
    ## Parameters

    The training knobs mirror the gin macros of `gin_configs/runs/pretrain.gin` (`TRAIN_STEPS`, `BATCH_SIZE`,
    `TASK_FEATURE_LENGTHS`, `MIXTURE_OR_TASK_NAME`, `MODEL_DIR`).
    """),
    (PARAMETERS_TAG, """
    MIXTURE = "alexatm_demo"   # 80% denoising / 20% CLM over the 12 bundled languages
    NUM_EXAMPLES = 400         # examples measured for the statistics
    SHOW_EXAMPLES = 3          # of which decoded and printed
    MODEL_PRESET = "tiny"      # d_model 128, 2+2 layers
    TRAIN_STEPS = 200
    BATCH_SIZE = 16            # packed sequences per step
    INPUTS_LENGTH = 128        # TASK_FEATURE_LENGTHS
    TARGETS_LENGTH = 128
    LEARNING_RATE = 3e-3       # a tiny model learns fast; AlexaTM 20B used 1e-4
    WARMUP_STEPS = 30
    LOG_EVERY_STEPS = 10
    MODEL_DIR = None           # None: a fresh temporary directory
    """),
    ("md", """
    ## 1. The mixture's examples

    `alexatm_jax.data.tasks` registers one seqio task per (objective, language) and mixes them. An example's
    `inputs` feed the encoder and its `targets` the decoder. Denoising inputs are the document with spans
    removed (no sentinel or mask tokens); CLM inputs start with `[CLM]`. The command-line equivalent is
    `alexatm-jax show-data --mixture alexatm_demo --stats`.
    """),
    ("code", """
    import os
    import tempfile

    import jax
    import matplotlib.pyplot as plt
    from IPython.display import JSON, Markdown, display

    from alexatm_jax.data import stats, tasks

    print("JAX devices:", jax.devices())

    lengths = {"inputs": INPUTS_LENGTH, "targets": TARGETS_LENGTH}
    examples = stats.take_examples(MIXTURE, lengths, NUM_EXAMPLES, seed=0)
    vocabulary = tasks.output_features()["targets"].vocabulary
    for i, example in enumerate(examples[:SHOW_EXAMPLES]):
        print(f"--- example {i}: objective={stats.objective_name(example)} lang={stats.lang_name(example)} "
              f"inputs={len(example['inputs'])} targets={len(example['targets'])} tokens")
        print("inputs: ", vocabulary.decode(example["inputs"].tolist())[:400])
        print("targets:", vocabulary.decode(example["targets"].tolist())[:400])
    """),
    ("md", """
    ## 2. Measured statistics

    Measured over `NUM_EXAMPLES` examples and set against the configuration (AlexaTM: 15% of tokens dropped in
    spans of mean length 3; CLM prefixes uniform in 20-80%; objective and language rates from the mixture).
    """),
    ("code", """
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
    display(Markdown("\\n".join(rows)))
    """),
    ("md", """
    ## 3. A short pretraining run

    `alexatm_jax.training.trainer.train` is the function behind `alexatm-jax train`; gin binds its arguments
    from `gin_configs/`, here we pass them directly. It writes `config.json`, `tokenizer.model`, orbax
    checkpoints and `metrics.jsonl` into `MODEL_DIR`, and shards over every visible device (`mesh="data=-1"`).
    """),
    ("code", """
    from alexatm_jax.training import trainer
    from alexatm_jax.training.metrics import read_metrics

    if MODEL_DIR is None:
        MODEL_DIR = os.path.join(tempfile.mkdtemp(prefix="alexatm_pretrain_"), "run")
    summary = trainer.train(
        model_dir=MODEL_DIR, train_steps=TRAIN_STEPS, batch_size=BATCH_SIZE, mixture_or_task_name=MIXTURE,
        task_feature_lengths=lengths, model_preset=MODEL_PRESET, learning_rate=LEARNING_RATE,
        warmup_steps=WARMUP_STEPS, log_every_steps=LOG_EVERY_STEPS, checkpoint_every_steps=TRAIN_STEPS,
        tensorboard=False)
    print(summary["status"], "at step", summary["step"], "in", summary["model_dir"])
    """),
    ("md", """
    ## 4. The loss curve
    """),
    ("code", """
    records = [r for r in read_metrics(MODEL_DIR) if "loss" in r]
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
    print(f"throughput at the end: {records[-1]['tokens_per_second']:.0f} tokens/s")
    """),
    ("md", """
    ## 5. Generate with the trained checkpoint

    The run directory is also a model directory: `alexatm_jax.load(MODEL_DIR)` reads its latest checkpoint.
    A denoising-style input asks the model to reconstruct the text (after a few hundred tiny steps, expect
    fragments of the language, not fluent text).
    """),
    ("code", """
    import alexatm_jax

    lm = alexatm_jax.load(MODEL_DIR)
    text = "The quick brown fox jumps over the lazy dog."
    output = lm.generate(lm.tokenize([text]), max_new_tokens=24)
    print(repr(lm.detokenize(output)[0]))
    display(JSON({"model_dir": MODEL_DIR, "measured": measured, "expected": expected, "steps": steps,
                  "losses": losses, "first_loss": losses[0], "last_loss": losses[-1], "train_summary_step":
                  summary["step"]}))
    """),
]


# --------------------------------------------------------------------------------------------------------------
# 03: scaling plans
# --------------------------------------------------------------------------------------------------------------

SCALING = [
    ("md", """
    # Scaling plans for AlexaTM 20B

    Will the 20B model train on a given mesh, and how much memory does each device need? `alexatm-jax plan`
    compiles the real train step (scanned layers, rematerialisation, bf16 compute, f32 master weights and AdamW
    state) ahead of time on abstract shapes over **virtual CPU devices**: nothing is allocated, so a laptop or
    a free Colab runtime can plan for 64 accelerators. This notebook plans several meshes and shows:

    * a table of per-device memory (parameters, optimizer state, XLA temporaries, total) and FLOPs per step;
    * a bar chart of per-device memory per mesh against the device memory.

    Parameter and optimizer bytes are exact shard sizes. Temporaries are the CPU compiler's buffer assignment,
    a stand-in for the accelerator compiler's (expect differences of tens of percent). Each 20B plan is one
    XLA compile (about a minute on 2 CPU cores).
    """),
    ("code", INSTALL),
    ("md", """
    ## Parameters

    Mesh axes are `data` (replicas), `fsdp` (parameters, gradients and optimizer state sharded) and `tensor`
    (heads, MLP and vocabulary split). The global batch of each plan is `SEQUENCES_PER_SHARD` x data x fsdp.
    """),
    (PARAMETERS_TAG, """
    MODEL = "20b"                       # preset: tiny small base large xl 20b
    MESHES = ["fsdp=8", "fsdp=4,tensor=2", "data=2,fsdp=4", "fsdp=16,tensor=4"]
    SEQUENCES_PER_SHARD = 1             # sequences per data x fsdp shard
    INPUTS_LENGTH = 512
    TARGETS_LENGTH = 512
    DEVICE_MEMORY_GIB = 80              # e.g. 80 (A100/H100 80 GB), 32 (TPU v4), 95 (TPU v5p)
    OPTIMIZER = "adamw"                 # or "adafactor"
    PLAN_TIMEOUT_S = 1800
    """),
    ("md", """
    ## 1. Plan each mesh

    JAX fixes its device count when it starts, and this kernel may already have started it, so each plan runs
    `alexatm-jax plan` in a fresh Python process, which sets up as many virtual CPU devices as the mesh needs.
    Its last output line is the plan as JSON.
    """),
    ("code", """
    import json
    import os
    import subprocess
    import sys
    import time

    from IPython.display import JSON, Markdown, display


    def mesh_sizes(spec):
        sizes = {"data": 1, "fsdp": 1, "tensor": 1}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            axis, _, size = part.partition("=")
            if axis not in sizes or not size.isdigit():
                raise ValueError(f"bad mesh {spec!r}: write AXIS=SIZE pairs over data, fsdp, tensor, e.g. 'fsdp=8'")
            sizes[axis] = int(size)
        return sizes


    def run_plan(mesh):
        sizes = mesh_sizes(mesh)
        batch = SEQUENCES_PER_SHARD * sizes["data"] * sizes["fsdp"]
        command = [sys.executable, "-m", "alexatm_jax.cli", "plan", "--model", MODEL, "--mesh", mesh,
                   "--batch", str(batch), "--inputs", str(INPUTS_LENGTH), "--targets", str(TARGETS_LENGTH),
                   "--device-memory", str(DEVICE_MEMORY_GIB), "--optimizer", OPTIMIZER]
        # Plans compile on virtual CPU devices whatever accelerator this runtime has; the command adds the
        # device-count flag itself, so an inherited one must not override it.
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("XLA_FLAGS", None)
        start = time.time()
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=PLAN_TIMEOUT_S)
        if proc.returncode:
            raise RuntimeError(f"plan for {mesh} failed (exit {proc.returncode}):\\n{proc.stderr[-3000:]}")
        plan = json.loads(proc.stdout.strip().splitlines()[-1])
        plan["mesh_spec"] = mesh
        plan["command"] = "alexatm-jax " + " ".join(command[3:])
        plan["plan_seconds"] = round(time.time() - start, 1)
        return plan


    plans = []
    for mesh in MESHES:
        plans.append(run_plan(mesh))
        gib = plans[-1]["per_device_gib"]
        print(f"{mesh:>20s}: total {gib['total']:.2f} GiB/device ({plans[-1]['plan_seconds']} s)")
    """),
    ("md", """
    ## 2. The table
    """),
    ("code", """
    first = plans[0]
    count = first["model_params"]
    size = f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
    lines = [f"**{MODEL}** ({size} parameters, scan={first['scan_layers']}, "
             f"remat={first['remat_policy']}, compute {first['dtype']}, {OPTIMIZER}), lengths "
             f"{INPUTS_LENGTH}+{TARGETS_LENGTH}, device memory {DEVICE_MEMORY_GIB} GiB", "",
             "| mesh | devices | batch | params GiB/dev | optimizer GiB/dev | temporaries GiB/dev | total GiB/dev "
             "| fits | model TFLOP/step |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for plan in plans:
        gib = plan["per_device_gib"]
        lines.append(f"| `{plan['mesh_spec']}` | {plan['devices']} | {plan['batch']} | {gib['params']:.3g} | "
                     f"{gib['optimizer_state']:.3g} | {gib['temporaries']:.3g} | {gib['total']:.3g} | "
                     f"{'yes' if plan['fits'] else '**no**'} | {plan['model_flops_per_step'] / 1e12:,.3g} |")
    display(Markdown("\\n".join(lines)))
    """),
    ("md", """
    ## 3. The chart

    Stacked per-device bytes: parameters, optimizer state and temporaries; the dashed line is the device memory.
    (The total also counts the batch and any output buffers not aliased to the state, so it can exceed the
    stack slightly.)
    """),
    ("code", """
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [plan["mesh_spec"] for plan in plans]
    parts = [("params", "parameters"), ("optimizer_state", "optimizer state"), ("temporaries", "temporaries")]
    x = np.arange(len(plans))
    fig, ax = plt.subplots(figsize=(3 + 1.8 * len(plans), 4.5))
    bottom = np.zeros(len(plans))
    for key, label in parts:
        values = np.array([plan["per_device_gib"][key] for plan in plans])
        ax.bar(x, values, bottom=bottom, label=label)
        bottom += values
    ax.scatter(x, [plan["per_device_gib"]["total"] for plan in plans], color="black", marker="_", s=600,
               label="total", zorder=3)
    ax.axhline(DEVICE_MEMORY_GIB, color="red", linestyle="--", label=f"device memory ({DEVICE_MEMORY_GIB} GiB)")
    # One mesh axis per line keeps long specs such as "data=2,fsdp=4,tensor=2" from running into each other.
    ax.set_xticks(x, [label.replace(",", "\\n") + f"\\n{plan['devices']} devices\\nbatch {plan['batch']}"
                      for label, plan in zip(labels, plans)])
    ax.set_ylabel("GiB per device")
    ax.set_title(f"{MODEL}: per-device memory of one train step")
    ax.set_ylim(0, 1.12 * max(DEVICE_MEMORY_GIB, max(plan["per_device_gib"]["total"] for plan in plans)))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    plt.tight_layout()
    plt.show()
    display(JSON({"model": MODEL, "device_memory_gib": DEVICE_MEMORY_GIB, "plans": plans}))
    """),
]


NOTEBOOKS = {
    "01_few_shot_in_context.ipynb": FEW_SHOT,
    "02_pretraining_tiny.ipynb": PRETRAINING,
    "03_scaling_plans.ipynb": SCALING,
}


def build_notebooks() -> dict[str, nbformat.NotebookNode]:
    """{file name: notebook} for every notebook, without outputs."""
    notebooks = {}
    for name, spec in NOTEBOOKS.items():
        nb = _notebook(name, spec)
        nbformat.validate(nb)
        notebooks[name] = nb
    return notebooks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    parser.add_argument("--out", default=NOTEBOOK_DIR, help="output folder (default notebooks/)")
    args = parser.parse_args(argv)
    stale = []
    os.makedirs(args.out, exist_ok=True)
    for name, nb in build_notebooks().items():
        path = os.path.join(args.out, name)
        if args.check:
            current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
            if current is None or current.rstrip("\n") != nbformat.writes(nb).rstrip("\n"):
                stale.append(name)
        else:
            atomic_files.write_text(path, nbformat.writes(nb) + "\n")
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python scripts/make_notebooks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
