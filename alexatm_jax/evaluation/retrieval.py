"""Cross-lingual representation check: do translations cluster in the encoder's space?

For aligned multilingual data (records ``{"id", "split", "texts": {lang: text}}``: the bundled UDHR paragraphs
and Debian package summaries), every text is embedded as the **mean of the encoder's output states over its
tokens** (padding masked out; the input is the text with EOS, as the model reads a denoising input), each
language's mean vector is subtracted (``centering: language``, the default; ``--param centering=none`` keeps
the raw states), and for every ordered language pair (src, tgt) each src text looks up its **cosine nearest
neighbour** among the tgt texts of the records that have both languages. Accuracy = share of src texts whose neighbour is their own
translation; chance is 1/n for n candidates. A model whose languages share a space scores high off the
diagonal; a model with a separate island per language scores near chance.

Run as a task card of ``kind: retrieval`` (``tasks/udhr_retrieval.yaml``, ``tasks/debian_retrieval.yaml``)::

    alexatm-jax eval --checkpoint DIR --task udhr_retrieval            # all 12 languages, 132 ordered pairs
    alexatm-jax eval --checkpoint DIR --task debian_retrieval --langs en,de,ja

The card's ``data.fields.text`` is a field path with a ``{lang}`` placeholder (``texts.{lang}``); its
``langs`` param (``all`` or a comma-separated list, also set by ``eval --langs``) picks the languages;
``truncate.max_tokens`` caps each text's tokens; a pair with fewer than the ``min_pairs`` param (default 2)
records in both languages is left out (``n/a``). ``evaluate`` returns the runner's results dict, whose run
holds the accuracy matrix; the pure scoring functions (``mean_pool``, ``nearest_neighbour_hits``,
``pair_accuracies``) work on any vectors.
"""

from __future__ import annotations

import datetime
import platform
from typing import Mapping, Optional, Sequence

import numpy as np

from alexatm_jax.evaluation import cards, loaders, prompts
from alexatm_jax.evaluation.cards import CardError, TaskCard
from alexatm_jax.evaluation.nlu_metrics import Estimate, proportion_stderr

METRIC = "retrieval_accuracy"
# "language": subtract each language's mean vector before the cosines (``center``); "none": raw states.
CENTERINGS = ("language", "none")
# The order languages are listed in (the AlexaTM languages, then the Debian translation ones); others follow.
LANGUAGE_ORDER = ("en", "ar", "de", "es", "fr", "hi", "it", "ja", "mr", "pt", "ta", "te", "ru")


# ----------------------------------------------------------------------------------------------------------
# Pure scoring
# ----------------------------------------------------------------------------------------------------------

def mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Encoder states [B, L, D] and mask [B, L] (1 = token, 0 = padding) -> mean over the tokens [B, D]."""
    states = np.asarray(states, np.float64)
    mask = np.asarray(mask, np.float64)[..., None]
    return (states * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)


def center(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` [N, D] minus their mean: removes the direction all texts of one language share (the language
    identity and the encoder's common offset), which otherwise dominates cosines and makes a few texts
    everyone's nearest neighbour (hubs). Libovický et al. 2020 (language-specific centering)."""
    vectors = np.asarray(vectors, np.float64)
    return vectors - vectors.mean(axis=0, keepdims=True)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def nearest_neighbour_hits(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[N] booleans: whether query i's cosine nearest neighbour among the N candidates is candidate i (its
    translation). Ties go to the lowest index: a model that gives every text the same vector scores 1/N, chance."""
    queries, candidates = np.asarray(queries), np.asarray(candidates)
    if queries.ndim != 2 or queries.shape != candidates.shape:
        raise ValueError(f"queries {queries.shape} and candidates {candidates.shape} must both be [N, D], aligned")
    similarity = _unit(queries) @ _unit(candidates).T
    return np.argmax(similarity, axis=1) == np.arange(len(queries))


def pair_accuracies(vectors: Mapping[str, Mapping[str, np.ndarray]], langs: Sequence[str],
                    min_pairs: int = 2) -> dict:
    """``{lang: {record id: vector}}`` -> ``{src: {tgt: Estimate}}`` for every ordered pair of ``langs`` with
    at least ``min_pairs`` records in both (others are left out): nearest-neighbour accuracy of src -> tgt
    among those records, its standard error and n."""
    matrix: dict = {}
    for src in langs:
        for tgt in langs:
            if src == tgt:
                continue
            ids = [i for i in vectors.get(src, {}) if i in vectors.get(tgt, {})]
            if len(ids) < min_pairs:
                continue
            hits = nearest_neighbour_hits(np.stack([vectors[src][i] for i in ids]),
                                          np.stack([vectors[tgt][i] for i in ids]))
            value = float(hits.mean())
            matrix.setdefault(src, {})[tgt] = Estimate(value, proportion_stderr(value, len(ids)), len(ids))
    return matrix


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------

def _ordered(langs) -> list[str]:
    rank = {lang: i for i, lang in enumerate(LANGUAGE_ORDER)}
    return sorted(set(langs), key=lambda lang: (rank.get(lang, len(rank)), lang))


def _text_path(card: TaskCard, lang: str) -> str:
    return card.data["fields"]["text"].format_map({**card.values(), "lang": lang})


def load_records(card: TaskCard, data: Optional[str] = None, limit: Optional[int] = None) -> tuple[list, str]:
    """The card's evaluation records (its filter and ``eval_split``; all records when the data has no splits),
    the first ``limit`` of them; -> (records, source description)."""
    data_format = card.data["format"]
    location = card.data["path"] if data_format == "bundled" else cards.expand_path(card.data["path"])
    if data is not None:
        location, data_format = data, ("jsonl" if data_format == "bundled" else data_format)
    records = loaders.load_records(data_format, location, card.params)
    has_splits = all("split" in r for r in records)
    records = [r for r in records if prompts._matches_filter(card, r)
               and (not has_splits or r.get("split") == card.data["eval_split"])]
    if limit is not None:
        records = records[:limit]
    return records, f"{data_format}:{location}"


def available_languages(card: TaskCard, records: Sequence[dict]) -> list[str]:
    """Languages with a text in at least two records (the ``{lang}`` of ``data.fields.text``)."""
    container, _, _ = card.data["fields"]["text"].partition("{lang}")
    counts: dict = {}
    for record in records:
        found = prompts.get_field(record, container.rstrip(".")) if container else record
        if isinstance(found, dict):
            for lang, text in found.items():
                if isinstance(text, str) and text.strip():
                    counts[lang] = counts.get(lang, 0) + 1
    return _ordered(lang for lang, count in counts.items() if count >= 2)


def resolve_languages(card: TaskCard, records: Sequence[dict], spec: Optional[str] = None) -> list[str]:
    """``spec`` (or the card's ``langs`` param): ``all`` or a comma-separated list, checked against the data."""
    spec = spec if spec is not None else str(card.params.get("langs", "all"))
    available = available_languages(card, records)
    if spec.strip() in ("", "all"):
        langs = available
    else:
        langs = [lang.strip() for lang in spec.split(",") if lang.strip()]
        unknown = [lang for lang in langs if lang not in available]
        if unknown:
            raise CardError(f"Task {card.name}: no texts in language(s) {unknown} in its data; available: "
                            f"{', '.join(available)} (or 'all')")
    if len(langs) < 2:
        raise CardError(f"Task {card.name}: retrieval needs at least two languages, got {langs} "
                        f"(available: {', '.join(available)})")
    return langs


def aligned_texts(card: TaskCard, records: Sequence[dict], langs: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """``{lang: [(record id, text), ...]}`` for the records that have a text in that language."""
    out: dict = {lang: [] for lang in langs}
    for index, record in enumerate(records):
        record_id = str(record.get("id", index))
        for lang in langs:
            text = prompts.get_field(record, _text_path(card, lang))
            if isinstance(text, str) and text.strip():
                out[lang].append((record_id, text))
    return out


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------

def embed_texts(lm, card: TaskCard, texts: Sequence[str], batch_size: int = 8, progress: bool = False,
                description: str = "embed") -> tuple[np.ndarray, int]:
    """Mean-pooled encoder states [N, d_model] of ``texts`` (rendered with the card's template, tokenized as
    the model reads prompts, cut to ``truncate.max_tokens`` tokens + EOS); -> (vectors, how many were cut)."""
    from alexatm_jax.evaluation import runner

    encoder = runner.PromptEncoder(lm, card)
    limit = lm.config.max_position_embeddings
    max_tokens = int(card.truncate["max_tokens"]) if card.truncate else limit - 1
    max_tokens = min(max_tokens, limit - 1)
    rows, cut = [], 0
    for text in texts:
        prompt = prompts.render_prompt(card, [], {"text": text})
        ids = encoder.prompt_ids(prompt)
        if len(ids) > max_tokens + 1:
            ids, cut = ids[:max_tokens] + [lm.config.eos_token_id], cut + 1
        rows.append(ids)
    vectors = np.zeros((len(rows), lm.config.d_model), np.float64)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    with runner._progress(len(rows), description, progress) as bar:
        for batch in runner._batches(order, batch_size):
            ids, mask = runner._pad_batch([rows[i] for i in batch], lm.config.pad_token_id, limit)
            vectors[batch] = mean_pool(lm.encode(ids, mask), mask)
            bar.update(len(batch))
    return vectors, cut


def evaluate(lm, card: TaskCard, shots: Sequence[int] = (0,), *, data: Optional[str] = None,
             limit: Optional[int] = None, batch_size: int = 8, progress: bool = True,
             checkpoint: Optional[str] = None, langs: Optional[str] = None, **_unused) -> dict:
    """The runner's results dict for a retrieval card: one run (0 shots) with the accuracy of every ordered
    language pair (``matrix``, fractions with stderr and n), the mean over pairs as ``retrieval_accuracy``
    (0-100, like the runner's other scores) and per-language means as query and as target."""
    if any(int(k) != 0 for k in shots):
        raise CardError(f"Task {card.name} is a retrieval task: it has no shots; use --shots 0")
    if limit is not None and limit < 1:
        raise CardError(f"--limit must be >= 1, got {limit}")
    records, source = load_records(card, data, limit)
    langs = resolve_languages(card, records, langs)
    texts = aligned_texts(card, records, langs)
    centering = str(card.params.get("centering", "language"))
    if centering not in CENTERINGS:
        raise CardError(f"Task {card.name}: param centering={centering!r} must be one of {', '.join(CENTERINGS)}")
    vectors, truncated = {}, 0
    for lang in langs:
        ids = [record_id for record_id, _ in texts[lang]]
        embedded, cut = embed_texts(lm, card, [text for _, text in texts[lang]], batch_size, progress,
                                    f"{card.name} {lang}")
        if centering == "language":
            embedded = center(embedded)
        vectors[lang] = dict(zip(ids, embedded))
        truncated += cut
    try:
        min_pairs = max(2, int(card.params.get("min_pairs", 2)))
    except ValueError:
        raise CardError(f"Task {card.name}: param min_pairs={card.params['min_pairs']!r} is not an integer") from None
    matrix = pair_accuracies(vectors, langs, min_pairs)
    pairs = [estimate for row in matrix.values() for estimate in row.values()]
    if not pairs:
        raise CardError(f"Task {card.name}: no language pair of {langs} has {min_pairs} or more aligned records "
                        f"(param min_pairs)")
    mean = float(np.mean([e.value for e in pairs]))
    as_query = {src: float(np.mean([e.value for e in row.values()])) for src, row in matrix.items()}
    as_target: dict = {}
    for row in matrix.values():
        for tgt, estimate in row.items():
            as_target.setdefault(tgt, []).append(estimate.value)
    signature = f"{METRIC}|mean-pooled encoder|centering:{centering}|cosine|pairs:{len(pairs)}"
    run = {"shots": 0, "shot_ids": [], "num_examples": len(records), "empty_predictions": 0,
           "truncated_inputs": truncated, "languages": langs, "centering": centering,
           "texts_per_language": {lang: len(texts[lang]) for lang in langs},
           "scores": {METRIC: 100.0 * mean}, "signatures": {METRIC: signature},
           "metrics": {METRIC: {"name": METRIC, "score": 100.0 * mean, "signature": signature,
                                "pairs": len(pairs)}},
           "matrix": {src: {tgt: e.to_dict() for tgt, e in row.items()} for src, row in matrix.items()},
           "mean_as_query": as_query,
           "mean_as_target": {tgt: float(np.mean(values)) for tgt, values in as_target.items()}}
    return {
        "checkpoint": checkpoint if checkpoint is not None else getattr(lm, "path", None),
        "task": card.to_dict(),
        "data": source,
        "shots": [0],
        "seed": None,
        "limit": limit,
        "decoding": {},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "runs": [run],
    }


def markdown_table(results: dict) -> str:
    """The accuracy matrix (rows: query language, columns: the language searched), in %, with the means."""
    run = results["runs"][0]
    langs, matrix = run["languages"], run["matrix"]
    sizes = sorted({cell["n"] for row in matrix.values() for cell in row.values()})
    size_text = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    lines = [f"Task `{results['task']['name']}` on `{results['checkpoint']}` ({results['data']}): nearest-neighbour "
             f"translation retrieval with mean-pooled encoder states"
             f"{', centered per language' if run.get('centering') == 'language' else ''}, cosine similarity; "
             f"accuracy % of the row "
             f"language's texts whose nearest column-language text is their translation ({size_text} candidates "
             f"per pair, chance {100.0 / sizes[-1]:.1f}%{'' if len(sizes) == 1 else ' or more'}).", "",
             "| query \\ target | " + " | ".join(langs) + " | mean |", "|---|" + "---:|" * (len(langs) + 1)]
    for src in langs:
        cells = []
        for tgt in langs:
            cell = matrix.get(src, {}).get(tgt)
            cells.append("" if src == tgt else ("n/a" if cell is None else f"{100 * cell['value']:.1f}"))
        mean = run["mean_as_query"].get(src)
        lines.append(f"| {src} | " + " | ".join(cells) + f" | {'' if mean is None else f'{100 * mean:.1f}'} |")
    target_means = [run["mean_as_target"].get(tgt) for tgt in langs]
    lines.append("| mean | " + " | ".join("" if m is None else f"{100 * m:.1f}" for m in target_means)
                 + f" | **{run['scores'][METRIC]:.1f}** |")
    if run.get("truncated_inputs"):
        lines += ["", f"{run['truncated_inputs']} texts were cut to the card's truncate.max_tokens."]
    return "\n".join(lines)
