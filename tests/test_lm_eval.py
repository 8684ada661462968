"""The lm-evaluation-harness adapter (``alexatm_jax.integrations.lm_eval``), offline, on a model trained here.

A tiny model is trained for two steps by ``alexatm-jax train``; lm-eval then runs the task YAMLs of
``tasks/lm_eval`` over the bundled held-out data (local JSON lines, Hugging Face datasets offline, and every
socket connection refused), and each logged result is recomputed independently through ``alexatm_jax.load``:

* multiple choice (loglikelihood): every (context, continuation) log-likelihood equals ``lm.score`` of the
  tokenized prompt and continuation; ``is_greedy`` equals an arg-max over ``lm.logits``; the accuracy equals the
  one recomputed from those scores;
* generate_until: the outputs equal ``lm.generate``'s greedy outputs cut at the stop strings;
* loglikelihood_rolling: equals ``lm.score`` of the text after the CLM-mode encoder input; several windows
  (a small ``max_length``) give the sum over independently built windows;
* the same task through ``python -m alexatm_jax.integrations.lm_eval`` (lm-eval's own CLI) on a mesh over two
  virtual CPU devices gives the same log-likelihoods.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                reason="needs the lm-eval extra: pip install -e '.[lm-eval]'")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TASKS_DIR = os.path.join(REPO, "tasks", "lm_eval")
SECTION, TRANSLATION, PERPLEXITY = ("alexatm_debian_section", "alexatm_debian_translation_en_de",
                                    "alexatm_udhr_perplexity_en")
LIMIT = 3
TOLERANCE = 1e-5
# The independent reference computations run at fixed shapes, so that each compiles once.
ROWS, PROMPT_WIDTH, TARGET_WIDTH = 24, 256, 128
GENERATE_ROWS, GENERATE_WIDTH = 8, 128


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(b))


@contextlib.contextmanager
def _offline(cache_dir):
    """No network: internet socket connections fail, and Hugging Face hub / datasets are in offline mode with a
    private cache (the variables for a first import, the module constants in case they were imported)."""
    def refuse(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"test_lm_eval is offline: connection to {address} refused")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                            ("HF_DATASETS_CACHE", str(cache_dir))):
            patch.setenv(name, value)
        import datasets
        import huggingface_hub.constants

        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        for name, value in (("HF_HUB_OFFLINE", True), ("HF_DATASETS_OFFLINE", True), ("HF_DATASETS_CACHE", cache_dir)):
            patch.setattr(datasets.config, name, value, raising=False)
        patch.setattr(socket.socket, "connect", refuse)
        patch.chdir(cache_dir)  # not the repository: the YAMLs find their data through the package
        yield


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lm_eval") / "run"
    command = [sys.executable, "-c", "import sys; from alexatm_jax.cli import main; sys.exit(main())", "train",
               "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/pretrain.gin",
               f"--gin.MODEL_DIR={directory}", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2",
               "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}", "--gin.CheckpointConfig.every_steps=2",
               "--gin.EvalConfig.every_steps=0", "--gin.LoggingConfig.tensorboard=False"]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return str(directory)


@pytest.fixture(scope="module")
def lm(run_dir):
    import alexatm_jax
    return alexatm_jax.load(run_dir)


@pytest.fixture(scope="module")
def evaluation(run_dir, tmp_path_factory):
    with _offline(tmp_path_factory.mktemp("hf_cache")):
        import lm_eval

        from alexatm_jax.integrations import lm_eval as adapter_module  # registers the "alexatm_jax" model type

        assert os.path.samefile(adapter_module.TASKS_DIR, TASKS_DIR)
        # include_defaults=False: lm-eval's own few thousand task YAMLs are not indexed (20 s saved).
        return lm_eval.simple_evaluate(
            model="alexatm_jax", model_args=f"path={run_dir},batch_size=8", tasks=[SECTION, TRANSLATION, PERPLEXITY],
            task_manager=adapter_module.task_manager(include_defaults=False), limit=LIMIT, log_samples=True,
            bootstrap_iters=0)


@pytest.fixture(scope="module")
def adapter(lm):
    from alexatm_jax.integrations.lm_eval import AlexaTMJaxLM
    return AlexaTMJaxLM(lm=lm, batch_size=4)


def _requests(kind, *arguments):
    from lm_eval.api.instance import Instance
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(arguments)]


def _batch(rows, width, count=ROWS):
    """[count, width] ids and mask (rows beyond the given ones are copies of the first)."""
    assert len(rows) <= count and max(len(r) for r in rows) <= width
    ids, mask = np.zeros((count, width), np.int32), np.zeros((count, width), np.int32)
    for i in range(count):
        row = rows[i] if i < len(rows) else rows[0]
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return ids, mask


def _scores(lm, prompts, targets) -> list[float]:
    """lm.score of each (prompt ids, target ids)."""
    ids, mask = _batch(prompts, PROMPT_WIDTH)
    tgt, tmask = _batch(targets, TARGET_WIDTH)
    return [float(v) for v in lm.score(ids, tgt, attention_mask=mask, target_mask=tmask)[:len(prompts)]]


def _greedy(lm, prompts, targets) -> list[bool]:
    """Independent is_greedy: the arg-max of lm.logits at every target position is the target."""
    ids, mask = _batch(prompts, PROMPT_WIDTH)
    decoder_inputs, _ = _batch([[lm.config.decoder_start_token_id] + list(t[:-1]) for t in targets], TARGET_WIDTH)
    logits = lm.logits(ids, decoder_inputs, attention_mask=mask)
    return [bool((logits[i, :len(t)].argmax(axis=-1) == np.asarray(t)).all()) for i, t in enumerate(targets)]


def _generate(lm, prompts, max_new_tokens) -> list[str]:
    """lm.generate's greedy texts (cut at EOS)."""
    ids, mask = _batch(prompts, GENERATE_WIDTH, GENERATE_ROWS)
    return lm.detokenize(lm.generate(ids, mask, max_new_tokens=max_new_tokens))[:len(prompts)]


