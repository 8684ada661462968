"""Sequence-level distillation data (``alexatm_jax/data/teacher_targets.py``, ``alexatm-jax distill-targets``):
the targets written are the teacher's own ``lm.generate`` (tested elsewhere against the PyTorch reference), an
interrupted run resumes to the same dataset, another request is refused, the dataset is a seqio task whose
examples are the stored ids, and a student trains on it through ``runs/train_on_teacher_targets.gin``."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio

import alexatm_jax
from alexatm_jax import api, cli
from alexatm_jax.checkpoints.model_dir import save_model_dir
from alexatm_jax.data import pipeline, teacher_targets
from alexatm_jax.data.bundled import bundled_spm_path
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.models import EncoderDecoderModel

# The repo's convention for models on the bundled SentencePiece model: pad 0 = decoder start, EOS 1.
CONFIG = ModelConfig(vocab_size=8192, d_model=32, encoder_layers=1, decoder_layers=1, num_heads=2,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512, dropout_rate=0.0,
                     pad_token_id=0, eos_token_id=1, bos_token_id=3, decoder_start_token_id=0, init_std=0.1,
                     scan_layers=False)  # unrolled: the random teacher these tests were tuned on
EOS = CONFIG.eos_token_id
MAX_NEW = 6
TEXTS = ["Summary: a text editor\nDescription: edits files", "Summary: a game\nDescription: play chess",
         "[CLM] the mail client reads", "a short one", "Summary: x\nDescription: y z",
         "another input to decode", "the seventh input"]
IDS = ["ed", "game", 3, "short", "x", "another", "seventh"]  # an integer id becomes its string
# Model dimensions for the student: the tiny model file made smaller still, so that it compiles in seconds.
SMALL_STUDENT = ["--gin.ModelConfig.d_model=32", "--gin.ModelConfig.encoder_layers=1",
                 "--gin.ModelConfig.decoder_layers=1", "--gin.ModelConfig.num_heads=2",
                 "--gin.ModelConfig.encoder_ffn_dim=64", "--gin.ModelConfig.decoder_ffn_dim=64"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny random model saved as a model directory with the bundled tokenizer. Its EOS bias is set so that
    greedy decoding stops at once for some inputs and runs to the token limit for others."""
    params = nn.unbox(EncoderDecoderModel(CONFIG).init_params(jax.random.PRNGKey(0)))
    params["decoder"]["final_logits_bias"] = params["decoder"]["final_logits_bias"].at[EOS].set(0.85)
    directory = tmp_path_factory.mktemp("teacher") / "model"
    save_model_dir(directory, CONFIG, params, tokenizer_path=bundled_spm_path())
    return str(directory)


@pytest.fixture(scope="module")
def inputs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "inputs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "inputs": t}) + "\n" for i, t in zip(IDS, TEXTS)), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, teacher, inputs_file):
    """A finished dataset of the 7 inputs, 3 per part."""
    output = str(tmp_path_factory.mktemp("kd") / "kd")
    assert _distill(teacher, output, inputs_file) == 0
    return output


def _distill(teacher, output, inputs_file, *extra):
    return cli.main(["distill-targets", "--teacher", teacher, "--output", output, "--inputs", inputs_file,
                     "--max-new-tokens", str(MAX_NEW), "--batch-size", "2", "--shard-size", "3", *extra])


