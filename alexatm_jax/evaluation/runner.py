"""The few-shot evaluation loop: card + data + model -> predictions, metrics and a results file.

``evaluate(lm, card, shots=[0, 1, 5], ...)`` works with any object shaped like ``alexatm_jax.api.LanguageModel``
(``.config``, ``.tokenizer`` (SentencePiece), ``.generate(ids, attention_mask, max_new_tokens=..., ...)``,
``.score(ids, target_ids, attention_mask=..., target_mask=...)``). For each shot count it renders every prompt,
checks that it fits the model, decodes in length-sorted batches (or scores every choice, for rank
classification), post-processes, and scores with the card's metrics.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from typing import Optional, Sequence

import numpy as np

from alexatm_jax import storage
from alexatm_jax.evaluation import cards, loaders, prompts
from alexatm_jax.evaluation import metrics as metric_lib
from alexatm_jax.evaluation.cards import CardError, TaskCard

# Prompt lengths are padded up to a multiple of this, so that a run compiles a handful of shapes.
LENGTH_BUCKET = 64


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------

def load_examples(card: TaskCard, data: Optional[str] = None, shots_data: Optional[str] = None):
    """-> (shot pool, evaluation set, description of the source). ``data`` replaces the card's source."""
    data_format = card.data["format"]
    location = card.data["path"] if data_format == "bundled" else cards.expand_path(card.data["path"])
    if data is not None:
        location = data
        if data_format == "bundled":
            data_format = "jsonl"
    records = loaders.load_records(data_format, location, card.params)
    has_splits = all("split" in r for r in records)
    pool, evaluation = prompts.split_records(card, records, has_splits=has_splits)
    if shots_data is not None:
        shots_format = card.data["format"] if os.path.isdir(shots_data) or card.data["format"] == "debian_labels" \
            else "jsonl"
        shot_split = card.data["shot_split"]
        shot_records = [r if "split" in r else dict(r, split=shot_split)
                        for r in loaders.load_records(shots_format, shots_data, card.params)]
        pool, _ = prompts.split_records(card, shot_records)
    elif not has_splits and data is not None and loaders.is_bundled_source(card.data["format"], card.data["path"]):
        # A user's file without splits: shots still come from the card's own bundled source.
        pool, _ = prompts.split_records(card, loaders.load_records(card.data["format"], card.data["path"],
                                                                   card.params))
    if not evaluation:
        raise CardError(f"Task {card.name}: no evaluation examples in {location} (split "
                        f"{card.data['eval_split']!r}, filter {card.data['filter']}, params {card.params})")
    return pool, evaluation, f"{data_format}:{location}"


# ----------------------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------------------