def test_multiple_choice_log_likelihoods_are_lm_score(evaluation, lm):
    samples = evaluation["samples"][SECTION]
    assert len(samples) == LIMIT
    accuracies = []
    for sample in samples:
        pairs = [tuple(args) for args in sample["arguments"]]  # (context, continuation) per choice
        context = pairs[0][0]
        assert context.startswith("Summary: ") and context.endswith("\nSection:")
        assert all(c == context for c, _ in pairs) and all(cont.startswith(" ") for _, cont in pairs)
        choices = [cont[1:] for _, cont in pairs]
        assert len(choices) == 16 and "libs" in choices
        prompt = lm.tokenize([context])[0]
        assert len(prompt) <= PROMPT_WIDTH < lm.config.max_position_embeddings  # not truncated by the adapter
        targets = [lm.tokenizer.encode(cont) for _, cont in pairs]
        expected = _scores(lm, [prompt] * len(targets), targets)
        logged = sample["filtered_resps"]  # (log-likelihood, is_greedy) per choice
        for (ours, _), theirs in zip(logged, expected, strict=True):
            assert _close(ours, theirs), (ours, theirs)
        assert [greedy for _, greedy in logged] == _greedy(lm, [prompt] * len(targets), targets)
        gold = choices.index(sample["target"]) if isinstance(sample["target"], str) else int(sample["target"])
        accuracy = float(int(np.argmax(expected)) == gold)
        assert sample["acc"] == accuracy
        accuracies.append(accuracy)
    assert evaluation["results"][SECTION]["acc,none"] == pytest.approx(np.mean(accuracies))


def test_generate_until_outputs_are_lm_generate_cut_at_stops(evaluation, lm):
    samples = evaluation["samples"][TRANSLATION]
    assert len(samples) == LIMIT
    contexts, outputs = [], []
    for sample in samples:
        (context, gen_kwargs), = [tuple(args) for args in sample["arguments"]]
        # One shot from the dev split, in CLM mode (the task's description): the AlexaTM Flores prompt.
        assert context.startswith("[CLM] Sentence:  ") and context.count("; Translation in German:") == 2
        assert gen_kwargs["until"] == [";"] and gen_kwargs["max_gen_toks"] == 48
        contexts.append(context)
        outputs.append(sample["filtered_resps"][0])
    prompts = lm.tokenize(contexts)
    assert all(p[0] == lm.tokenizer.piece_to_id("[CLM]") for p in prompts)
    assert outputs == [text.split(";")[0] for text in _generate(lm, prompts, 48)]


