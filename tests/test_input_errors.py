"""One error boundary: every bad input to the CLI or the Python API is one clear message, no traceback.

A table of bad inputs across train, eval, generate, convert-pytorch, export-pytorch, plan, describe,
train-tokenizer, show-data and the Python API (``alexatm_jax.load``, ``lm.generate`` / ``logits`` / ``score``
/ ``encode``). For each CLI case: a non-zero exit, the offending value or path named on stderr, no traceback,
and nothing half-written left behind (no output file, no new run-directory content). For each API case: a
``ValueError`` (or, for a missing path, ``FileNotFoundError``) whose message names the value. Internal errors
(bugs, a library's unanticipated ValueError, an I/O error) still propagate with their traceback.

Every case shares one tiny trained run (2 steps, a synthetic copy-task batch source, so the fixture does not
depend on the data pipeline) and runs the CLI in-process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import gin
import numpy as np
import pytest

from alexatm_jax import cli
from alexatm_jax.errors import UserInputError
from test_train_support import copy_batches, run_train  # noqa: F401  (copy_batches: gin-registered)

TINY = "gin_configs/models/tiny.gin"
PRETRAIN = "gin_configs/runs/pretrain.gin"
VOCAB = 8192  # the tiny preset's vocabulary (the bundled SentencePiece model + 100 sentinels)


# ---- The shared fixture: one tiny trained run, its loaded model, and derived directories. ----

class Context:
    """Shared, lazily built inputs. ``tmp`` is a fresh directory per case."""

    def __init__(self, root: Path):
        self.root = root
        self.tmp: Path = root

    @functools.cached_property
    def run(self) -> Path:
        run = self.root / "shared" / "run"
        gin.clear_config()  # the dataclasses are gin-configurable: no binding of an earlier case may leak in
        run_train(model_dir=str(run), train_steps=2, batch_size=2, task_feature_lengths={"inputs": 32, "targets": 32},
                  batch_iterator_fn=copy_batches, checkpoint_every_steps=2, log_every_steps=1, warmup_steps=1)
        assert (run / "checkpoints").is_dir() and (run / "tokenizer.model").is_file()
        return run

    @functools.cached_property
    def lm(self):
        import alexatm_jax
        return alexatm_jax.load(self.run)

    @functools.cached_property
    def hf(self) -> Path:
        """The run exported to the AlexaTM PyTorch format (safetensors): a valid convert-pytorch source."""
        from alexatm_jax.checkpoints.export_pytorch import export
        path = self.root / "shared" / "hf"
        export(self.run, path)
        return path

    # Helpers that make bad inputs in the case's own directory.
    def file(self, name: str, data: bytes | str = b"") -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def copy(self, source: Path, name: str) -> Path:
        target = self.tmp / name
        shutil.copytree(source, target)
        return target

    def model_dir(self, name: str = "model", config: Optional[bytes | str] = None, tokenizer: bool = True) -> Path:
        """The run's small files copied (config.json optionally replaced), its checkpoints linked."""
        target = self.tmp / name
        target.mkdir()
        for entry in self.run.iterdir():
            if entry.is_file():
                shutil.copyfile(entry, target / entry.name)
        (target / "checkpoints").symlink_to(self.run / "checkpoints")
        if config is not None:
            (target / "config.json").write_bytes(config.encode() if isinstance(config, str) else config)
        if not tokenizer:
            (target / "tokenizer.model").unlink()
        return target

    def config_text(self, **changes) -> str:
        config = json.loads((self.run / "config.json").read_text())
        config.update(changes)
        return json.dumps(config)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return Context(tmp_path_factory.mktemp("input_errors"))


