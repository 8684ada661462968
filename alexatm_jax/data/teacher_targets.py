"""Sequence-level knowledge distillation data (Kim & Rush, 2016): a trained teacher decodes a target for every
input into a dataset on disk, and a student trains on that dataset as an ordinary seqio task.

Making the dataset (``alexatm-jax distill-targets``, or ``generate_targets`` from Python)::

    alexatm-jax distill-targets --teacher runs/teacher --output data/kd --inputs unlabelled.jsonl
    alexatm-jax distill-targets --teacher runs/teacher --output data/kd --task debian_section --split train \\
      --num-examples 4000 --lengths inputs=256,targets=16

Inputs come from one of two sources:

- ``JsonlInputs(path)`` (``--inputs``): a local JSON-lines file (``.gz`` too), one ``{"inputs": text}`` per
  line with an optional unique ``id`` (default: the line number). Texts are tokenized with the teacher's own
  tokenizer exactly as ``lm.tokenize`` does (``[CLM]`` prefix handling, EOS appended).
- ``TaskInputs(name, split, num_examples, lengths)`` (``--task``): the ``inputs`` token ids of the first
  ``num_examples`` examples of a registered seqio task or mixture, preprocessed at feature ``lengths``
  (trimmed, EOS appended), unpacked and unshuffled with seed 0, so the same request always reads the same
  inputs. Ids are ``NAME/SPLIT/INDEX``. The task must tokenize with the teacher's vocabulary.

Decoding is the project's own batched, sharded ``lm.generate`` (greedy, or beam search with ``num_beams``),
through the ``InferenceRunner`` of ``alexatm_jax.load(teacher, mesh=...)``.

The dataset directory:

- ``request.json``: what was asked (the teacher and its newest step, the decoding settings, the input source,
  its size and a fingerprint of its token ids, the part size). A re-run of the same request continues where
  the last one stopped; another request in the same directory is refused.
- ``part-00000.jsonl``, ``part-00001.jsonl``, ...: ``shard_size`` consecutive inputs each, one record per
  input ``{"id", "inputs", "targets", "inputs_ids", "targets_ids"}``. The texts are detokenized for reading;
  the ids are what training uses: the inputs as fed to the teacher and the targets as it generated them, both
  without EOS or padding (the task appends EOS), so training is exact even where a text does not round-trip
  through the tokenizer (sentinels, ids past the SentencePiece pieces). A part is written whole or not at all
  (a temporary file renamed into place, one upload on object stores) and checked against the request before
  a re-run keeps it, so a kill -9 costs at most the part in progress.
- ``tokenizer.model``: the teacher's tokenizer (the ids' vocabulary; the task tokenizes nothing with it, but
  the training run's tokenizer is checked against it).
- ``COMPLETE``: written last; training refuses a dataset without it.

Training on it (``gin_configs/runs/train_on_teacher_targets.gin``): ``register_task(name, directory)``, or from
gin ``MIXTURE_OR_TASK_NAME = @teacher_targets_task()`` with ``teacher_targets_task.directory = %TEACHER_TARGETS``.
The task feeds the stored ids (no re-tokenization): splits ``train`` and ``validation`` (a fixed ~2% of the
records, chosen by a hash of their ids, at least one), examples sharded by index across processes and computed
by position (``preprocessors.PositionalTask``), so the training pipeline resumes its data stream exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from alexatm_jax import storage
from alexatm_jax.data import preprocessors, tasks, text_files, vocab as vocab_lib

FORMAT_VERSION = 1
REQUEST_FILE, COMPLETE_FILE, TOKENIZER_FILE = "request.json", "COMPLETE", "tokenizer.model"
DEFAULT_TASK_NAME = "teacher_targets"
VALIDATION_FRACTION = 0.02
# Input lengths are padded up to a multiple of this (as in the evaluation runner), so few shapes compile.
LENGTH_BUCKET = 64
DEFAULT_LENGTHS = {"inputs": 256, "targets": 64}
FEATURES = ("inputs", "targets")


def part_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


def _command_hint(output_dir: str, request: Optional[Mapping] = None) -> str:
    """The `alexatm-jax distill-targets` command that (re)makes ``output_dir``, from its request if known."""
    if request is None:
        return f"alexatm-jax distill-targets --teacher DIR --output {output_dir} --inputs FILE.jsonl"
    decoding = request["decoding"]
    return " ".join(["alexatm-jax distill-targets", "--teacher", request["teacher"], "--output", str(output_dir),
                     *request["inputs"]["args"], "--max-new-tokens", str(decoding["max_new_tokens"]),
                     "--num-beams", str(decoding["num_beams"]), "--shard-size", str(request["shard_size"])])


# ================================================================================================ inputs
@dataclasses.dataclass(frozen=True)
class JsonlInputs:
    """A local JSON-lines file (``.gz`` too) of ``{"inputs": text, "id"?: str or int}`` records."""

    path: str

    def check(self) -> None:
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"inputs file {self.path} does not exist or is not a file: give a JSON-lines "
                                    "file with one {\"inputs\": TEXT} object per line")

    def describe(self) -> str:
        return f"file {os.path.abspath(self.path)}"

    def cli_args(self) -> List[str]:
        return ["--inputs", os.path.abspath(self.path)]

    def load(self, lm) -> Tuple[List[str], List[List[int]]]:
        """(ids, token rows [EOS-terminated]) in file order, tokenized like ``lm.tokenize``."""
        what = 'one {"inputs": TEXT, "id": optional unique id} object per line'
        ids, texts, where_of = [], [], {}
        for where, number, record in text_files.json_lines(self.path, what):
            text = record.get("inputs")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: each record needs a non-empty 'inputs' text, got "
                                 f"{'no inputs field' if text is None else repr(text)[:60]}")
            key = record.get("id", number)
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise ValueError(f"{where}: 'id' must be a string or an integer, got {key!r}")
            key = str(key)
            if key in where_of:
                raise ValueError(f"{where}: id {key!r} was already used at {where_of[key]}; ids must be unique")
            where_of[key] = where
            ids.append(key)
            texts.append(text)
        if not texts:
            raise ValueError(f"{self.path} holds no records: give {what}")
        return ids, lm.tokenize(texts)


@dataclasses.dataclass(frozen=True)
class TaskInputs:
    """The ``inputs`` of the first ``num_examples`` examples of a registered seqio task or mixture ``name``
    (``split``), preprocessed at feature ``lengths``, unpacked and unshuffled (seed 0)."""

    name: str
    split: str = "train"
    num_examples: int = 1000
    lengths: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_LENGTHS))

    def feature_lengths(self) -> Dict[str, int]:
        if not isinstance(self.lengths, Mapping) or set(self.lengths) - set(FEATURES):
            raise ValueError(f"lengths must map 'inputs' and 'targets' to token counts, e.g. inputs=256,targets=64; "
                             f"got {self.lengths!r}")
        lengths = {**DEFAULT_LENGTHS, **self.lengths}
        for key, value in lengths.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 4:
                raise ValueError(f"lengths: {key}={value!r} must be an integer of at least 4 tokens")
        return lengths

    def _provider(self):
        from alexatm_jax.data import nlu_tasks  # noqa: F401  (registers the bundled tasks and mixtures)

        try:
            provider = seqio.get_mixture_or_task(self.name)
        except ValueError:
            names = sorted(n for n in seqio.MixtureRegistry.names() if not n.startswith("_"))
            raise ValueError(f"no seqio task or mixture named {self.name!r}: give a registered one, e.g. "
                             f"debian_section or one of the mixtures {', '.join(names)}") from None
        if self.split not in provider.splits:
            raise ValueError(f"task {self.name} has no split {self.split!r}: it has {', '.join(provider.splits)}")
        return provider

    def check(self) -> None:
        if isinstance(self.num_examples, bool) or not isinstance(self.num_examples, int) or self.num_examples < 1:
            raise ValueError(f"num_examples must be an integer >= 1, got {self.num_examples!r}")
        self.feature_lengths()
        self._provider()

    def describe(self) -> str:
        lengths = self.feature_lengths()
        return (f"task {self.name} split {self.split}: the first {self.num_examples} examples at inputs="
                f"{lengths['inputs']},targets={lengths['targets']}, unshuffled")

    def cli_args(self) -> List[str]:
        lengths = self.feature_lengths()
        return ["--task", self.name, "--split", self.split, "--num-examples", str(self.num_examples),
                "--lengths", f"inputs={lengths['inputs']},targets={lengths['targets']}"]

    def load(self, lm) -> Tuple[List[str], List[List[int]]]:
        """(ids, token rows [EOS-terminated, as the task makes them]); fewer if the split is shorter."""
        from alexatm_jax.checkpoints import model_dir as model_dir_lib

        teacher_model = model_dir_lib.tokenizer_path(lm.path) if lm.path else None
        if teacher_model is not None and tasks.is_bundled(self.name) and not storage.is_remote(str(teacher_model)):
            # The bundled tasks hold text: tokenize them with the teacher's vocabulary (as `train` does).
            tasks.use_vocabulary_for_bundled(str(teacher_model))
        provider = self._provider()
        vocabulary = provider.output_features["inputs"].vocabulary
        task_model = getattr(vocabulary, "sentencepiece_model_file", None)
        if task_model and teacher_model is not None and \
                storage.resolve(task_model).read_bytes() != teacher_model.read_bytes():
            raise ValueError(f"task {self.name} tokenizes with {task_model} but the teacher was trained with "
                             f"{teacher_model}: its token ids would mean other pieces to the teacher. Register the "
                             "task with the teacher's vocabulary, or give --inputs text instead")
        dataset = provider.get_dataset(self.feature_lengths(), split=self.split, shuffle=False, seed=0, num_epochs=1,
                                       use_cached=False, try_in_mem_cache=False)
        ids, rows = [], []
        for i, example in enumerate(dataset.take(self.num_examples).as_numpy_iterator()):
            ids.append(f"{self.name}/{self.split}/{i}")
            rows.append([int(t) for t in example["inputs"]])
        if not rows:
            raise ValueError(f"task {self.name} split {self.split} gave no examples at lengths {self.feature_lengths()}")
        return ids, rows


InputSource = Union[JsonlInputs, TaskInputs]


def as_input_source(inputs) -> InputSource:
    """``inputs`` of ``generate_targets``: a ``JsonlInputs``, a ``TaskInputs``, or a path (a JSON-lines file)."""
    if isinstance(inputs, (JsonlInputs, TaskInputs)):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        return JsonlInputs(os.fspath(inputs))
    raise ValueError(f"inputs must be a JSON-lines path, JsonlInputs(path) or TaskInputs(name, ...), got {inputs!r}")


def fingerprint(ids: Sequence[str], rows: Sequence[Sequence[int]]) -> str:
    """sha256 of the ids and token rows, in order: identifies the inputs of a request."""
    digest = hashlib.sha256()
    for key, row in zip(ids, rows):
        digest.update(key.encode("utf-8") + b"\0" + np.asarray(row, "<i8").tobytes() + b"\1")
    return digest.hexdigest()


# ============================================================================================ generation
def _strip_eos(row: Sequence[int], eos: int) -> List[int]:
    """An input row as stored: its final EOS removed (the task appends it again after trimming)."""
    row = [int(t) for t in row]
    return row[:-1] if row and row[-1] == eos else row


def _target(generated: Sequence[int], eos: int) -> List[int]:
    """A generated row [max_new_tokens] -> the target: the tokens before the first EOS (after it there is only
    padding); a row without EOS was cut at max_new_tokens and is kept whole."""
    row = [int(t) for t in generated]
    return row[:row.index(eos)] if eos in row else row


def _padded(rows: Sequence[Sequence[int]], pad_id: int, limit: int) -> Tuple[np.ndarray, np.ndarray]:
    """Right-padded ids [B, width] int32 and their 0/1 mask, the width a multiple of ``LENGTH_BUCKET`` (at most
    ``limit`` unless a row is longer, which generate then refuses by name)."""
    longest = max(len(r) for r in rows)
    width = max(longest, min(-(-longest // LENGTH_BUCKET) * LENGTH_BUCKET, limit))
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return ids, mask


def decode_rows(lm, rows: Sequence[Sequence[int]], *, batch_size: int, max_new_tokens: int,
                num_beams: int) -> List[List[int]]:
    """The teacher's targets for EOS-terminated input rows (``lm.generate``: greedy, or beam search), in input
    order. Rows are decoded in length-sorted batches, so that a batch pads little."""
    eos, pad = lm.config.eos_token_id, lm.config.pad_token_id
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    targets: List[Optional[List[int]]] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        ids, mask = _padded([rows[i] for i in batch], pad, lm.config.max_position_embeddings)
        out = np.asarray(lm.generate(ids, mask, max_new_tokens=max_new_tokens, num_beams=num_beams))
        for i, generated in zip(batch, out):
            targets[i] = _target(generated.tolist(), eos)
    return targets


def _read_json(path) -> Optional[dict]:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _read_part(path, ids: Sequence[str], rows: Sequence[Sequence[int]], max_new_tokens: int) -> Optional[List[dict]]:
    """The records of a finished part, or None when ``path`` is missing or is not exactly the part for these
    inputs (damaged, cut short, or from other inputs): such a part is made again."""
    if not path.exists():
        return None
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if len(records) != len(ids):
        return None
    for record, key, row in zip(records, ids, rows):
        if not isinstance(record, dict) or record.get("id") != key or record.get("inputs_ids") != list(row):
            return None
        target = record.get("targets_ids")
        if not isinstance(target, list) or len(target) > max_new_tokens or \
                not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            return None
    return records


def _describe_difference(old: Mapping, new: Mapping) -> str:
    changed = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            before, after = json.dumps(old.get(key)), json.dumps(new.get(key))
            changed.append(f"{key} {before[:120]} -> {after[:120]}")
    return "; ".join(changed)


def _claim(root, output_dir: str, request: dict, tokenizer_bytes: bytes, write: bool) -> None:
    """Makes ``root`` this request's directory: a new or empty one gets ``request.json`` (first, so that another
    process never sees files without it) and the tokenizer; an existing one must hold the same request."""
    path = root / REQUEST_FILE
    if path.exists():
        existing = _read_json(path)
        if existing is None:
            raise ValueError(f"{path} is not valid JSON: delete {output_dir} to start over, or use a new --output "
                             "directory")
        if existing != request:
            raise ValueError(f"{output_dir} holds teacher targets for another request ({_describe_difference(existing, request)}): "
                             "use a new --output directory, or delete this one to start over")
    elif root.exists() and not root.is_dir():
        raise ValueError(f"--output {output_dir} is a file: give a directory (new or empty)")
    elif root.exists() and any(p.name[:1] != "." for p in root.iterdir()):
        raise ValueError(f"--output {output_dir} is not empty and holds no {REQUEST_FILE}: give a new or empty "
                         "directory")
    elif write:
        storage.write_text(path, json.dumps(request, indent=1, ensure_ascii=False) + "\n")
    if write and not (root / TOKENIZER_FILE).exists():
        storage.write_bytes(root / TOKENIZER_FILE, tokenizer_bytes)


def _remove_stale_temporaries(root) -> None:
    """Temporary files of parts from a killed run (``storage.atomic_path`` names them ``.part-NNNNN.*.tmp*``);
    local only: object-store writes leave none."""
    if storage.is_remote(root) or not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith(".part-") and ".tmp" in path.name:
            path.unlink()


def generate_targets(teacher_dir, output_dir, *, inputs, batch_size: int = 32, shard_size: int = 256,
                     max_new_tokens: int = 32, num_beams: int = 1, mesh=None,
                     progress: Optional[Callable[[str], None]] = None) -> dict:
    """Decodes the teacher's target for every input and writes the dataset ``output_dir`` (see the module
    docstring); a re-run of the same request keeps the finished parts. Returns a summary: ``output_dir``,
    ``num_inputs``, ``num_parts``, ``generated_parts``, ``kept_parts``, ``truncated`` (targets that reached
    ``max_new_tokens`` without EOS) and ``seconds``.

    ``teacher_dir``: a training run or model directory (``alexatm_jax.load``). ``inputs``: a ``JsonlInputs``,
    a ``TaskInputs`` or a JSON-lines path. ``batch_size``: inputs per ``generate`` call; ``shard_size``: inputs
    per part (the unit of resumption). ``mesh``: as for ``alexatm_jax.load`` (e.g. ``'data=8'``).
    ``progress``: called with one line per part."""
    import jax

    import alexatm_jax
    from alexatm_jax.checkpoints import model_dir as model_dir_lib

    started = time.perf_counter()
    progress = progress or (lambda line: None)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size), ("max_new_tokens", max_new_tokens),
                        ("num_beams", num_beams)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    source = as_input_source(inputs)
    source.check()  # before the teacher is loaded: a missing file or task is reported at once
    teacher_root = storage.resolve(teacher_dir)
    if not teacher_root.exists():
        raise FileNotFoundError(f"teacher {teacher_dir} does not exist: give the teacher's training run (MODEL_DIR) "
                                "or model directory")
    root = storage.resolve(output_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--output {output_dir} is a file: give a directory (new or empty)")

    step = model_dir_lib.latest_run_step(teacher_root)
    lm = alexatm_jax.load(teacher_root, mesh=mesh, step=step)  # this very step, whatever training adds meanwhile
    tokenizer = model_dir_lib.tokenizer_path(teacher_root)
    if lm.tokenizer is None or tokenizer is None:
        raise ValueError(f"teacher {teacher_dir} has no {TOKENIZER_FILE}: copy the SentencePiece model it was "
                         "trained with into it")
    ids, fed = source.load(lm)
    limit = lm.config.max_position_embeddings
    for key, row in zip(ids, fed):
        if len(row) > limit:
            raise ValueError(f"input {key!r} has {len(row)} tokens but the teacher reads at most {limit}: shorten it "
                             "(or, with --task, lower --lengths inputs=N)")
    eos = lm.config.eos_token_id
    rows = [_strip_eos(row, eos) for row in fed]
    request = {"format": FORMAT_VERSION, "teacher": os.fspath(teacher_root), "teacher_step": step,
               "decoding": {"max_new_tokens": max_new_tokens, "num_beams": num_beams,
                            "length_penalty": 0.6 if num_beams > 1 else None},
               "inputs": {"source": source.describe(), "args": source.cli_args(), "count": len(rows),
                          "fingerprint": fingerprint(ids, rows)},
               "shard_size": shard_size}
    writer = jax.process_index() == 0  # every process decodes its share of each batch; one writes
    _claim(root, output_dir, request, tokenizer.read_bytes(), writer)
    if writer:
        _remove_stale_temporaries(root)

    num_parts = -(-len(rows) // shard_size)
    spans = [(p * shard_size, min(len(rows), (p + 1) * shard_size)) for p in range(num_parts)]
    # Decided once, before anything is written, so that every process of a multi-host run does the same parts.
    done = {p: _read_part(root / part_name(p), ids[a:b], rows[a:b], max_new_tokens) for p, (a, b) in enumerate(spans)}
    truncated, generated = 0, 0
    for part, (start, stop) in enumerate(spans):
        name = part_name(part)
        records = done[part]
        if records is not None:
            progress(f"{name}: inputs {start}-{stop - 1} of {len(rows)} done by an earlier run, kept")
        else:
            clock = time.perf_counter()
            targets = decode_rows(lm, fed[start:stop], batch_size=batch_size, max_new_tokens=max_new_tokens,
                                  num_beams=num_beams)
            records = [{"id": ids[i], "inputs": lm.detokenize([rows[i]])[0], "targets": lm.detokenize([t])[0],
                        "inputs_ids": rows[i], "targets_ids": t} for i, t in zip(range(start, stop), targets)]
            if writer:
                storage.write_text(root / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            generated += 1
            seconds = time.perf_counter() - clock
            progress(f"{name}: inputs {start}-{stop - 1} of {len(rows)} decoded in {seconds:.1f}s "
                     f"({(stop - start) / max(seconds, 1e-9):.1f} inputs/s)")
        truncated += sum(len(r["targets_ids"]) >= max_new_tokens for r in records)
    if writer:
        complete = {"num_inputs": len(rows), "num_parts": num_parts, "truncated": truncated,
                    "fingerprint": request["inputs"]["fingerprint"]}
        storage.write_text(root / COMPLETE_FILE, json.dumps(complete, indent=1) + "\n")
    return {"output_dir": str(output_dir), "num_inputs": len(rows), "num_parts": num_parts,
            "generated_parts": generated, "kept_parts": num_parts - generated, "truncated": truncated,
            "seconds": time.perf_counter() - started}


# =============================================================================================== reading
def read_request(directory) -> dict:
    """``request.json`` of a dataset directory; FileNotFoundError naming the command that makes one."""
    path = storage.resolve(directory) / REQUEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no teacher targets ({REQUEST_FILE} is missing): make them with "
                                f"`{_command_hint(directory)}`")
    request = _read_json(path)
    if request is None or request.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a teacher-targets request of format {FORMAT_VERSION}: make the dataset "
                         f"again with `{_command_hint(directory)}`")
    return request


def read_dataset(directory) -> List[dict]:
    """Every record of a finished dataset, in input order. A dataset without ``COMPLETE`` is an error naming the
    command that finishes it."""
    root = storage.resolve(directory)
    request = read_request(directory)
    if not (root / COMPLETE_FILE).exists():
        raise ValueError(f"the teacher targets in {directory} are unfinished (no {COMPLETE_FILE}): run "
                         f"`{_command_hint(directory, request)}` to finish them; it keeps the parts already made")
    records = []
    count, shard_size = request["inputs"]["count"], request["shard_size"]
    for part in range(-(-count // shard_size)):
        path = root / part_name(part)
        expected = min(shard_size, count - part * shard_size)
        try:
            lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            lines = None
        except (json.JSONDecodeError, UnicodeDecodeError):
            lines = []
        if lines is None or len(lines) != expected:
            raise ValueError(f"{path} is {'missing' if lines is None else 'damaged'}: delete {COMPLETE_FILE} and run "
                             f"`{_command_hint(directory, request)}` to make it again")
        records += lines
    return records


def dataset_vocabulary(directory):
    """The seqio vocabulary of the dataset's ids (its ``tokenizer.model``, fetched to a local file if the
    dataset is remote), or None (the bundled one) when it has none."""
    path = storage.resolve(directory) / TOKENIZER_FILE
    if not path.exists():
        return None
    if storage.is_remote(path):
        data = path.read_bytes()
        local = os.path.join(tempfile.gettempdir(), f"alexatm-teacher-targets-{hashlib.sha256(data).hexdigest()[:16]}.model")
        if not os.path.exists(local):
            storage.write_bytes(local, data)
        path = local
    return vocab_lib.get_vocabulary(os.fspath(path))


def _in_validation(record_id: str) -> float:
    """A fixed number in [0, 1) per id: records below ``VALIDATION_FRACTION`` are the validation split."""
    return int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "little") / 2.0 ** 64


def split_records(records: Sequence[Mapping], split: str) -> List[Mapping]:
    """``train`` or ``validation`` (the records whose id hash falls below ``VALIDATION_FRACTION``, at least
    the one with the smallest hash), in record order."""
    if len(records) < 2:
        raise ValueError(f"{len(records)} teacher-target record(s): at least 2 are needed, one of them held out "
                         "for validation")
    scores = [_in_validation(str(r["id"])) for r in records]
    held = {i for i, s in enumerate(scores) if s < VALIDATION_FRACTION} or {int(np.argmin(scores))}
    return [r for i, r in enumerate(records) if (i in held) == (split == "validation")]


# ================================================================================================== task
class TeacherTargetsSource(tasks.InMemorySource):
    """The dataset's records held in memory, sharded by index (record ``i`` of a split belongs to shard
    ``i % num_shards``), with random access: ``shard_table`` holds a shard's token ids in one ``TokenTable``
    (row ``2k``: the inputs of its record ``k``, row ``2k + 1``: the targets) and its ids."""

    def shard_table(self, split: str, shard_info: Optional[seqio.ShardInfo]) -> Tuple[preprocessors.TokenTable, np.ndarray]:
        shard, index, count = self.shard(split, shard_info)
        if (split, index, count) not in self._tables:
            table = preprocessors.TokenTable.from_lists([row for r in shard for row in (r["inputs_ids"], r["targets_ids"])])
            self._tables[(split, index, count)] = (table, np.array([str(r["id"]) for r in shard], dtype=object))
        return self._tables[(split, index, count)]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        """One pass over the shard's ``{"id": str, "inputs", "targets": int32 [n]}`` (no EOS), in a random order
        chosen by ``seed`` when ``shuffle`` (seqio's source interface)."""
        table, ids = self.shard_table(split, shard_info)
        order_seed = preprocessors.stream_seed(seed, self._description, split, shard_info, shuffle)
        params = {key: tf.constant(value) for key, value in _params(table, ids, shuffle, order_seed).items()}
        fn = tf.autograph.experimental.do_not_convert(lambda p: _record(table.constant, params, p))
        return tf.data.Dataset.range(len(ids)).map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _params(table: preprocessors.TokenTable, ids: np.ndarray, shuffle: bool, seed: int) -> Dict[str, np.ndarray]:
    return dict(starts=table.row_splits[:-1], doc_lengths=np.diff(table.row_splits), ids=ids,
                per_epoch=np.int64(max(len(ids), 1)), shuffle=np.bool_(shuffle), seed=np.int64(seed))


def _record(tokens, params, position) -> Dict[str, tf.Tensor]:
    """``{"id", "inputs", "targets"}`` (token ids as stored) of the record at ``position``: record
    ``position % per_epoch`` of the epoch's order (a fresh permutation per epoch when ``shuffle``)."""
    epoch, index = preprocessors.epoch_and_index(position, params["per_epoch"])
    index = tf.cond(params["shuffle"],
                    lambda: preprocessors.permutation(index, params["per_epoch"], params["seed"], epoch),
                    lambda: index)
    starts = params["starts"] + params["token_offset"] if "token_offset" in params else params["starts"]

    def row(r):
        return tokens[starts[r]:starts[r] + params["doc_lengths"][r]]

    return {"id": tf.gather(params["ids"], index), "inputs": row(2 * index), "targets": row(2 * index + 1)}


_EXAMPLE_FNS: Dict[tuple, tuple] = {}


def example_fn(features: Mapping[str, seqio.Feature], sequence_length) -> Callable:
    """``fn(tokens, params, position)`` for ``preprocessors.PositionalExamples``: the stored ids of a record,
    then EOS after trimming to ``sequence_length`` (seqio's ``append_eos_after_trim``, as every task). One
    function object per (features, lengths), so tasks on different datasets share one traced graph."""
    key = (tuple((name, id(f.vocabulary), f.add_eos) for name, f in sorted(features.items())),
           tuple(sorted((sequence_length or {}).items())))
    if key not in _EXAMPLE_FNS:
        def fn(tokens, params, position):
            return preprocessors.eos_after_trim(_record(tokens, params, position), features, sequence_length)

        _EXAMPLE_FNS[key] = (features, fn)  # the features keep the vocabularies' ids from being reused
    return _EXAMPLE_FNS[key][1]


class TeacherTargetsTask(preprocessors.PositionalTask):
    """Text to text on a ``TeacherTargetsSource``, computed by position (``example_fn``)."""

    def positional_examples(self, split, sequence_length, shard_info, shuffle, seed):
        table, ids = self.source.shard_table(split, shard_info)
        seed = preprocessors.derive_seed(self.stream_seed(seed, split, shard_info, shuffle), "order")
        return preprocessors.PositionalExamples(len(ids), example_fn(self.output_features, sequence_length), table,
                                                _params(table, ids, shuffle, seed))


_REGISTERED: Dict[str, tuple] = {}


def register_task(name: str, directory, vocabulary=None) -> seqio.Task:
    """(Re-)registers the seqio task ``name`` on the finished dataset ``directory``: splits ``train`` and
    ``validation``, features ``inputs`` and ``targets`` (the stored ids + EOS) and ``id``. ``vocabulary``: the
    ids' vocabulary (default: the dataset's ``tokenizer.model``, i.e. the teacher's)."""
    from alexatm_jax.data import nlu_tasks

    root = storage.resolve(directory)
    complete = root / COMPLETE_FILE
    vocabulary = vocabulary or dataset_vocabulary(directory)
    key = (os.fspath(root), complete.read_text() if complete.exists() else None, id(vocabulary))
    if key[1] is not None and _REGISTERED.get(name, (None,))[0] == key and name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)  # gin evaluates @teacher_targets_task() more than once
    records = read_dataset(directory)
    by_split = {split: split_records(records, split) for split in ("train", "validation")}
    source = TeacherTargetsSource(by_split.__getitem__, tuple(by_split), f"teacher targets {directory}")
    seqio.TaskRegistry.remove(name)
    task = seqio.TaskRegistry.add(name, task_cls=TeacherTargetsTask, source=source,
                                  output_features=nlu_tasks.output_features(vocabulary),
                                  preprocessors=[seqio.preprocessors.append_eos_after_trim], shuffle_buffer_size=64)
    _REGISTERED[name] = (key, vocabulary)
    return task


@gin.configurable(module="alexatm_jax")
def teacher_targets_task(directory=gin.REQUIRED, name: Optional[str] = None) -> str:
    """Registers the task on the teacher-targets dataset ``directory`` and returns its name (default
    ``teacher_targets``), for run files: ``MIXTURE_OR_TASK_NAME = @teacher_targets_task()`` with
    ``teacher_targets_task.directory = %TEACHER_TARGETS``."""
    if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
        given = "is not set" if directory is gin.REQUIRED else f"is {directory!r}"
        raise ValueError(f"teacher_targets_task.directory {given}: bind TEACHER_TARGETS to a dataset made by "
                         "`alexatm-jax distill-targets`, e.g. --gin.TEACHER_TARGETS=\"'/data/kd'\"")
    name = name or DEFAULT_TASK_NAME
    register_task(name, directory)
    return name