def test_rolling_log_likelihood_is_clm_mode_score(evaluation, lm):
    samples = evaluation["samples"][PERPLEXITY]
    assert len(samples) == LIMIT
    clm, eos = lm.tokenizer.piece_to_id("[CLM]"), lm.config.eos_token_id
    texts = [tuple(sample["arguments"][0])[0] for sample in samples]
    tokens = [lm.tokenizer.encode(text) for text in texts]  # each shorter than the model: one window
    expected = _scores(lm, [[clm, eos]] * len(tokens), tokens)
    for sample, value in zip(samples, expected):
        assert _close(float(sample["filtered_resps"][0]), value)
    assert evaluation["results"][PERPLEXITY]["word_perplexity,none"] > 1


def test_rolling_windows_cover_every_token_once(adapter, lm):
    from alexatm_jax.integrations.lm_eval import AlexaTMJaxLM

    text = ("All human beings are born free and equal in dignity and rights. They are endowed with reason and "
            "conscience and should act towards one another in a spirit of brotherhood.")
    small = AlexaTMJaxLM(lm=lm, max_length=8, batch_size=4)
    tokens = lm.tokenizer.encode(text)
    clm, eos = lm.tokenizer.piece_to_id("[CLM]"), lm.config.eos_token_id
    # Independently: windows of 8 targets, the encoder reading [CLM] + up to 6 previous tokens + EOS.
    windows = [([clm] + tokens[max(0, start - 6):start] + [eos], tokens[start:start + 8])
               for start in range(0, len(tokens), 8)]
    assert len(windows) > 2 and small.rolling_windows(text) == windows
    result, = small.loglikelihood_rolling(_requests("loglikelihood_rolling", (text,)))
    assert _close(result, sum(_scores(lm, *zip(*windows))))
    # One window for the whole text: [CLM] + EOS -> every token.
    whole, = adapter.loglikelihood_rolling(_requests("loglikelihood_rolling", (text,)))
    assert _close(whole, _scores(lm, [[clm, eos]], [tokens])[0])


def test_loglikelihood_whitespace_empty_continuations_and_greedy(adapter, lm):
    context = "Summary: text editor\nDescription: A small text editor for the terminal.\nSection:"
    prompt = lm.tokenize([context])[0]
    results = adapter.loglikelihood(_requests(
        "loglikelihood", (context, " editors"), (context + " ", "editors"), (context, "\n"), ("", " editors")))
    # Trailing whitespace of the context moves into the continuation: the same request.
    assert results[0] == results[1]
    assert results[2] == (0.0, True)  # whitespace only: no pieces to score
    expected = _scores(lm, [prompt, lm.tokenize([""])[0]], [lm.tokenizer.encode(" editors")] * 2)
    assert _close(results[0][0], expected[0]) and _close(results[3][0], expected[1])
    # is_greedy: the model's own greedy tokens are greedy; changing the last one is not.
    ids, mask = _batch([prompt], GENERATE_WIDTH, GENERATE_ROWS)
    greedy = [int(t) for t in lm.generate(ids, mask, max_new_tokens=3)[0]]
    if lm.config.eos_token_id in greedy:
        greedy = greedy[:greedy.index(lm.config.eos_token_id) + 1]
    other = greedy[:-1] + [(greedy[-1] + 1) % lm.config.vocab_size]
    (value, is_greedy), (_, other_greedy) = adapter.score_pairs([(prompt, greedy), (prompt, other)])
    assert is_greedy is True and other_greedy is False
    assert _close(value, _scores(lm, [prompt], [greedy])[0])