def _files(directory) -> dict:
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def test_targets_are_the_teachers_generate(dataset, teacher):
    records = teacher_targets.read_dataset(dataset)
    lm = alexatm_jax.load(teacher)
    rows = lm.tokenize(TEXTS)
    generated = np.asarray(lm.generate(rows, max_new_tokens=MAX_NEW))  # all 7 in one batch: the plain API
    assert [r["id"] for r in records] == [str(i) for i in IDS]
    for record, row, out in zip(records, rows, generated.tolist()):
        assert row[-1] == EOS and record["inputs_ids"] == row[:-1]  # as fed, without the EOS the task appends
        target = out[:out.index(EOS)] if EOS in out else out
        assert record["targets_ids"] == target and EOS not in target and CONFIG.pad_token_id not in target
        assert record["targets"] == lm.detokenize([target])[0] and record["inputs"] == lm.detokenize([row])[0]
    assert records[2]["inputs_ids"][0] == lm.tokenizer.piece_to_id("[CLM]")  # tokenized as lm.tokenize does
    # Both ends of decoding occur: EOS first (an empty target), and no EOS within the limit (a cut target).
    assert {len(r["targets_ids"]) for r in records} == {0, MAX_NEW}
    assert teacher_targets._target([5, 7, EOS, 0, 0], EOS) == [5, 7]
    assert sorted(os.listdir(dataset)) == ["COMPLETE", "part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl",
                                           "request.json", "tokenizer.model"]
    request = json.loads(open(os.path.join(dataset, "request.json")).read())
    assert request["teacher"] == teacher and request["teacher_step"] is None
    assert request["decoding"]["max_new_tokens"] == MAX_NEW and request["decoding"]["num_beams"] == 1
    assert request["inputs"]["count"] == 7 and "inputs.jsonl" in request["inputs"]["source"]
    assert json.loads(open(os.path.join(dataset, "COMPLETE")).read())["truncated"] == sum(
        len(r["targets_ids"]) == MAX_NEW for r in records)


def test_beam_search_targets_are_generate_with_beams(tmp_path, teacher, inputs_file):
    output = str(tmp_path / "kd")
    assert _distill(teacher, output, inputs_file, "--num-beams", "2") == 0
    lm = alexatm_jax.load(teacher)
    generated = np.asarray(lm.generate(lm.tokenize(TEXTS), max_new_tokens=MAX_NEW, num_beams=2)).tolist()
    assert [r["targets_ids"] for r in teacher_targets.read_dataset(output)] == [
        out[:out.index(EOS)] if EOS in out else out for out in generated]


def test_an_interrupted_run_resumes_to_the_same_dataset(tmp_path, teacher, inputs_file, dataset, monkeypatch, capsys):
    output = str(tmp_path / "kd")
    assert _distill(teacher, output, inputs_file) == 0
    assert _files(output) == _files(dataset)  # the same request gives the same bytes
    capsys.readouterr()

    # A kill -9 while part 1 was being written: part 1 is missing, its temporary file is left, COMPLETE was not
    # written; and the last part is damaged (cut in the middle of a record).
    first = os.stat(os.path.join(output, "part-00000.jsonl")).st_mtime_ns
    os.remove(os.path.join(output, "part-00001.jsonl"))
    os.remove(os.path.join(output, "COMPLETE"))
    stray = os.path.join(output, ".part-00001.x1y2.tmp.jsonl")
    open(stray, "w").write('{"id": "short", "inputs": "a sh')
    last = os.path.join(output, "part-00002.jsonl")
    open(last, "w").write(open(last).read()[:20])
    with pytest.raises(ValueError, match=r"unfinished \(no COMPLETE\): run `alexatm-jax distill-targets --teacher "
                                         rf".* --output {output} --inputs .* --max-new-tokens 6 .*` to finish them"):
        teacher_targets.read_dataset(output)
    with pytest.raises(ValueError, match="unfinished"):
        teacher_targets.register_task("test_unfinished_targets", output)

    decoded = []
    generate = api.LanguageModel.generate
    monkeypatch.setattr(api.LanguageModel, "generate",
                        lambda self, ids, *a, **k: decoded.append(len(ids)) or generate(self, ids, *a, **k))
    assert _distill(teacher, output, inputs_file) == 0
    printed = capsys.readouterr().out
    assert "part-00000.jsonl: inputs 0-2 of 7 done by an earlier run, kept" in printed
    assert "part-00001.jsonl: inputs 3-5 of 7 decoded" in printed and "part-00002.jsonl: inputs 6-6 of 7 decoded" in printed
    assert sum(decoded) == 4  # only the 3 + 1 inputs of the lost parts
    assert os.stat(os.path.join(output, "part-00000.jsonl")).st_mtime_ns == first
    assert _files(output) == _files(dataset) and not os.path.exists(stray)

    # Another request in the same directory is refused, naming what differs; so is a foreign directory.
    assert _distill(teacher, output, inputs_file, "--max-new-tokens", "5") == 2
    assert "holds teacher targets for another request (decoding" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"inputs": "something else"}) + "\n")
    assert _distill(teacher, output, str(other)) == 2
    assert "another request (inputs" in capsys.readouterr().err
    assert _files(output) == _files(dataset)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert _distill(teacher, str(foreign), inputs_file) == 2
    assert f"--output {foreign} is not empty and holds no request.json" in capsys.readouterr().err