@pytest.fixture
def ctx(shared, tmp_path, monkeypatch):
    monkeypatch.delenv("ALEXATM_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    shared.tmp = tmp_path
    yield shared
    gin.clear_config()  # `train` cases leave their bindings in gin's global config


def _unwritable_dir(ctx) -> str:
    """A directory path this process cannot create: a read-only folder, or (as root, whom permissions do
    not stop) a path under /sys."""
    if os.geteuid() != 0:
        locked = ctx.tmp / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return str(locked / "run")
    path = "/sys/alexatm_jax_unwritable/run"
    try:
        os.makedirs(path)
    except OSError:
        return path
    shutil.rmtree("/sys/alexatm_jax_unwritable", ignore_errors=True)
    pytest.skip("no unwritable path on this machine")


def _listing(path: Path) -> Optional[list]:
    if not path.exists():
        return None
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---- The CLI table. ----

@dataclasses.dataclass
class Case:
    """``build(ctx)`` -> (argv, [strings stderr must contain], [paths that must not exist afterwards])."""
    id: str
    build: Callable


def train(ctx, *flags, model_dir=None, iterator=True):
    model_dir = model_dir or str(ctx.tmp / "run")
    argv = ["train", f"--gin_file={TINY}", f"--gin_file={PRETRAIN}", f"--gin.MODEL_DIR={model_dir}",
            "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=2", "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}",
            "--gin.CheckpointConfig.every_steps=1", "--gin.EvalConfig.every_steps=0",
            "--gin.LoggingConfig.tensorboard=False"]
    if iterator:
        argv.append("--gin.DataConfig.batch_iterator_fn=@copy_batches")
    return argv + list(flags)


def gen(ctx, *flags, checkpoint=None):
    return ["generate", "--checkpoint", str(checkpoint or ctx.run), "--prompt", "Hallo Welt", "--max-new-tokens", "2",
            *flags]


def evl(ctx, *flags, checkpoint=None, output=None):
    return ["eval", "--checkpoint", str(checkpoint or ctx.run), "--task", "udhr_translation", "--limit", "1",
            "--no-progress", "--output", str(output or ctx.tmp / "out"), *flags]


def _jsonl(ctx, name, records):
    return ctx.file(name, "".join(json.dumps(r) + "\n" for r in records))


def _latin1(ctx, name="latin1.txt"):
    return ctx.file(name, "good line\ncaf\xe9 au lait\n".encode("latin-1"))


def _not_spm(ctx):
    return ctx.file("bad.model", b"this is not a sentencepiece model\n")


class _Exploit:
    """A pickle that would run code if loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _with_pickle_bin(source: Path) -> Path:
    import pickle
    (source / "model.safetensors").unlink()
    (source / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": _Exploit(str(source.parent / "pwned"))}))
    return source


def _run_with_config(ctx, text):
    run = ctx.tmp / "existing"
    run.mkdir()
    (run / "config.json").write_text(text)
    return run


CLI_CASES = [
    # --- train: flags, gin, MODEL_DIR ---
    Case("train-gin-flag-without-value", lambda c: (train(c, "--gin.TRAIN_STEPS"), ["--gin.TRAIN_STEPS"], [c.tmp / "run"])),
    Case("train-gin-flag-followed-by-flag", lambda c: (train(c, "--gin.BATCH_SIZE", "--gin.TRAIN_STEPS=2"),
                                                       ["--gin.BATCH_SIZE"], [c.tmp / "run"])),
    Case("train-gin-file-missing", lambda c: (train(c, "--gin_file=nope/missing.gin"), ["nope/missing.gin"], [c.tmp / "run"])),
    Case("train-gin-file-syntax", lambda c: (train(c, f"--gin_file={c.file('bad.gin', 'this is = = not gin')}"),
                                             ["bad.gin"], [c.tmp / "run"])),
    Case("train-gin-file-not-utf8", lambda c: (train(c, "--gin_file=" + str(c.file("latin.gin", b"# caf\xe9\n"))),
                                               ["latin.gin"], [c.tmp / "run"])),
    Case("train-gin-file-is-directory", lambda c: (train(c, f"--gin_file={c.tmp}"), [str(c.tmp)], [c.tmp / "run"])),
    Case("train-no-gin-file", lambda c: (["train", f"--gin.MODEL_DIR={c.tmp / 'run'}"], ["--gin_file"], [c.tmp / "run"])),
    Case("train-no-model-file", lambda c: (["train", f"--gin_file={PRETRAIN}", f"--gin.MODEL_DIR={c.tmp / 'run'}"],
                                           ["models/<preset>.gin"], [c.tmp / "run"])),
    Case("train-unknown-macro", lambda c: (train(c, "--gin.TRAIN_STEPZ=3"), ["TRAIN_STEPZ"], [c.tmp / "run"])),
    Case("train-unknown-configurable", lambda c: (train(c, "--gin.NoSuchConfig.x=3"), ["NoSuchConfig"], [c.tmp / "run"])),
    Case("train-unknown-parameter", lambda c: (train(c, "--gin.OptimizerConfig.learning_rat=3"), ["learning_rat"],
                                               [c.tmp / "run"])),
    Case("train-bad-gin-name", lambda c: (train(c, "--gin.9lives=3"), ["9lives"], [c.tmp / "run"])),
    Case("train-steps-wrong-type", lambda c: (train(c, "--gin.TRAIN_STEPS=many"), ["TRAIN_STEPS", "many"], [c.tmp / "run"])),
    Case("train-batch-size-zero", lambda c: (train(c, "--gin.BATCH_SIZE=0"), ["BATCH_SIZE", "0"], [c.tmp / "run"])),
    Case("train-model-param-wrong-type", lambda c: (train(c, "--gin.ModelConfig.d_model=big"), ["d_model", "big"],
                                                    [c.tmp / "run"])),
    Case("train-model-param-float-for-int", lambda c: (train(c, "--gin.ModelConfig.num_heads=2.5"), ["num_heads", "2.5"],
                                                       [c.tmp / "run"])),
    Case("train-model-heads-do-not-divide", lambda c: (train(c, "--gin.ModelConfig.num_heads=3"), ["num_heads=3"],
                                                       [c.tmp / "run"])),
    Case("train-steps-float", lambda c: (train(c, "--gin.TRAIN_STEPS=1e3"), ["TRAIN_STEPS", "1000.0"], [c.tmp / "run"])),
    Case("train-unknown-optimizer", lambda c: (train(c, "--gin.OptimizerConfig.name='sgd'"), ["sgd"], [c.tmp / "run"])),
    Case("train-model-dir-remote-scheme", lambda c: (train(c, model_dir="ftp://host/run"), ["ftp://"], [])),
    Case("train-learning-rate-wrong-type", lambda c: (train(c, "--gin.OptimizerConfig.learning_rate=fast"),
                                                      ["learning_rate", "fast"], [c.tmp / "run"])),
    Case("train-seed-wrong-type", lambda c: (train(c, "--gin.train.seed=lucky"), ["seed", "lucky"], [c.tmp / "run"])),
    Case("train-feature-lengths", lambda c: (train(c, "--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 16}"),
                                             ["TASK_FEATURE_LENGTHS", "0"], [c.tmp / "run"])),
    Case("train-nonfinite-policy", lambda c: (train(c, "--gin.StepConfig.nonfinite='explode'"), ["explode"],
                                              [c.tmp / "run"])),
    Case("train-mesh-syntax", lambda c: (train(c, "--gin.MESH='data=two'"), ["data=two"], [c.tmp / "run"])),
    Case("train-mesh-not-a-string", lambda c: (train(c, "--gin.MESH=4"), ["mesh spec 4"], [c.tmp / "run"])),
    Case("train-mesh-tensor-does-not-divide", lambda c: (train(c, "--gin.MESH='tensor=3'"), ["tensor=3"], [c.tmp / "run"])),
    Case("train-tokenizer-not-spm", lambda c: (train(c, f"--gin.DataConfig.tokenizer_path={_not_spm(c)}"),
                                               ["bad.model"], [c.tmp / "run"])),
    Case("train-tokenizer-missing", lambda c: (train(c, f"--gin.DataConfig.tokenizer_path={c.tmp / 'none.model'}"),
                                               ["none.model"], [c.tmp / "run"])),
    Case("train-unknown-mixture", lambda c: (train(c, "--gin.MIXTURE_OR_TASK_NAME=no_such_mixture", iterator=False),
                                             ["no_such_mixture"], [c.tmp / "run"])),
    Case("train-model-dir-unwritable", lambda c: (lambda d: (train(c, model_dir=d), [os.path.dirname(d)], []))(
        _unwritable_dir(c))),
    Case("train-model-dir-under-a-file", lambda c: (train(c, model_dir=str(c.file("afile") / "run")), ["afile"],
                                                    [])),
    Case("train-model-dir-is-a-file", lambda c: (train(c, model_dir=str(c.file("run", "x"))), [str(c.tmp / "run")], [])),
    Case("train-model-dir-other-model", lambda c: (
        train(c, model_dir=str(_run_with_config(c, c.config_text(d_model=64, num_heads=2)))), ["existing", "d_model"],
        [c.tmp / "existing" / "tokenizer.model", c.tmp / "existing" / "checkpoints"])),
    Case("train-model-dir-bad-config-json", lambda c: (
        train(c, model_dir=str(_run_with_config(c, "{not json"))), ["existing", "config.json"],
        [c.tmp / "existing" / "tokenizer.model", c.tmp / "existing" / "checkpoints"])),
    Case("train-init-from-missing", lambda c: (train(c, f"--gin.train.init_from={c.tmp / 'no_init'}"), ["no_init"],
                                               [c.tmp / "run"])),
    Case("train-init-from-other-model", lambda c: (
        train(c, f"--gin.train.init_from={c.run}", "--gin.ModelConfig.d_model=64", "--gin.ModelConfig.num_heads=2"),
        [str(c.run)], [c.tmp / "run"])),
    Case("train-first-batch-fails", lambda c: (train(c, "--gin.DataConfig.batch_iterator_fn=@bad_batches"),
                                               ["decoder_loss_weights"], [c.tmp / "run"])),
    # --- eval ---
    Case("eval-batch-size-zero", lambda c: (evl(c, "--batch-size", "0"), ["--batch-size", "'0'"], [c.tmp / "out"])),
    Case("eval-shots-not-integers", lambda c: (evl(c, "--shots", "0,one"), ["0,one"], [c.tmp / "out"])),
    Case("eval-negative-shots", lambda c: (evl(c, "--shots", "-1"), ["-1"], [c.tmp / "out"])),
    Case("eval-unknown-task", lambda c: (evl(c, "--task", "no_such_task"), ["no_such_task"], [c.tmp / "out"])),
    Case("eval-bad-param", lambda c: (evl(c, "--param", "srcde"), ["srcde"], [c.tmp / "out"])),
    Case("eval-checkpoint-missing", lambda c: (evl(c, checkpoint=c.tmp / "nowhere"), ["nowhere"], [c.tmp / "out"])),
    Case("eval-checkpoint-is-file", lambda c: (evl(c, checkpoint=c.file("ckpt.txt", "x")), ["ckpt.txt"], [c.tmp / "out"])),
    Case("eval-checkpoint-without-params", lambda c: (evl(c, checkpoint=_run_with_config(c, c.config_text())),
                                                      ["existing"], [c.tmp / "out"])),
    Case("eval-checkpoint-config-not-json", lambda c: (evl(c, checkpoint=c.model_dir(config="{oops")),
                                                       ["config.json"], [c.tmp / "out"])),
    Case("eval-data-missing", lambda c: (evl(c, "--data", str(c.tmp / "none.jsonl")), ["none.jsonl"], [c.tmp / "out"])),
    Case("eval-data-not-utf8", lambda c: (evl(c, "--data", str(c.file("d.jsonl", b'{"src": "caf\xe9"}\n'))),
                                          ["d.jsonl"], [c.tmp / "out"])),
    Case("eval-data-not-json", lambda c: (evl(c, "--data", str(c.file("d.jsonl", '{"a": 1}\n{broken\n'))),
                                          ["d.jsonl"], [c.tmp / "out"])),
    Case("eval-card-not-yaml", lambda c: (evl(c, "--task", str(c.file("card.yaml", "name: [unclosed\n"))),
                                          ["card.yaml"], [c.tmp / "out"])),
    Case("eval-shots-data-missing", lambda c: (evl(c, "--shots", "1", "--param", "src=en,tgt=de", "--data",
                                                   str(_jsonl(c, "d.jsonl", [{"texts": {"en": "hi", "de": "hallo"}}])),
                                                   "--shots-data", str(c.tmp / "no_shots.jsonl")),
                                               ["no_shots.jsonl"], [c.tmp / "out"])),
    Case("eval-spm-not-spm", lambda c: (evl(c, "--spm", str(_not_spm(c))), ["bad.model"], [c.tmp / "out"])),
    Case("eval-remote-scheme", lambda c: (evl(c, checkpoint="ftp://host/model"), ["ftp://"], [c.tmp / "out"])),
    Case("eval-output-is-file", lambda c: (evl(c, output=c.file("results_file", "keep")), ["results_file"], [])),
    Case("eval-mesh-bad", lambda c: (evl(c, "--mesh", "rows=1"), ["rows"], [c.tmp / "out"])),
    # --- generate ---
    Case("generate-empty-stop", lambda c: (gen(c, "--stop", ""), ["--stop", "''"], [])),
    Case("generate-empty-prompt", lambda c: (["generate", "--checkpoint", str(c.run), "--prompt", " "], ["--prompt"], [])),
    Case("generate-max-new-tokens-zero", lambda c: (gen(c, "--max-new-tokens", "0"), ["--max-new-tokens", "'0'"], [])),
    Case("generate-top-p-zero", lambda c: (gen(c, "--top-p", "0"), ["--top-p", "'0'"], [])),
    Case("generate-temperature-nan", lambda c: (gen(c, "--temperature", "nan"), ["--temperature", "'nan'"], [])),
    Case("generate-checkpoint-missing", lambda c: (gen(c, checkpoint=c.tmp / "gone"), ["gone"], [])),
    Case("generate-no-tokenizer", lambda c: (gen(c, checkpoint=c.model_dir(tokenizer=False)), ["model", "tokenizer"], [])),
    Case("generate-tokenizer-not-spm", lambda c: (
        gen(c, checkpoint=(lambda d: (d / "tokenizer.model").write_bytes(b"junk") and d)(c.model_dir())),
        ["tokenizer.model"], [])),
    Case("generate-config-not-utf8", lambda c: (gen(c, checkpoint=c.model_dir(config=b'{"d_model": "\xff"}')),
                                                ["config.json"], [])),
    Case("generate-config-field-wrong-type", lambda c: (gen(c, checkpoint=c.model_dir(config=c.config_text(num_heads="4"))),
                                                        ["num_heads", "'4'"], [])),
    Case("generate-mesh-too-many-devices", lambda c: (gen(c, "--mesh", "data=64"), ["data=64"], [])),
    Case("generate-mesh-not-integer", lambda c: (gen(c, "--mesh", "data=x"), ["data=x"], [])),
    Case("generate-prompt-too-long", lambda c: (gen(c, "--prompt", "Hallo " * 600), ["512 positions"], [])),
    # --- convert-pytorch ---
    Case("convert-source-missing", lambda c: (["convert-pytorch", str(c.tmp / "hf_none"), str(c.tmp / "dst")],
                                              ["hf_none"], [c.tmp / "dst"])),
    Case("convert-source-is-file", lambda c: (["convert-pytorch", str(c.file("hf.bin", "x")), str(c.tmp / "dst")],
                                              ["hf.bin"], [c.tmp / "dst"])),
    Case("convert-corrupted-safetensors", lambda c: (
        ["convert-pytorch", str((lambda d: (d / "model.safetensors").write_bytes(b"\x08garbage") and d)(c.copy(c.hf, "src"))),
         str(c.tmp / "dst")], ["model.safetensors"], [c.tmp / "dst"])),
    Case("convert-pickle-bearing-bin", lambda c: (
        ["convert-pytorch", str(_with_pickle_bin(c.copy(c.hf, "src"))), str(c.tmp / "dst")],
        ["pytorch_model.bin"], [c.tmp / "dst", c.tmp / "pwned"])),
    Case("convert-config-not-json", lambda c: (
        ["convert-pytorch", str((lambda d: (d / "config.json").write_text("{'single': 'quotes'}") and d)(c.copy(c.hf, "src"))),
         str(c.tmp / "dst")], ["config.json"], [c.tmp / "dst"])),
    Case("convert-destination-exists", lambda c: (
        ["convert-pytorch", str(c.hf), str(c.file("dst/keep.txt", "mine").parent)], ["dst", "--overwrite"],
        [c.tmp / "dst" / "config.json"])),
    Case("convert-destination-under-file", lambda c: (["convert-pytorch", str(c.hf), str(c.file("plain") / "dst")],
                                                      ["plain"], [])),
    # --- export-pytorch ---
    Case("export-source-missing", lambda c: (["export-pytorch", str(c.tmp / "no_model"), str(c.tmp / "hf")],
                                             ["no_model"], [c.tmp / "hf"])),
    Case("export-bad-shard-size", lambda c: (["export-pytorch", str(c.run), str(c.tmp / "hf"), "--max-shard-size", "12XB"],
                                             ["12XB"], [c.tmp / "hf"])),
    Case("export-missing-step", lambda c: (["export-pytorch", str(c.run), str(c.tmp / "hf"), "--step", "99"],
                                           ["99"], [c.tmp / "hf"])),
    Case("export-destination-exists", lambda c: (["export-pytorch", str(c.run), str(c.file("hf/mine.txt", "x").parent)],
                                                 ["hf"], [c.tmp / "hf" / "config.json"])),
    # --- plan ---
    Case("plan-tensor-does-not-divide-heads", lambda c: (["plan", "--model", "tiny", "--mesh", "tensor=3", "--batch", "3",
                                                          "--inputs", "16", "--targets", "16"], ["tensor", "3", "heads"], [])),
    Case("plan-batch-zero", lambda c: (["plan", "--model", "tiny", "--mesh", "data=1", "--batch", "0", "--inputs", "16",
                                        "--targets", "16"], ["--batch", "'0'"], [])),
    Case("plan-unknown-model", lambda c: (["plan", "--model", "huge", "--mesh", "data=1", "--batch", "1", "--inputs", "8",
                                           "--targets", "8"], ["huge"], [])),
    Case("plan-unknown-axis", lambda c: (["plan", "--model", "tiny", "--mesh", "rows=2", "--batch", "2", "--inputs", "8",
                                          "--targets", "8"], ["rows"], [])),
    Case("plan-wildcard-without-devices", lambda c: (["plan", "--model", "tiny", "--mesh", "data=-1", "--batch", "2",
                                                      "--inputs", "8", "--targets", "8"], ["-1", "--devices"], [])),
    Case("plan-inputs-too-long", lambda c: (["plan", "--model", "tiny", "--mesh", "data=1", "--batch", "1", "--inputs",
                                             "4096", "--targets", "8"], ["4096"], [])),
    Case("plan-bad-remat", lambda c: (["plan", "--model", "tiny", "--mesh", "data=1", "--batch", "1", "--inputs", "8",
                                       "--targets", "8", "--remat", "sometimes"], ["sometimes"], [])),
    Case("plan-microbatches-zero", lambda c: (["plan", "--model", "tiny", "--mesh", "data=1", "--batch", "1", "--inputs",
                                               "8", "--targets", "8", "--microbatches", "0"], ["--microbatches", "'0'"], [])),
    # --- describe ---
    Case("describe-unknown-preset", lambda c: (["describe", "--model", "gigantic"], ["gigantic"], [])),
    Case("describe-file", lambda c: (["describe", "--model", str(c.file("model.bin", "x"))], ["model.bin"], [])),
    Case("describe-dir-without-config", lambda c: (["describe", "--model", str(c.file("empty/x.txt").parent)],
                                                   ["empty", "config.json"], [])),
    Case("describe-config-not-json", lambda c: (["describe", "--model", str(c.file("m/config.json", "{\n  oops").parent)],
                                                ["config.json", "line 2"], [])),
    Case("describe-config-not-utf8", lambda c: (["describe", "--model", str(c.file("m/config.json", b"\xff\xfe{}").parent)],
                                                ["config.json"], [])),
    Case("describe-config-not-object", lambda c: (["describe", "--model", str(c.file("m/config.json", "[1, 2]").parent)],
                                                  ["config.json"], [])),
    Case("describe-config-unknown-field", lambda c: (["describe", "--model",
                                                      str(c.file("m/config.json", c.config_text(d_modle=5)).parent)],
                                                     ["d_modle"], [])),
    Case("describe-config-negative-size", lambda c: (["describe", "--model",
                                                      str(c.file("m/config.json", c.config_text(d_model=-8)).parent)],
                                                     ["d_model", "-8"], [])),
    # --- train-tokenizer ---
    Case("tokenizer-no-files-match", lambda c: (["train-tokenizer", "--files", str(c.tmp / "*.nothing"), "--output",
                                                 str(c.tmp / "spm" / "v")], ["*.nothing"], [c.tmp / "spm"])),
    Case("tokenizer-file-not-utf8", lambda c: (["train-tokenizer", "--files", str(_latin1(c)), "--output",
                                                str(c.tmp / "spm" / "v")], ["latin1.txt", "line 2"], [c.tmp / "spm"])),
    Case("tokenizer-file-is-directory", lambda c: (["train-tokenizer", "--files", str(c.file("texts/a.txt").parent),
                                                    "--output", str(c.tmp / "spm" / "v")], ["texts"], [c.tmp / "spm"])),
    Case("tokenizer-jsonl-not-json", lambda c: (["train-tokenizer", "--files", str(c.file("t.jsonl", '{"text": "a"}\n{oops\n')),
                                                 "--output", str(c.tmp / "spm" / "v")], ["t.jsonl"], [c.tmp / "spm"])),
    Case("tokenizer-gz-not-gzip", lambda c: (["train-tokenizer", "--files", str(c.file("t.txt.gz", "plain text")),
                                              "--output", str(c.tmp / "spm" / "v")], ["t.txt.gz"], [c.tmp / "spm"])),
    Case("tokenizer-too-little-text", lambda c: (["train-tokenizer", "--files", str(c.file("tiny.txt", "a b c\n")),
                                                  "--output", str(c.tmp / "spm" / "v"), "--vocab-size", "5000"],
                                                 ["--vocab-size"], [c.tmp / "spm"])),
    Case("tokenizer-output-is-directory", lambda c: (["train-tokenizer", "--corpus", "bundled", "--output", str(c.tmp)],
                                                     [str(c.tmp)], [])),
    Case("tokenizer-output-under-file", lambda c: (["train-tokenizer", "--corpus", "bundled", "--output",
                                                    str(c.file("plain") / "v")], ["plain"], [])),
    Case("tokenizer-alpha-out-of-range", lambda c: (["train-tokenizer", "--corpus", "bundled", "--output", "v",
                                                     "--alpha", "2"], ["--alpha", "'2'"], [])),
    # --- show-data ---
    Case("show-data-num-zero", lambda c: (["show-data", "--num", "0"], ["--num", "'0'"], [])),
    Case("show-data-unknown-mixture", lambda c: (["show-data", "--mixture", "no_such_mix"], ["no_such_mix"], [])),
    Case("show-data-gin-file-missing", lambda c: (["show-data", "--gin-file", str(c.tmp / "gone.gin")], ["gone.gin"], [])),
    Case("show-data-bad-gin-binding", lambda c: (["show-data", "--gin", "alexatm_mixture.alpha=="], ["alexatm_mixture.alpha"],
                                                 [])),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_refuses_bad_input(case, ctx, capsys):
    argv, names, absent = case.build(ctx)
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    except BaseException as error:  # noqa: BLE001
        pytest.fail(f"{type(error).__name__} escaped the CLI (a traceback): {error}")
    captured = capsys.readouterr()
    assert code not in (0, None), f"exit {code}; stdout: {captured.out[-2000:]}"
    assert "Traceback" not in captured.err
    for name in names:
        assert str(name) in captured.err, f"{name!r} not named in:\n{captured.err}"
    for path in absent:
        assert not Path(path).exists(), f"left behind: {path} ({_listing(Path(path))})"


class _MissingFeatureBatches:
    """A user batch source that forgets a feature: fails at the first batch, after the run directory is set up."""

    def __init__(self, inner):
        self.inner = inner

    def __iter__(self):
        return self

    def __next__(self):
        batch = dict(next(self.inner))
        batch.pop("decoder_loss_weights")
        return batch

    def state(self):
        return self.inner.state()

    def restore(self, state):
        self.inner.restore(state)


@gin.configurable
def bad_batches(*args, **kwargs):
    return _MissingFeatureBatches(copy_batches(*args, **kwargs))


# ---- The Python API table: (id, call(ctx) -> None, strings the ValueError must name). ----

def _load(path, **kwargs):
    import alexatm_jax
    return alexatm_jax.load(path, **kwargs)


OK_IDS = [[5, 6, 7, 1]]

API_CASES = [
    ("load-missing-dir", lambda c: _load(c.tmp / "no_model"), ["no_model"]),
    ("load-file", lambda c: _load(c.file("weights.bin", "x")), ["weights.bin"]),
    ("load-dir-without-config", lambda c: _load(c.file("empty/readme.txt", "x").parent), ["empty", "config.json"]),
    ("load-config-not-json", lambda c: _load(c.model_dir(config="{")), ["config.json"]),
    ("load-config-wrong-type", lambda c: _load(c.model_dir(config=c.config_text(d_model="128"))), ["d_model", "'128'"]),
    ("load-tokenizer-not-spm", lambda c: _load((lambda d: (d / "tokenizer.model").write_bytes(b"junk") and d)(c.model_dir())),
     ["tokenizer.model"]),
    ("load-missing-step", lambda c: _load(c.run, step=7), ["7"]),
    ("load-mesh-syntax", lambda c: _load(c.run, mesh="data:1"), ["data:1"]),
    ("load-mesh-too-many-devices", lambda c: _load(c.run, mesh="data=4"), ["data=4"]),
    ("load-mesh-not-a-string", lambda c: _load(c.run, mesh=4), ["4"]),
    ("generate-id-too-large", lambda c: c.lm.generate([[5, VOCAB, 1]]), [str(VOCAB), "input_ids"]),
    ("generate-negative-id", lambda c: c.lm.generate([[5, -3, 1]]), ["-3", "input_ids"]),
    ("generate-negative-id-array", lambda c: c.lm.generate(np.array([[5, -1]])), ["-1"]),
    ("generate-float-ids", lambda c: c.lm.generate([[5.5, 6.0]]), ["5.5"]),
    ("generate-float-array", lambda c: c.lm.generate(np.array([[5.0, 6.0]])), ["float64"]),
    ("generate-text-not-ids", lambda c: c.lm.generate(["Hallo Welt"]), ["Hallo Welt", "tokenize"]),
    ("generate-empty-row", lambda c: c.lm.generate([[5, 6], []]), ["empty"]),
    ("generate-too-long", lambda c: c.lm.generate([[5] * 600]), ["600", "512"]),
    ("generate-max-new-tokens-zero", lambda c: c.lm.generate(OK_IDS, max_new_tokens=0), ["max_new_tokens", "0"]),
    ("generate-num-beams-zero", lambda c: c.lm.generate(OK_IDS, num_beams=0), ["num_beams", "0"]),
    ("generate-sample-without-rng", lambda c: c.lm.generate(OK_IDS, do_sample=True), ["rng"]),
    ("generate-top-p-zero", lambda c: c.lm.generate(OK_IDS, do_sample=True, top_p=0.0, rng=np.zeros(2, np.uint32)),
     ["top_p", "0"]),
    ("generate-temperature-zero", lambda c: c.lm.generate(OK_IDS, do_sample=True, temperature=0.0,
                                                          rng=np.zeros(2, np.uint32)), ["temperature", "0"]),
    ("generate-stop-id-out-of-vocab", lambda c: c.lm.generate(OK_IDS, stop_sequences=[[VOCAB + 5]]), [str(VOCAB + 5)]),
    ("generate-stop-empty", lambda c: c.lm.generate(OK_IDS, stop_sequences=[[]]), ["stop"]),
    ("generate-mask-shape", lambda c: c.lm.generate(OK_IDS, attention_mask=[[1, 1]]), ["(1, 2)", "(1, 4)"]),
    ("logits-decoder-id-too-large", lambda c: c.lm.logits(OK_IDS, [[0, VOCAB + 1]]), [str(VOCAB + 1), "decoder_input_ids"]),
    ("logits-negative-input-id", lambda c: c.lm.logits([[-7, 1]], [[0]]), ["-7", "input_ids"]),
    ("logits-batch-mismatch", lambda c: c.lm.logits(OK_IDS, [[0], [0]]), ["batch"]),
    ("logits-3d", lambda c: c.lm.logits(np.zeros((1, 2, 3), np.int32), [[0]]), ["(1, 2, 3)"]),
    ("score-target-id-too-large", lambda c: c.lm.score(OK_IDS, [[5, 10 ** 6]]), [str(10 ** 6), "target_ids"]),
    ("score-target-id-overflows-int32", lambda c: c.lm.score(OK_IDS, [[5, 2 ** 40]]), [str(2 ** 40)]),
    ("score-negative-target", lambda c: c.lm.score(OK_IDS, [[-2]]), ["-2", "target_ids"]),
    ("score-target-mask-shape", lambda c: c.lm.score(OK_IDS, [[5, 6]], target_mask=[[1, 1, 1]]), ["target_mask"]),
    ("encode-negative-id", lambda c: c.lm.encode([[3, -1, 1]]), ["-1", "input_ids"]),
    ("encode-id-too-large", lambda c: c.lm.encode(np.array([[3, 99999]])), ["99999"]),
    ("encode-empty", lambda c: c.lm.encode([]), ["empty"]),
    ("tokenize-not-text", lambda c: c.lm.tokenize([[5, 6]]), ["[5, 6]"]),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_bad_input(case, ctx):
    _, call, names = case
    with pytest.raises((ValueError, OSError)) as caught:
        call(ctx)
    message = str(caught.value)
    for name in names:
        assert str(name) in message, f"{name!r} not named in: {message}"
    assert "\n  In call to" not in message


def test_api_token_ids_beyond_int32_are_not_wrapped_into_the_vocabulary(ctx):
    """2**32 + 5 would become id 5 if cast to int32 before the range check."""
    with pytest.raises(ValueError, match=str(2 ** 32 + 5)):
        ctx.lm.encode(np.array([[3, 2 ** 32 + 5]], np.int64))


# ---- Bugs are not user errors: they keep their traceback. ----

def _patch_describe(monkeypatch, fn):
    from alexatm_jax.model import summary
    monkeypatch.setattr(summary, "parameter_counts", fn)


def test_internal_key_error_propagates(ctx, monkeypatch):
    def broken(config):
        return {}["encoder"]
    _patch_describe(monkeypatch, broken)
    with pytest.raises(KeyError):
        cli.main(["describe", "--model", "tiny"])


def test_internal_runtime_error_propagates_from_generate(ctx, monkeypatch):
    from alexatm_jax import inference

    def broken(self, *args, **kwargs):
        raise RuntimeError("internal: decoding state lost")
    monkeypatch.setattr(inference.InferenceRunner, "generate", broken)
    with pytest.raises(RuntimeError, match="decoding state lost"):
        cli.main(gen(ctx))


def test_a_library_value_error_is_a_bug_not_a_user_error(ctx, monkeypatch):
    """A ValueError that no check of ours raised (here numpy's, from a reshape) is not worded away."""
    _patch_describe(monkeypatch, lambda config: {"all": int(np.zeros(3).reshape(2, 2).sum())})
    with pytest.raises(ValueError, match="reshape"):
        cli.main(["describe", "--model", "tiny"])


def test_an_unexpected_os_error_is_a_bug(ctx, monkeypatch):
    import errno

    def broken(config):
        raise OSError(errno.EIO, "Input/output error", "/dev/sda")
    _patch_describe(monkeypatch, broken)
    with pytest.raises(OSError, match="Input/output"):
        cli.main(["describe", "--model", "tiny"])


def test_debug_env_shows_the_traceback_of_user_errors(ctx, monkeypatch):
    monkeypatch.setenv("ALEXATM_DEBUG", "1")
    with pytest.raises(ValueError, match="gigantic"):
        cli.main(["describe", "--model", "gigantic"])


def test_user_error_class_is_a_value_error():
    from alexatm_jax.errors import is_user_error
    assert cli.UserError is UserInputError and issubclass(UserInputError, ValueError)
    assert is_user_error(UserInputError("x")) and not is_user_error(KeyError("x"))
    assert not is_user_error(ValueError("made outside any raise of the package"))


def test_real_process_one_line_no_traceback(tmp_path):
    """The console script in a real process: user error -> exit 2 and one line; bug -> traceback."""
    env = {k: v for k, v in os.environ.items() if k != "ALEXATM_DEBUG"}
    done = subprocess.run([sys.executable, "-m", "alexatm_jax.cli", "describe", "--model", "gigantic"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "alexatm-jax describe: error: " in done.stderr and "gigantic" in done.stderr
    assert "ALEXATM_DEBUG=1" in done.stderr
    env["ALEXATM_DEBUG"] = "1"
    done = subprocess.run([sys.executable, "-m", "alexatm_jax.cli", "describe", "--model", "gigantic"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode != 0 and "Traceback" in done.stderr


# ---- The run directory: only what the failed run created is removed. ----

def test_failed_run_keeps_pre_existing_files_and_removes_its_own(ctx, capsys):
    run = ctx.tmp / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("the user's own file")
    code = cli.main(train(ctx, f"--gin.train.init_from={ctx.tmp / 'no_init'}", model_dir=str(run)))
    assert code == 2 and "no_init" in capsys.readouterr().err
    assert _listing(run) == ["notes.txt"]


def test_failed_resume_keeps_a_run_with_checkpoints(ctx, capsys):
    run = ctx.copy(ctx.run, "resumed")
    before = _listing(run)
    code = cli.main(train(ctx, "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=2",
                          "--gin.DataConfig.batch_iterator_fn=@bad_batches", model_dir=str(run)))
    assert code == 2 and "decoder_loss_weights" in capsys.readouterr().err
    assert set(before) <= set(_listing(run))


def test_failed_run_removes_the_parent_folders_it_created(ctx, capsys):
    code = cli.main(train(ctx, f"--gin.train.init_from={ctx.tmp / 'no_init'}", model_dir=str(ctx.tmp / "a" / "b" / "run")))
    assert code == 2 and "no_init" in capsys.readouterr().err
    assert not (ctx.tmp / "a").exists()


# ---- Object-store paths whose client is an optional package (s3fs, adlfs). ----

@pytest.fixture()
def without_s3fs(monkeypatch):
    """s3fs as if it were not installed, whether or not it is: ``import s3fs`` fails and fsspec has not
    cached the class."""
    import importlib
    registry = importlib.import_module("fsspec.registry")  # `fsspec.registry` is a mapping that hides it
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(registry._registry, "s3", raising=False)


@pytest.mark.parametrize("command", ["train", "generate"])
def test_s3_path_without_s3fs_is_one_line_naming_the_path_and_the_package(ctx, without_s3fs, command, capsys):
    argv = (train(ctx, model_dir="s3://bucket/run") if command == "train"
            else gen(ctx, checkpoint="s3://bucket/model"))
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "s3://bucket/" in err and "pip install s3fs" in err, err


def test_a_missing_import_of_our_own_is_a_bug_not_a_user_error(ctx, monkeypatch):
    """Only fsspec's "client not installed" is the user's to fix; any other ImportError keeps its traceback."""
    def broken(config):
        import alexatm_jax_no_such_module  # noqa: F401
    _patch_describe(monkeypatch, broken)
    with pytest.raises(ImportError, match="alexatm_jax_no_such_module"):
        cli.main(["describe", "--model", "tiny"])
