"""Sequence-level distillation data (data/teacher_targets.py, `alexatm-jax distill-targets`): the targets are
the teacher's own `generate`, an interrupted run continues to the same dataset, another request is refused,
the dataset trains as a seqio task through `runs/train_on_teacher_targets.gin`, and bad input is one line."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

import alexatm_jax
from alexatm_jax import cli
from alexatm_jax.checkpoints import model_dir as model_dir_lib
from alexatm_jax.data import bundled, teacher_targets
from alexatm_jax.model.config import get_preset
from alexatm_jax.models import EncoderDecoderModel

TEXTS = ["Summary: a text editor\nDescription: edits files", "Summary: a game\nDescription: play chess",
         "Summary: mail client\nDescription: reads mail", "a short one", "Summary: x\nDescription: y z",
         "another input to decode", "the seventh input"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A small random model with the bundled vocabulary, saved as a model directory."""
    directory = str(tmp_path_factory.mktemp("teacher") / "model")
    config = get_preset("tiny").replace(d_model=32, num_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                        encoder_layers=1, decoder_layers=1, pad_token_id=0, eos_token_id=1,
                                        decoder_start_token_id=0, bos_token_id=3, dropout_rate=0.0)
    params = EncoderDecoderModel(config).init_params(jax.random.PRNGKey(0))
    model_dir_lib.save_model_dir(directory, config, params, tokenizer_path=bundled.bundled_spm_path())
    return directory


@pytest.fixture()
def inputs_file(tmp_path):
    path = tmp_path / "inputs.jsonl"
    path.write_text("".join(json.dumps({"id": f"x{i}", "inputs": t}) + "\n" for i, t in enumerate(TEXTS)))
    return str(path)


def _run(teacher, output, inputs_file, *extra):
    return cli.main(["distill-targets", "--teacher", teacher, "--output", output, "--inputs", inputs_file,
                     "--max-new-tokens", "6", "--batch-size", "3", "--shard-size", "3", *extra])


def test_targets_are_the_teachers_generate_and_resume_after_a_lost_part(tmp_path, teacher, inputs_file):
    output = str(tmp_path / "kd")
    assert _run(teacher, output, inputs_file) == 0
    records = teacher_targets.read_dataset(output)
    lm = alexatm_jax.load(teacher)
    expected = np.asarray(lm.generate(lm.tokenize(TEXTS), max_new_tokens=6))
    assert [r["id"] for r in records] == [f"x{i}" for i in range(len(TEXTS))]
    for record, row, tokens in zip(records, expected, lm.tokenize(TEXTS)):
        assert record["inputs_ids"] == tokens[:-1]  # stored without EOS; the task appends it
        generated = row.tolist()
        stop = next((i for i, t in enumerate(generated) if t in (lm.config.eos_token_id, lm.config.pad_token_id)),
                    len(generated))
        assert record["targets_ids"] == generated[:stop]
        assert record["targets"] == lm.detokenize([generated[:stop]])[0]
    assert sorted(os.listdir(output)) == ["COMPLETE", "part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl",
                                          "request.json"]

    # A kill during part 1: it never appeared, COMPLETE neither, a temporary file was left behind.
    before = {name: os.stat(os.path.join(output, name)).st_mtime_ns for name in ("part-00000.jsonl", "part-00002.jsonl")}
    os.remove(os.path.join(output, "part-00001.jsonl"))
    os.remove(os.path.join(output, "COMPLETE"))
    open(os.path.join(output, ".tmp-part-00001"), "w").write('{"id": "half')
    with pytest.raises(ValueError, match="unfinished: run the same `alexatm-jax distill-targets` command again"):
        teacher_targets.read_dataset(output)
    assert _run(teacher, output, inputs_file) == 0
    assert teacher_targets.read_dataset(output) == records
    assert all(os.stat(os.path.join(output, n)).st_mtime_ns == t for n, t in before.items())  # not redone

    # Another request in the same directory is refused, naming what differs.
    assert _run(teacher, output, inputs_file, "--max-new-tokens", "5") == 2


def test_the_dataset_is_a_seqio_task_with_disjoint_splits(tmp_path, teacher, inputs_file):
    output = str(tmp_path / "kd")
    assert _run(teacher, output, inputs_file) == 0
    records = {r["id"]: r for r in teacher_targets.read_dataset(output)}
    task = teacher_targets.register_task("test_teacher_targets", output)
    lengths = {"inputs": 64, "targets": 8}
    seen = {}
    for split in ("train", "validation"):
        examples = list(task.get_dataset(lengths, split=split, shuffle=False).as_numpy_iterator())
        seen[split] = [e["id"].decode() for e in examples]
        for example in examples:
            record = records[example["id"].decode()]
            assert example["inputs"].tolist() == record["inputs_ids"] + [1]
            assert example["targets"].tolist() == record["targets_ids"] + [1]  # at most 6 new tokens: no trim
    assert seen["validation"] and not set(seen["train"]) & set(seen["validation"])
    assert sorted(seen["train"] + seen["validation"]) == sorted(records)
    # Two processes read disjoint shards that together make the split.
    import seqio
    shards = [[e["id"].decode() for e in task.get_dataset(lengths, split="train", shuffle=False,
                                                          shard_info=seqio.ShardInfo(i, 2)).as_numpy_iterator()]
              for i in range(2)]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == sorted(seen["train"])


def test_a_student_trains_on_it_with_the_run_file(tmp_path, teacher, inputs_file, capsys):
    output = str(tmp_path / "kd")
    assert _run(teacher, output, inputs_file) == 0
    code = cli.main(["train", "--gin_file=gin_configs/models/tiny.gin",
                     "--gin_file=gin_configs/runs/train_on_teacher_targets.gin",
                     f"--gin.MODEL_DIR={tmp_path / 'student'}", f"--gin.TEACHER_TARGETS={output}",
                     "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
                     "--gin.LOG_EVERY_STEPS=1", "--gin.EvalConfig.every_steps=0",
                     "--gin.LoggingConfig.tensorboard=False"])
    assert code == 0, capsys.readouterr().err
    from alexatm_jax.training.metrics import read_metrics
    assert [r["step"] for r in read_metrics(str(tmp_path / "student")) if "loss" in r] == [1, 2]


@pytest.mark.parametrize("args,message", [
    (["--teacher", "/nonexistent", "--output", "OUT", "--inputs", "IN"], "--teacher /nonexistent does not exist"),
    (["--teacher", "TEACHER", "--output", "OUT", "--inputs", "/nonexistent.jsonl"], "--inputs /nonexistent.jsonl"),
    (["--teacher", "TEACHER", "--output", "OUT", "--task", "no_such_task"], "no registered seqio task"),
    (["--teacher", "TEACHER", "--output", "OUT", "--inputs", "BAD"], "BAD:2: each record needs a non-empty 'inputs'"),
])
def test_bad_input_is_one_clear_line(tmp_path, teacher, capsys, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"inputs": "fine"}) + "\n" + json.dumps({"text": "no inputs"}) + "\n")
    args = [{"TEACHER": teacher, "OUT": str(tmp_path / "out"), "IN": str(bad), "BAD": str(bad)}.get(a, a) for a in args]
    message = message.replace("BAD", str(bad))
    assert cli.main(["distill-targets", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