def test_the_dataset_is_a_seqio_task(dataset):
    records = {r["id"]: r for r in teacher_targets.read_dataset(dataset)}
    task = teacher_targets.register_task("test_teacher_targets", dataset)
    lengths = {"inputs": 64, "targets": 4}  # targets of 6 tokens are cut to 3 + EOS, as every task does
    seen = {}
    for split in ("train", "validation"):
        examples = list(task.get_dataset(lengths, split=split, shuffle=False).as_numpy_iterator())
        seen[split] = [e["id"].decode() for e in examples]
        for example in examples:
            record = records[example["id"].decode()]
            assert example["inputs"].tolist() == record["inputs_ids"] + [EOS]
            assert example["targets"].tolist() == record["targets_ids"][:3] + [EOS]
    assert len(seen["validation"]) >= 1 and not set(seen["train"]) & set(seen["validation"])
    assert sorted(seen["train"] + seen["validation"]) == sorted(records)
    assert seen["train"] == [k for k in records if k in seen["train"]]  # unshuffled: in record order
    # The validation split is chosen by id, whatever the order or the company of the records.
    reordered = teacher_targets.split_records(list(records.values())[::-1], "validation")
    assert sorted(r["id"] for r in reordered) == sorted(seen["validation"])

    # Two processes read disjoint shards that make the split together; shuffled epochs are permutations of it.
    shards = [[e["id"].decode() for e in task.get_dataset(lengths, split="train", shuffle=False,
                                                          shard_info=seqio.ShardInfo(i, 2)).as_numpy_iterator()]
              for i in range(2)]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == sorted(seen["train"])
    epochs = [e["id"].decode() for e in task.get_dataset(lengths, split="train", shuffle=True, seed=3,
                                                         num_epochs=2).as_numpy_iterator()]
    n = len(seen["train"])
    assert sorted(epochs[:n]) == sorted(epochs[n:]) == sorted(seen["train"])
    # seqio's own path over the source (for users without positions) gives the same examples.
    plain = {e["id"].decode(): e for e in seqio.Task.get_dataset(task, lengths, split="train", shuffle=False)
             .as_numpy_iterator()}
    for example in task.get_dataset(lengths, split="train", shuffle=False).as_numpy_iterator():
        other = plain[example["id"].decode()]
        assert example["inputs"].tolist() == other["inputs"].tolist()
        assert example["targets"].tolist() == other["targets"].tolist()

    # The training pipeline resumes the task's stream exactly from its saved state.
    def batches(restore=None, count=3):
        it = pipeline.make_batch_iterator("test_teacher_targets", {"inputs": 16, "targets": 8}, 2, seed=1, pack=False)
        if restore is not None:
            it.restore(restore)
        return it, [next(it) for _ in range(count)]

    it, straight = batches(count=6)
    first, head = batches(count=2)
    _, tail = batches(first.state(), count=4)
    for a, b in zip(straight, head + tail):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_student_trains_on_it_with_the_run_file(tmp_path, dataset, capsys):
    from alexatm_jax.training.metrics import read_metrics

    run = tmp_path / "student"

    def train(steps):
        return cli.main(["train", "--gin_file=gin_configs/models/tiny.gin",
                         "--gin_file=gin_configs/runs/train_on_teacher_targets.gin", f"--gin.MODEL_DIR={run}",
                         f"--gin.TEACHER_TARGETS={dataset}", f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=2",
                         "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.LOG_EVERY_STEPS=1",
                         "--gin.CheckpointConfig.every_steps=2", "--gin.EvalConfig.every_steps=3",
                         "--gin.EvalConfig.steps=1", "--gin.LoggingConfig.tensorboard=False", *SMALL_STUDENT])

    assert train(2) == 0, capsys.readouterr().err
    assert train(3) == 0, capsys.readouterr().err  # resumes from step 2 with the data stream's state
    assert f"Resumed from step 2 ({run}" in capsys.readouterr().err
    metrics = read_metrics(str(run))
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in metrics if "eval_loss" in r] == [2, 3]  # the validation split, at each run's end
    # The run read the task by position: its data state is counters, not a replay count.
    state = json.loads((run / "checkpoints" / "3" / "data_state" / "process_0-of-1.json").read_text())
    assert state["config"]["mixture_or_task_name"] == "teacher_targets"
    assert list(state["positions"]["tasks"]) == ["teacher_targets"] and state["positions"]["examples"] >= 6