class PromptEncoder:
    """Text <-> token ids with the checkpoint's SentencePiece model, following the model's conventions:
    the CLM token as its own id in front, EOS at the end of the encoder input (seqio's ``add_eos``)."""

    def __init__(self, lm, card: TaskCard):
        if lm.tokenizer is None:
            raise CardError("This checkpoint has no tokenizer.model; evaluation needs the checkpoint's "
                            "SentencePiece tokenizer (save it with the model directory)")
        self.sp = lm.tokenizer
        self.config = lm.config
        self.card = card
        self.clm_id = None
        if card.prompt["mode"] == "clm":
            piece = card.prompt["clm_token"]
            clm_id = self.sp.piece_to_id(piece)
            if clm_id == self.sp.unk_id() or self.sp.id_to_piece(clm_id) != piece:
                raise CardError(f"Task {card.name} is in CLM mode but the tokenizer has no {piece!r} piece; use "
                                f"a denoising-mode card (prompt.mode: denoising) or set prompt.clm_token")
            self.clm_id = clm_id

    def count(self, text: str) -> int:
        return len(self.sp.encode(text))

    def cut(self, text: str, max_tokens: int) -> str:
        return self.sp.decode(self.sp.encode(text)[:max_tokens])

    def prompt_ids(self, prompt: str) -> list[int]:
        from alexatm_jax.api import prompt_token_ids

        return prompt_token_ids(self.sp, prompt, self.config.eos_token_id,
                                clm_token=self.card.prompt["clm_token"] if self.card.prompt["mode"] == "clm" else "")

    def target_ids(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, row: Sequence[int]) -> str:
        row = [int(t) for t in row]
        eos, pad = self.config.eos_token_id, self.config.pad_token_id
        if eos in row:
            row = row[:row.index(eos)]
        # Ids past the SentencePiece vocabulary (seqio's extra ids / padding of the embedding table to a
        # multiple of 128) have no text.
        size = self.sp.get_piece_size()
        return self.sp.decode([t for t in row if t != pad and t < size])

    def stop_sequences(self) -> list[list[int]]:
        """Token sequences whose text contains a cut string: stopping there loses nothing, since the output
        is cut at that string anyway. One-piece ids containing it, plus the cut string's own encodings."""
        stops = set()
        for cut in self.card.cut_at:
            if not cut.strip():
                continue
            for variant in (cut, " " + cut):
                ids = self.sp.encode(variant)
                if ids:
                    stops.add(tuple(ids))
            if len(cut) <= 2:
                for i in range(self.sp.get_piece_size()):
                    if cut in self.sp.id_to_piece(i).replace("\u2581", " ") and not self.sp.is_control(i):
                        stops.add((i,))
        return [list(s) for s in sorted(stops)]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id rows -> right-padded ids [B, width] int32 and their 0/1 mask."""
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def _pad_batch(rows: Sequence[Sequence[int]], pad_id: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    return pad_rows(rows, pad_id, min(-(-width // LENGTH_BUCKET) * LENGTH_BUCKET, max(limit, width)))


def _batches(order: Sequence[int], batch_size: int):
    for start in range(0, len(order), batch_size):
        yield list(order[start:start + batch_size])


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="ex", disable=not enabled, file=sys.stderr, leave=False)


# ----------------------------------------------------------------------------------------------------------
# One shot count
# ----------------------------------------------------------------------------------------------------------

def _render_all(card, encoder, shots, evaluation, limit_positions):
    """Prompts and their ids for every evaluation example, with truncation and the length check."""
    shot_values = [values for _, values in shots]
    shot_targets = None
    if card.kind == "rank_classification":
        shot_targets = [_choice_text(card, v["label"]) for v in shot_values]
    rendered, truncated = [], 0
    for record, values in evaluation:
        values = dict(values)
        if card.truncate is not None:
            field = card.truncate["field"]
            values[field], was_cut = prompts.truncate_at_sentence(
                values[field], int(card.truncate["max_tokens"]), encoder.count, encoder.cut)
            truncated += was_cut
        prompt = prompts.render_prompt(card, shot_values, values, shot_targets)
        ids = encoder.prompt_ids(prompt)
        if len(ids) > limit_positions:
            raise CardError(
                f"Task {card.name}: the prompt of example {record.get('id')!r} with {len(shots)} shot(s) has "
                f"{len(ids)} tokens but the model has {limit_positions} positions. Use fewer shots, a smaller "
                f"truncate.max_tokens in the card, or a model with more positions.")
        rendered.append((record, values, prompt, ids))
    return rendered, truncated


def _choice_text(card: TaskCard, label) -> str:
    choices = card.choices
    key = label if label in choices else str(label)
    if key not in choices:
        raise CardError(f"Task {card.name}: label {label!r} is not one of the choices {sorted(choices)}")
    return choices[key]


def _generate_run(lm, card, encoder, rendered, batch_size, decoding, progress, stop_sequences):
    options = {k: v for k, v in decoding.items() if k not in ("max_new_tokens", "num_beams", "seed")}
    if options.get("do_sample"):
        import jax
        options["rng"] = jax.random.PRNGKey(int(decoding.get("seed", 0)))
    if stop_sequences:
        options["stop_sequences"] = stop_sequences
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i][3]))
    raw = [None] * len(rendered)
    limit = lm.config.max_position_embeddings
    with _progress(len(rendered), f"{card.name} generate", progress) as bar:
        for batch in _batches(order, batch_size):
            ids, mask = _pad_batch([rendered[i][3] for i in batch], lm.config.pad_token_id, limit)
            out = lm.generate(ids, mask, max_new_tokens=int(decoding["max_new_tokens"]),
                              num_beams=int(decoding.get("num_beams", 1)), **options)
            for i, row in zip(batch, np.asarray(out)):
                raw[i] = encoder.decode(row)
            bar.update(len(batch))
    examples = []
    for (record, values, prompt, ids), text in zip(rendered, raw):
        examples.append({"id": record.get("id"), "prompt": prompt, "prompt_tokens": len(ids),
                         "raw_prediction": text, "prediction": prompts.postprocess(card, text),
                         "reference": values["target"]})
    return examples


def _choice_scores(lm, encoder, rendered, targets, batch_size, progress, description) -> np.ndarray:
    """[examples, choices] summed log-likelihoods with ``lm.score_choices``: one encoder pass per prompt, all
    choices decoded against it; ``batch_size`` (prompt, choice) pairs per call, so at least one prompt."""
    scores = np.zeros((len(rendered), len(targets)), np.float64)
    width = max(len(t) for t in targets)
    choice_ids = np.full((len(targets), width), lm.config.pad_token_id, np.int32)
    choice_mask = np.zeros((len(targets), width), np.int32)
    for c, row in enumerate(targets):
        choice_ids[c, :len(row)], choice_mask[c, :len(row)] = row, 1
    order = sorted(range(len(rendered)), key=lambda e: len(rendered[e][3]))
    with _progress(len(rendered) * len(targets), description, progress) as bar:
        for batch in _batches(order, max(1, batch_size // len(targets))):
            ids, mask = _pad_batch([rendered[e][3] for e in batch], lm.config.pad_token_id,
                                   lm.config.max_position_embeddings)
            result = np.asarray(lm.score_choices(ids, choice_ids, attention_mask=mask, choice_mask=choice_mask))
            scores[batch] = result
            bar.update(len(batch) * len(targets))
    return scores


def _rank_run(lm, card, encoder, rendered, batch_size, progress):
    labels = list(card.choices)
    targets = [encoder.target_ids(card.prompt["target_prefix"] + card.choices[label]) for label in labels]
    if hasattr(lm, "score_choices"):
        scores = _choice_scores(lm, encoder, rendered, targets, batch_size, progress, f"{card.name} score")
    else:  # any object with lm.score: every (prompt, choice) pair as its own row
        scores = _pair_scores(lm, card, rendered, targets, batch_size, progress)
    examples = []
    for (record, values, prompt, ids), row in zip(rendered, scores):
        best = int(np.argmax(row))
        examples.append({"id": record.get("id"), "prompt": prompt, "prompt_tokens": len(ids),
                         "prediction": card.choices[labels[best]],
                         "reference": _choice_text(card, values["label"]),
                         "choice_scores": {card.choices[l]: float(s) for l, s in zip(labels, row)}})
    return examples


def _pair_scores(lm, card, rendered, targets, batch_size, progress) -> np.ndarray:
    pairs = [(e, c) for e in range(len(rendered)) for c in range(len(targets))]
    scores = np.zeros((len(rendered), len(targets)), np.float64)
    limit = lm.config.max_position_embeddings
    order = sorted(range(len(pairs)), key=lambda p: len(rendered[pairs[p][0]][3]))
    with _progress(len(pairs), f"{card.name} score", progress) as bar:
        for batch in _batches(order, batch_size):
            ids, mask = _pad_batch([rendered[pairs[p][0]][3] for p in batch], lm.config.pad_token_id, limit)
            tgt, tmask = _pad_batch([targets[pairs[p][1]] for p in batch], lm.config.pad_token_id, limit)
            result = lm.score(ids, tgt, attention_mask=mask, target_mask=tmask)
            for p, value in zip(batch, np.asarray(result)):
                scores[pairs[p]] = value
            bar.update(len(batch))
    return scores


def _metrics_for(card, examples, spm_path) -> dict:
    if card.kind == "rank_classification":
        names = [e["prediction"] for e in examples]
        golds = [e["reference"] for e in examples]
        choices = list(card.choices.values())
        result = metric_lib.accuracy([choices.index(n) for n in names], [choices.index(g) for g in golds])
        return {result.name: result.to_dict()}
    predictions = [e["prediction"] for e in examples]
    references = [e["reference"] for e in examples]
    out = {}
    for name in card.metrics:
        for result in metric_lib.compute(name, predictions, references, spm_path=spm_path):
            out[result.name] = result.to_dict()
    return out


# ----------------------------------------------------------------------------------------------------------
# The whole evaluation
# ----------------------------------------------------------------------------------------------------------

def evaluate(lm, card: TaskCard, shots: Sequence[int], *, data: Optional[str] = None,
             shots_data: Optional[str] = None, limit: Optional[int] = None, seed: Optional[int] = None,
             batch_size: int = 8, progress: bool = True, spm_path: Optional[str] = None,
             checkpoint: Optional[str] = None) -> dict:
    """Runs ``card`` for every shot count in ``shots`` -> the results dict (see ``write_results``)."""
    shots = [int(k) for k in shots]
    if any(k < 0 for k in shots) or not shots:
        raise CardError(f"--shots must be non-negative integers, got {shots}")
    if card.kind == "retrieval":  # no prompts to complete: embeddings compared across languages
        from alexatm_jax.evaluation import retrieval

        return retrieval.evaluate(lm, card, shots, data=data, limit=limit, batch_size=batch_size,
                                  progress=progress, checkpoint=checkpoint)
    if limit is not None and limit < 1:
        raise CardError(f"--limit must be >= 1, got {limit}")
    pool, evaluation, source = load_examples(card, data, shots_data)
    if max(shots) > 0 and not pool:
        raise CardError(f"Task {card.name}: {max(shots)} shot(s) requested but the data has no "
                        f"'{card.data['shot_split']}' examples to draw them from. Give records a \"split\" "
                        f"key, pass --shots-data FILE, or use --shots 0.")
    if limit is not None:
        evaluation = evaluation[:limit]
    encoder = PromptEncoder(lm, card)
    if spm_path is None:
        spm_path = getattr(lm, "tokenizer_path", None) or _tokenizer_path(lm)
    decoding = dict(card.decoding)
    if seed is not None:
        decoding["seed"] = seed  # one seed for shot selection and sampling
    stop_sequences = encoder.stop_sequences() if card.kind == "generate" else []
    runs = []
    for k in shots:
        chosen = prompts.choose_shots(card, pool, k, seed)
        rendered, truncated = _render_all(card, encoder, chosen, evaluation, lm.config.max_position_embeddings)
        if card.kind == "rank_classification":
            examples = _rank_run(lm, card, encoder, rendered, batch_size, progress)
        else:
            examples = _generate_run(lm, card, encoder, rendered, batch_size, decoding, progress, stop_sequences)
        empty = sum(1 for e in examples if not e["prediction"].strip())
        if empty:
            print(f"warning: {card.name} {k}-shot: {empty} of {len(examples)} predictions are empty after "
                  f"post-processing (see raw_prediction in results.json)", file=sys.stderr)
        scores = _metrics_for(card, examples, spm_path)
        runs.append({"shots": k, "shot_ids": [r.get("id") for r, _ in chosen], "num_examples": len(examples),
                     "empty_predictions": empty, "truncated_inputs": truncated,
                     "scores": {name: m["score"] for name, m in scores.items()},
                     "signatures": {name: m["signature"] for name, m in scores.items()},
                     "metrics": scores, "examples": examples})
    return {
        "checkpoint": checkpoint if checkpoint is not None else getattr(lm, "path", None),
        "task": card.to_dict(),
        "data": source,
        "shots": shots,
        "seed": card.shots["seed"] if seed is None else seed,
        "limit": limit,
        "decoding": decoding,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "runs": runs,
    }


def _tokenizer_path(lm) -> Optional[str]:
    path = getattr(lm, "path", None)
    if path:
        candidate = storage.resolve(path) / "tokenizer.model"  # local or remote (gs://) model directories
        if candidate.exists():
            return os.fspath(candidate)
    return None


def markdown_table(results: dict) -> str:
    """| shots | metric ... | rows for each shot count (retrieval cards: the language-pair matrix)."""
    if results["task"].get("kind") == "retrieval":
        from alexatm_jax.evaluation import retrieval

        return retrieval.markdown_table(results)
    names = []
    for run in results["runs"]:
        names += [n for n in run["scores"] if n not in names]
    lines = [f"Task `{results['task']['name']}` on `{results['checkpoint']}` ({results['data']})", "",
             "| shots | examples | " + " | ".join(names) + " |",
             "|---:|---:|" + "---:|" * len(names)]
    for run in results["runs"]:
        cells = [f"{run['scores'][n]:.2f}" if n in run["scores"] else "" for n in names]
        lines.append(f"| {run['shots']} | {run['num_examples']} | " + " | ".join(cells) + " |")
    empties = [f"{run['shots']}-shot: {run['empty_predictions']}" for run in results["runs"]
               if run.get("empty_predictions")]
    if empties:
        lines += ["", "Empty predictions: " + ", ".join(empties)]
    return "\n".join(lines)


def write_results(results: dict, output_dir: str) -> str:
    """Writes ``output_dir/results.json`` (local or e.g. gs://) atomically; returns its path."""
    path = storage.resolve(output_dir) / "results.json"
    storage.write_text(path, json.dumps(results, ensure_ascii=False, indent=1) + "\n")
    return os.fspath(path)