def test_generate_until_honours_until_and_max_gen_toks_batched(adapter, lm):
    contexts = ["[CLM] Sentence:  a free software text editor; Translation in German:",
                "Summary: image viewer\nDescription: Shows pictures.\nSection:",
                "[CLM] The Universal Declaration of Human Rights",
                "Document: a very short one.\nSummary:"]
    prompts = lm.tokenize(contexts)
    full, three = _generate(lm, prompts, 12), _generate(lm, prompts, 3)
    # A stop string that occurs in the first output (its middle word), and one that never occurs.
    words = full[0].split()
    stop = words[len(words) // 2] if words else "\u2603"
    requests = _requests("generate_until", *[(c, {"until": [stop, "\u2603"], "max_gen_toks": 12}) for c in contexts],
                         *[(c, {"until": ["\n\n"], "max_gen_toks": 3, "do_sample": False, "temperature": 0.0})
                           for c in contexts])
    outputs = adapter.generate_until(requests)
    assert outputs[:len(contexts)] == [text[:text.find(stop)] if stop in text else text for text in full]
    assert outputs[len(contexts):] == three
    with pytest.raises(ValueError, match="does not understand gen_kwargs"):
        adapter.generate_until(_requests("generate_until", (contexts[0], {"until": [";"], "best_of": 2})))


def test_context_truncation_and_clm_mode(lm):
    from alexatm_jax.integrations.lm_eval import AlexaTMJaxLM

    clm, eos = lm.tokenizer.piece_to_id("[CLM]"), lm.config.eos_token_id
    short = AlexaTMJaxLM(lm=lm, max_length=6, clm=True)
    text = "one two three four five six seven eight nine ten"
    pieces = lm.tokenizer.encode(text)
    assert short.context_ids(text) == [clm] + pieces[-4:] + [eos]  # the newest tokens kept
    assert short.context_ids("[CLM] " + text) == short.context_ids(text)  # no second CLM token
    assert AlexaTMJaxLM(lm=lm).context_ids("two") == lm.tokenize(["two"])[0]  # denoising mode by default


def test_cli_on_two_devices_gives_the_same_log_likelihoods(evaluation, run_dir, tmp_path):
    """lm-eval's CLI through our module, from outside the repository and with no --include_path: the
    package's tasks are included by itself."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "alexatm_jax.integrations.lm_eval", "--model", "alexatm_jax",
               "--model_args", f"path={run_dir},mesh=data=1;fsdp=2", "--batch_size", "5",
               "--tasks", SECTION, "--limit", str(LIMIT), "--log_samples", "--output_path", str(out)]
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2", HF_DATASETS_CACHE=str(tmp_path / "hf"))
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    results_file, = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    assert "fsdp=2" in json.load(open(results_file))["config"]["partitioner"]
    samples_file, = glob.glob(str(out / "**" / f"samples_{SECTION}_*.jsonl"), recursive=True)
    sharded = {int(s["doc_id"]): s for s in map(json.loads, open(samples_file))}
    single = {int(s["doc_id"]): s for s in evaluation["samples"][SECTION]}
    assert sorted(sharded) == sorted(single)
    for doc_id, sample in single.items():
        ours = [float(r[0]) for r in sharded[doc_id]["filtered_resps"]]
        theirs = [r[0] for r in sample["filtered_resps"]]
        assert all(_close(a, b) for a, b in zip(ours, theirs)), (ours, theirs)


def test_include_path_is_added_only_when_the_command_names_none():
    from alexatm_jax.integrations.lm_eval import TASKS_DIR as ours, with_tasks_dir

    assert with_tasks_dir(["--model", "alexatm_jax", "--tasks", SECTION]) == [
        "--model", "alexatm_jax", "--tasks", SECTION, "--include_path", ours]
    assert with_tasks_dir(["ls", "tasks"]) == ["ls", "tasks", "--include_path", ours]
    for own in (["run", "--tasks", "x", "--include_path", "/mine"], ["validate", "--include_path=/mine"]):
        assert with_tasks_dir(own) == own
    for untouched in ([], ["run"], ["--help"], ["run", "-h"]):
        assert with_tasks_dir(untouched) == untouched


def test_installed_package_carries_the_tasks_and_runs_them_from_any_directory(tmp_path):
    """What ``pip install`` puts in site-packages (setup.py's build_py: packages and package data) holds the
    task YAMLs and their loader, and lm-eval builds every task from that copy alone, in a directory with no
    repository in sight."""
    build = tmp_path / "site"
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    installed = build / "alexatm_jax" / "task_cards" / "lm_eval"
    assert sorted(p.name for p in installed.iterdir()) == sorted(os.listdir(TASKS_DIR))
    script = f"""
import json, os, lm_eval.tasks
from alexatm_jax.integrations import lm_eval as adapter_module
assert adapter_module.TASKS_DIR.startswith({str(build)!r}), adapter_module.TASKS_DIR
tasks = lm_eval.tasks.get_task_dict({[SECTION, TRANSLATION, PERPLEXITY]!r},
                                    adapter_module.task_manager(include_defaults=False))
print(json.dumps({{name: len(list(task.test_docs())) for name, task in tasks.items()}}))
"""
    env = _env(HF_DATASETS_CACHE=str(tmp_path / "hf"))
    env["PYTHONPATH"] = str(build)  # the installed copy, not the repository
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    # The bundled English test split: 200 section descriptions, 24 UDHR sentences; German pairs exist.
    assert counts[SECTION] == 200 and counts[PERPLEXITY] == 24 and counts[TRANSLATION] > 0, counts