def test_bundled_task_inputs_use_the_teachers_own_vocabulary(tmp_path, teacher):
    """A teacher with its own tokenizer (a demo model) decodes a bundled task's inputs tokenized with that
    tokenizer, as `train` feeds the bundled tasks."""
    import shutil

    import seqio

    from alexatm_jax.data import bundled, debian_labels, tasks
    from alexatm_jax.data.tokenizer_training import train_sentencepiece

    texts = [debian_labels.input_text(r["summary"], r["description"]) for r in debian_labels.bundled_records("train", ["en"])][:400]
    own = train_sentencepiece({"en": texts}, str(tmp_path / "own"), vocab_size=500)
    other = tmp_path / "teacher"
    shutil.copytree(teacher, other)
    shutil.copyfile(own, other / "tokenizer.model")
    output = str(tmp_path / "kd")
    try:
        assert cli.main(["distill-targets", "--teacher", str(other), "--output", output, "--task", "debian_section",
                         "--num-examples", "3", "--lengths", "inputs=32,targets=8", "--max-new-tokens", "2"]) == 0
        expected = [e["inputs"].tolist() for e in seqio.get_mixture_or_task("debian_section").get_dataset(
            {"inputs": 32, "targets": 8}, split="train", shuffle=False, seed=0).take(3).as_numpy_iterator()]
        assert seqio.get_mixture_or_task("debian_section").output_features["inputs"].vocabulary \
            .sentencepiece_model_file == str(other / "tokenizer.model")
    finally:
        tasks.use_vocabulary_for_bundled(bundled.bundled_spm_path())
    stored = [r["inputs_ids"] for r in teacher_targets.read_dataset(output)]
    assert stored == [row[:-1] for row in expected]  # stored without the EOS the task appended


def _bad_jsonl(tmp_path, *records) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("case", ["teacher", "file", "no_inputs", "not_json", "duplicate_id", "task", "split",
                                  "num_examples", "lengths", "split_with_inputs", "output_is_file"])
def test_bad_input_is_one_clear_line(case, tmp_path, teacher, inputs_file, capsys):
    out = str(tmp_path / "out")
    source = ["--inputs", inputs_file]
    if case == "teacher":
        teacher, message = "/nonexistent/teacher", "--teacher /nonexistent/teacher does not exist"
    elif case == "file":
        source, message = ["--inputs", "/nonexistent/in.jsonl"], "inputs file /nonexistent/in.jsonl does not exist"
    elif case == "no_inputs":
        bad = _bad_jsonl(tmp_path, {"inputs": "fine"}, {"text": "no inputs field"})
        source, message = ["--inputs", bad], f"{bad}:2: each record needs a non-empty 'inputs' text"
    elif case == "not_json":
        bad = _bad_jsonl(tmp_path, {"inputs": "fine"}, "{not json")
        source, message = ["--inputs", bad], f"{bad}:2 is not valid JSON"
    elif case == "duplicate_id":
        bad = _bad_jsonl(tmp_path, {"id": "a", "inputs": "one"}, {"id": "a", "inputs": "two"})
        source, message = ["--inputs", bad], f"{bad}:2: id 'a' was already used at {bad}:1"
    elif case == "task":
        source, message = ["--task", "no_such_task"], "no seqio task or mixture named 'no_such_task'"
    elif case == "split":
        source, message = ["--task", "debian_section", "--split", "nope"], "task debian_section has no split 'nope'"
    elif case == "num_examples":
        source, message = ["--task", "debian_section", "--num-examples", "0"], "argument --num-examples"
    elif case == "lengths":
        source, message = ["--task", "debian_section", "--lengths", "inputs=x"], "inputs='x' is not an integer"
    elif case == "split_with_inputs":
        source, message = ["--inputs", inputs_file, "--split", "train"], "--split is for --task only, not for --inputs"
    else:
        open(out, "w").write("a file")
        message = f"--output {out} is a file"
    capsys.readouterr()
    try:
        code = cli.main(["distill-targets", "--teacher", teacher, "--output", out, *source])
    except SystemExit as exit_:  # argparse's own errors (flag values)
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    if case != "output_is_file":
        assert not os.path.exists(out)  # nothing written for a refused request


