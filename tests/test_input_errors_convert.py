"""Bad input to convert-pytorch, the tokenizer, data files and numeric flags: one clear line, no traceback.

The config-field rule is checked against the reference (alexa-teacher-models 1.0.1 on transformers 4.26.1, run
by subprocess in its own environment): a config the reference saves with BART-era keys its code never reads
converts exactly (logits and greedy tokens); fields it reads and that change or break what it computes are
refused, each named with the reason; and our field tables cover every field its config class writes, with
its defaults.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from alexatm_jax import cli
from alexatm_jax.checkpoints import reference_config as rc
from reference_utils import HERE, make_batch, reference_python

# Keys the reference's code never reads: BART leftovers (any value), and fields its own config class declares
# but no code reads, set away from their defaults.
UNREAD = {"add_bias_logits": True, "add_final_layer_norm": True, "normalize_before": False,
          "normalize_embedding": True, "scale_embedding": True, "static_position_embeddings": True,
          "position_embedding_type": "relative_key", "extra_pos_embeddings": 4,
          "force_bos_token_to_be_generated": True, "encoder_layerdrop": 0.2}
# Generation defaults (the worker's generate() passes num_beams=1 explicitly, so its output stays greedy).
GENERATION = {"num_beams": 4, "length_penalty": 2.0}
MODEL = dict(vocab_size=101, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
             decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=24, max_position_embeddings=40,
             type_vocab_size=2, share_embeddings=False, tie_word_embeddings=False, decoder_start_token_id=2)
# Fields the reference reads, each set to a value that changes or breaks its outputs.
PROBES = [("is_decoder", True), ("add_cross_attention", True), ("pruned_heads", {"0": [0]}),
          ("is_encoder_decoder", False)]
MAX_NEW_TOKENS = 12

# Runs in the reference environment: builds and runs the model through tests/reference_worker.py, then
# records the reference's config defaults and what each probed field does to its outputs.
_REFERENCE_SCRIPT = r'''
import json, os, shutil, sys
sys.path.insert(0, sys.argv[1])
import reference_worker
job_path, out_path = sys.argv[2], sys.argv[3]
reference_worker.main(job_path)
import torch
from transformers import GenerationConfig
from transformers.utils import logging
logging.set_verbosity_error()
from alexa_teacher_models import AlexaTMSeq2SeqConfig, AlexaTMSeq2SeqForConditionalGeneration
job = json.load(open(job_path))
spec = job["models"][0]
checkpoint = spec["checkpoint_dir"]
batch = {k: torch.tensor(v) for k, v in spec["batch"].items()}

def run(directory):
    model = AlexaTMSeq2SeqForConditionalGeneration.from_pretrained(directory).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"]).logits
        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   max_new_tokens=8, num_beams=1, do_sample=False)
    return logits, generated

base_logits, base_generated = run(checkpoint)
probes = {}
for field, value in job["probes"]:
    probe = checkpoint + "_probe"
    shutil.rmtree(probe, ignore_errors=True)
    shutil.copytree(checkpoint, probe)
    config = json.load(open(os.path.join(probe, "config.json")))
    config[field] = value
    json.dump(config, open(os.path.join(probe, "config.json"), "w"))
    try:
        logits, generated = run(probe)
        same = generated.shape == base_generated.shape and bool((generated == base_generated).all())
        probes[field] = {"logits_max_diff": float((logits - base_logits).abs().max()), "generate_same": same}
    except Exception as error:
        probes[field] = {"error": type(error).__name__}
    shutil.rmtree(probe)
defaults = {"alexatm": AlexaTMSeq2SeqConfig().to_dict(), "generation": GenerationConfig().to_dict()}
json.dump({"probes": probes, "defaults": defaults}, open(out_path, "w"), default=repr)
'''


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One reference run: a checkpoint saved with the UNREAD and GENERATION keys, its outputs, the probes."""
    root = tmp_path_factory.mktemp("reference_extras")
    spec = {"name": "extras", "config": {**MODEL, **UNREAD, **GENERATION}, "seed": 7,
            "batch": make_batch(MODEL["vocab_size"], 3), "checkpoint_dir": str(root / "extras_hf"),
            "output_file": str(root / "extras_outputs.npz"), "max_new_tokens": MAX_NEW_TOKENS,
            "max_shard_size": "20KB"}
    job = root / "job.json"
    job.write_text(json.dumps({"models": [spec], "probes": PROBES}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA_", "JAX_"))}
    env.update(TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([reference_python(), "-c", _REFERENCE_SCRIPT, str(HERE), str(job), str(root / "out.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"reference run failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    result = json.loads((root / "out.json").read_text())
    result.update(checkpoint=root / "extras_hf", outputs=dict(np.load(spec["output_file"])),
                  batch={k: np.asarray(v) for k, v in spec["batch"].items()})
    return result


def _copy(reference, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(reference["checkpoint"], source)
    return source


def _edit_config(source, **changes):
    config = json.loads((source / "config.json").read_text())
    config.update(changes)
    (source / "config.json").write_text(json.dumps(config, indent=2))


def _refused(argv, capsys, leftover=None) -> str:
    """Runs the CLI in-process; asserts exit 2, one error line, no traceback, nothing left behind."""
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    errors = [line for line in captured.err.splitlines() if ": error: " in line]
    assert len(errors) == 1, captured.err
    if leftover is not None:
        assert not leftover.exists(), f"a failed command must leave nothing behind: {leftover}"
    return errors[0]


# --- the config rule, against the reference ----------------------------------------------------------------

def test_reference_config_with_unread_keys_converts_exactly(reference, tmp_path, capsys):
    import alexatm_jax

    saved = json.loads((reference["checkpoint"] / "config.json").read_text())
    assert {k: saved[k] for k in UNREAD} == UNREAD  # the reference itself wrote them
    destination = tmp_path / "converted"
    assert cli.main(["convert-pytorch", str(reference["checkpoint"]), str(destination)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    for key, value in {**UNREAD, **GENERATION}.items():
        assert f"{key}={value!r}" in warnings[0]
    for quiet in ("gradient_checkpointing", "hidden_dropout_prob", "intermediate_size", "use_cache"):
        assert quiet not in warnings[0]  # read by the reference (or derived), at their defaults: no noise

    lm = alexatm_jax.load(destination)
    ref, batch = reference["outputs"], reference["batch"]
    mask = batch["attention_mask"]
    logits = lm.logits(batch["input_ids"], batch["decoder_input_ids"], attention_mask=mask)
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)
    generated = lm.generate(batch["input_ids"], attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS)
    width = ref["generated"].shape[1]
    np.testing.assert_array_equal(generated[:, :width], ref["generated"])
    assert (ref["generated"] != lm.config.pad_token_id).sum(1).max() >= 8


@pytest.mark.parametrize("field,value", PROBES)
def test_fields_that_change_the_reference_are_refused(reference, tmp_path, capsys, field, value):
    probe = reference["probes"][field]
    # The reference itself computes something else with this value, or cannot run it at all.
    assert "error" in probe or probe["logits_max_diff"] > 1e-4 or not probe["generate_same"], probe
    source = _copy(reference, tmp_path)
    _edit_config(source, **{field: value})
    line = _refused(["convert-pytorch", str(source), str(tmp_path / "out")], capsys, tmp_path / "out")
    assert f"{field}={value!r}" in line and "config.json" in line


def test_field_tables_cover_the_reference_config_class(reference):
    declared = reference["defaults"]["alexatm"]
    classified = (set(rc.MAPPED) | set(rc.MUST_MATCH) | rc.NEUTRAL | set(rc.GENERATION_DEFAULTS)
                  | set(rc.DECLARED_UNREAD) | set(rc.DERIVED_OVERWRITTEN) | set(rc.DERIVED_PROPERTIES))
    assert sorted(set(declared) - classified) == []
    for table in (rc.MAPPED, rc.DECLARED_UNREAD):
        assert {k: declared[k] for k in table} == table
    assert {k: declared[k] for k in rc.MUST_MATCH} == {k: v[1] for k, v in rc.MUST_MATCH.items()}
    generation = reference["defaults"]["generation"]
    elsewhere = set(rc.MAPPED) | rc.NEUTRAL | {"generation_kwargs", "_from_model_config"}
    assert sorted(set(generation) - set(rc.GENERATION_DEFAULTS) - elsewhere) == []
    assert {k: generation[k] for k in rc.GENERATION_DEFAULTS} == rc.GENERATION_DEFAULTS


@pytest.mark.parametrize("changes,named", [
    ({"d_model": "big"}, "d_model='big' must be a positive integer"),
    ({"encoder_layers": 0}, "encoder_layers=0 must be a positive integer"),
    ({"hidden_act": "silu"}, "hidden_act='silu' is not supported"),
    ({"decoder_attention_heads": 4}, "encoder_attention_heads=2 and decoder_attention_heads=4 differ"),
    ({"eos_token_id": 500}, "eos_token_id=500 is outside the vocabulary (vocab_size=101)"),
    ({"pad_token_id": None}, "pad_token_id=None must be a token id"),
    ({"share_embeddings": "no"}, "share_embeddings='no' must be true or false"),
    ({"layer_norm_eps": -1}, "layer_norm_eps=-1 must be a positive number"),
    ({"hidden_size": 32}, "hidden_size=32 contradicts d_model=16"),
])
def test_bad_mapped_fields_are_named(changes, named):
    with pytest.raises(rc.ConversionError, match="config.json") as error:
        rc.read_reference_config({**MODEL, **changes})
    assert named in str(error.value)


def test_derived_copies_are_ignored_only_when_they_disagree():
    agree = rc.read_reference_config({**MODEL, "num_hidden_layers": 1, "intermediate_size": 32, "hidden_size": 16})
    assert agree.warning() is None
    disagree = rc.read_reference_config({**MODEL, "num_hidden_layers": 3})
    assert disagree.ignored == {"num_hidden_layers": 3} and "num_hidden_layers=3" in disagree.warning()
    with pytest.raises(rc.ConversionError, match="holds a JSON list"):
        rc.read_reference_config([MODEL])


# --- damaged or unsafe files in convert-pytorch ------------------------------------------------------------

class _NotATensor:  # pickled by reference to this module: torch's weights-only loader must refuse it
    pass


def _first_shard(source):
    index = json.loads((source / "pytorch_model.bin.index.json").read_text())
    return source / sorted(set(index["weight_map"].values()))[0]


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(b"this is not a checkpoint\n" * 20)


def _pickled_object(path):
    import torch
    torch.save({"model.shared.weight": _NotATensor()}, path)


def _non_tensor_value(path):
    import torch
    torch.save({"model.shared.weight": torch.zeros(2), "step": 3}, path)


@pytest.mark.parametrize("damage,expected", [
    (_truncate, "cannot be read as a PyTorch checkpoint file"),
    (_garbage, "cannot be read as a PyTorch checkpoint file"),
    (_pickled_object, "contains pickled Python objects, not only tensors; refusing to load it (unsafe). "
                      "Re-save it with torch.save(state_dict) or convert to safetensors"),
    (_non_tensor_value, "holds a int under 'step', not a tensor"),
])
def test_damaged_or_unsafe_bin_shard(reference, tmp_path, capsys, damage, expected):
    source = _copy(reference, tmp_path)
    shard = _first_shard(source)
    damage(shard)
    line = _refused(["convert-pytorch", str(source), str(tmp_path / "out")], capsys, tmp_path / "out")
    assert str(shard) in line and expected in line


@pytest.mark.parametrize("damage", [_truncate, _garbage])
def test_damaged_safetensors(reference, tmp_path, capsys, damage):
    import torch
    from safetensors.numpy import save_file

    source = _copy(reference, tmp_path)
    state = {}
    for shard in sorted(set(json.loads((source / "pytorch_model.bin.index.json").read_text())["weight_map"].values())):
        state.update(torch.load(source / shard, weights_only=True))
        (source / shard).unlink()
    (source / "pytorch_model.bin.index.json").unlink()
    target = source / "model.safetensors"
    save_file({k: v.contiguous().numpy() for k, v in state.items()}, str(target))
    damage(target)
    line = _refused(["convert-pytorch", str(source), str(tmp_path / "out")], capsys, tmp_path / "out")
    assert str(target) in line and "cannot be read as a safetensors file" in line and "truncated or damaged" in line


@pytest.mark.parametrize("name", ["config.json", "pytorch_model.bin.index.json"])
def test_invalid_json_names_file_line_and_column(reference, tmp_path, capsys, name):
    source = _copy(reference, tmp_path)
    lines = (source / name).read_text().splitlines()
    assert lines[1].endswith(("{", ",")), lines[:2]  # save_pretrained writes one field per line
    lines.insert(2, "  @")  # a stray character on line 3, column 3
    (source / name).write_text("\n".join(lines))
    line = _refused(["convert-pytorch", str(source), str(tmp_path / "out")], capsys, tmp_path / "out")
    assert f"{source / name} is not valid JSON" in line and "line 3, column 3" in line


def test_tokenizer_that_is_not_sentencepiece(reference, tmp_path, capsys):
    source = _copy(reference, tmp_path)
    (source / "20b_tokenizer.model").write_text("not a sentencepiece model\n")
    line = _refused(["convert-pytorch", str(source), str(tmp_path / "out")], capsys, tmp_path / "out")
    assert f"{source / '20b_tokenizer.model'} is not a SentencePiece model" in line


# --- tokenizer files everywhere else -----------------------------------------------------------------------

def test_load_sentencepiece_errors(tmp_path):
    from alexatm_jax.data import bundled
    from alexatm_jax.data.vocab import get_vocabulary, load_sentencepiece

    assert load_sentencepiece(bundled.bundled_spm_path()).get_piece_size() > 0
    text = tmp_path / "text.model"
    text.write_text("hello\n")
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    for path, message in ((text, "is not a SentencePiece model"), (empty, "is empty, not a SentencePiece model"),
                          (tmp_path, "is a directory")):
        with pytest.raises(ValueError, match="SentencePiece model|directory") as error:
            load_sentencepiece(str(path))
        assert str(path) in str(error.value) and message in str(error.value)
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        load_sentencepiece(str(tmp_path / "nothing.model"))
    with pytest.raises(ValueError, match="is not a SentencePiece model"):
        get_vocabulary(str(text))


# --- data files that are not UTF-8 -------------------------------------------------------------------------

def test_non_utf8_text_and_jsonl_files_are_named_with_line_and_offset(tmp_path):
    from alexatm_jax.data import tasks
    from alexatm_jax.evaluation import loaders

    def where(data: bytes, bad: bytes, gz: bool = False) -> str:
        offset = data.index(bad)
        line = data[:offset].count(b"\n") + 1
        of = " of the decompressed data" if gz else ""
        return f"line {line}, byte offset {offset}{of} (byte 0x{bad[0]:02x})"

    latin_bytes = "first line\ncafé au lait\n".encode("latin-1")
    jsonl_bytes = b'{"text": "fine"}\n{"text": "b\xffd"}\n'
    packed_bytes = b'{"text": "ok"}\n\n{"text": "\xc3("}\n'
    latin, jsonl, packed = tmp_path / "latin1.txt", tmp_path / "records.jsonl", tmp_path / "packed.jsonl.gz"
    latin.write_bytes(latin_bytes)
    jsonl.write_bytes(jsonl_bytes)
    packed.write_bytes(gzip.compress(packed_bytes))
    cases = [(lambda: tasks.read_text_files(str(latin)), latin, where(latin_bytes, b"\xe9")),
             (lambda: tasks.read_text_files(str(jsonl)), jsonl, where(jsonl_bytes, b"\xff")),
             (lambda: tasks.files_source({"train": str(packed)}).texts("train"), packed,
              where(packed_bytes, b"\xc3", gz=True)),
             (lambda: loaders.read_jsonl(str(jsonl)), jsonl, where(jsonl_bytes, b"\xff"))]
    assert cases[0][2] == "line 2, byte offset 14 (byte 0xe9)"  # the helper itself, checked by hand once
    for read, path, expected in cases:
        with pytest.raises(ValueError) as error:
            read()
        assert f"{path} is not valid UTF-8 text: {expected}" in str(error.value)

    truncated = tmp_path / "cut.txt.gz"
    truncated.write_bytes(gzip.compress(b"some text\n" * 50)[:30])
    with pytest.raises(ValueError, match="cut.txt.gz is not a complete gzip file"):
        tasks.read_text_files(str(truncated))


def test_train_tokenizer_on_non_utf8_file_writes_nothing(tmp_path, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    line = _refused(["train-tokenizer", "--files", str(latin), "--output", str(tmp_path / "tok")], capsys,
                    tmp_path / "tok.model")
    assert f"{latin} is not valid UTF-8 text: line 1, byte offset 3" in line


# --- nonsense numbers and strings in flags -----------------------------------------------------------------

@pytest.mark.parametrize("argv,flag,value", [
    (["eval", "--checkpoint", "c", "--task", "t", "--output", "o", "--batch-size", "0"], "--batch-size", "0"),
    (["eval", "--checkpoint", "c", "--task", "t", "--output", "o", "--limit", "-3"], "--limit", "-3"),
    (["eval", "--checkpoint", "c", "--task", "t", "--output", "o", "--max-new-tokens", "0"], "--max-new-tokens", "0"),
    (["eval", "--checkpoint", "c", "--task", "t", "--output", "o", "--num-beams", "two"], "--num-beams", "two"),
    (["eval", "--checkpoint", "c", "--task", "t", "--output", "o", "--seed", "-1"], "--seed", "-1"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--stop", ""], "--stop", "''"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--max-new-tokens", "0"], "--max-new-tokens", "0"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--num-beams", "0"], "--num-beams", "0"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--temperature", "0"], "--temperature", "0"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--top-p", "1.5"], "--top-p", "1.5"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--top-k", "-1"], "--top-k", "-1"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--length-penalty", "nan"], "--length-penalty", "nan"),
    (["train-tokenizer", "--corpus", "bundled", "--output", "x", "--vocab-size", "0"], "--vocab-size", "0"),
    (["train-tokenizer", "--corpus", "bundled", "--output", "x", "--alpha", "1.5"], "--alpha", "1.5"),
    (["train-tokenizer", "--corpus", "bundled", "--output", "x", "--seed", "-2"], "--seed", "-2"),
    (["show-data", "--num", "0"], "--num", "0"),
    (["show-data", "--inputs-length", "-8"], "--inputs-length", "-8"),
])
def test_nonsense_flag_values_are_refused_by_name(capsys, argv, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert f"argument {flag}: " in captured.err and value in captured.err.splitlines()[-1]


def test_eval_negative_shots_describe_file_and_tokenizer_output_folder(tmp_path, capsys):
    line = _refused(["eval", "--checkpoint", "c", "--task", "t", "--output", str(tmp_path / "o"), "--shots",
                     "0,-1"], capsys, tmp_path / "o")
    assert "--shots '0,-1'" in line
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"x")
    line = _refused(["describe", "--model", str(weights)], capsys)
    assert f"--model {weights} is a file" in line
    line = _refused(["train-tokenizer", "--corpus", "bundled", "--output", str(tmp_path)], capsys)
    assert f"{str(tmp_path)!r} is a directory; give a file prefix" in line


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:xdist"]))