@pytest.mark.parametrize("case", ["unfinished", "missing", "unbound"])
def test_training_on_no_finished_dataset_is_one_clear_line(case, tmp_path, dataset, capsys):
    import shutil

    bindings = []
    if case == "unfinished":
        target = tmp_path / "kd"
        shutil.copytree(dataset, target)
        (target / "COMPLETE").unlink()
        bindings, message = [f"--gin.TEACHER_TARGETS={target}"], (
            f"the teacher targets in {target} are unfinished (no COMPLETE): run `alexatm-jax distill-targets "
            f"--teacher ")
    elif case == "missing":
        bindings, message = [f"--gin.TEACHER_TARGETS={tmp_path / 'none'}"], (
            f"{tmp_path / 'none'} holds no teacher targets (request.json is missing): make them with `alexatm-jax "
            "distill-targets")
    else:
        message = "teacher_targets_task.directory is not set: bind TEACHER_TARGETS"
    code = cli.main(["train", "--gin_file=gin_configs/models/tiny.gin",
                     "--gin_file=gin_configs/runs/train_on_teacher_targets.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}",
                     *bindings])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "run")


# Last in the file: the emulator fixture points this process's storage clients at it until the module ends.
from gcs_emulator import gcs_bucket  # noqa: E402,F401  (the fixture)


def test_the_dataset_can_live_in_a_bucket(gcs_bucket, teacher, inputs_file, dataset, tmp_path, monkeypatch, capsys):
    from alexatm_jax import storage

    monkeypatch.chdir(tmp_path)  # a gs:// path taken for a local one would make a folder "gs:" here
    url = gcs_bucket.url("kd")
    assert _distill(teacher, url, inputs_file) == 0
    local = _files(dataset)
    assert {name: gcs_bucket.read_object(name) for name in gcs_bucket.list_objects("kd/")} == {
        f"kd/{name}": data for name, data in local.items()}
    # Resumes there too.
    for name in ("part-00001.jsonl", "COMPLETE"):
        (storage.resolve(url) / name).unlink()
    capsys.readouterr()
    assert _distill(teacher, url, inputs_file) == 0
    printed = capsys.readouterr().out
    assert "part-00000.jsonl: inputs 0-2 of 7 done by an earlier run, kept" in printed
    assert "part-00001.jsonl: inputs 3-5 of 7 decoded" in printed
    assert {name: gcs_bucket.read_object(name) for name in gcs_bucket.list_objects("kd/")} == {
        f"kd/{name}": data for name, data in local.items()}
    # And the task reads it from the bucket (its vocabulary fetched to a local file).
    lengths = {"inputs": 64, "targets": 8}
    remote = teacher_targets.register_task("test_teacher_targets_remote", url)
    here = teacher_targets.register_task("test_teacher_targets_local", dataset)
    for split in ("train", "validation"):
        a, b = (list(t.get_dataset(lengths, split=split, shuffle=False).as_numpy_iterator()) for t in (remote, here))
        assert [(e["id"], e["inputs"].tolist(), e["targets"].tolist()) for e in a] == [
            (e["id"], e["inputs"].tolist(), e["targets"].tolist()) for e in b]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(":")]
