"""One task card, every language: per-language scores with standard errors next to the majority-class baseline.

``alexatm-jax eval --checkpoint DIR --task debian_section --langs all --shots 0`` runs the card once per
language (setting its language param, ``lang`` or ``locale``, in turn) with ``runner.evaluate`` and prints::

    | language | shots | examples | accuracy % | majority baseline % |
    | en       | 0     | 200      | 61.5 ± 3.4 | 24.0 ± 3.0          |

* Classifier cards (``kind: rank_classification``) are scored by **rank classification**, not free
  generation: every label of the card's ``choices`` is scored as the target after the prompt by its
  log-likelihood under teacher forcing and the best one is the prediction, so predictions are always labels.
  Accuracy comes with the standard error sqrt(p(1-p)/n) of a proportion (``nlu_metrics.accuracy_with_stderr``).
* The **majority baseline** predicts, for every test example of every language, the most frequent label of
  the data's ``train`` split (for ``debian_section``: the English fine-tuning data), scored on that language's
  gold labels. Without a train split (a user's file) the language's shot split stands in, and the table says so.
* Generation cards (``kind: generate``) get their own metrics per language (with standard errors where the
  metric gives one, e.g. MASSIVE's); no baseline.
* Retrieval cards (``kind: retrieval``) take the languages as their ``langs`` param and print their matrix.

``all`` is every language of the card's data: the values of the record field its filter binds to the language
param (``filter: {lang: "{lang}"}``) among the evaluation split, or the locale files of a MASSIVE folder.
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Optional, Sequence

from alexatm_jax.evaluation import cards, loaders, nlu_metrics, prompts, runner
from alexatm_jax.evaluation.cards import CardError, TaskCard

LANGUAGE_PARAMS = ("lang", "locale")
TRAIN_SPLIT = "train"
# Listed in this order (then alphabetically): the fine-tuning language first.
LANGUAGE_ORDER = ("en", "it", "fr", "de", "ja", "ru", "es", "pt", "ar", "hi", "mr", "ta", "te")


# ----------------------------------------------------------------------------------------------------------
# Which languages
# ----------------------------------------------------------------------------------------------------------

def language_param(card: TaskCard) -> str:
    """The card's language param (``lang`` or ``locale``); a CardError names the card's params otherwise."""
    for name in LANGUAGE_PARAMS:
        if name in card.params:
            return name
    raise CardError(f"Task {card.name} has no language param ({' or '.join(LANGUAGE_PARAMS)}; its params are "
                    f"{sorted(card.params) or 'none'}), so --langs cannot run it per language. Use --param to "
                    f"pick what the card varies.")


def _ordered(langs) -> list[str]:
    rank = {lang: i for i, lang in enumerate(LANGUAGE_ORDER)}
    return sorted(set(langs), key=lambda lang: (rank.get(lang, len(rank)), lang))


def _location(card: TaskCard, data: Optional[str]) -> tuple[str, Optional[str]]:
    data_format = card.data["format"]
    location = card.data["path"] if data_format == "bundled" else cards.expand_path(card.data["path"])
    if data is not None:
        location, data_format = data, ("jsonl" if data_format == "bundled" else data_format)
    return data_format, location


def _massive_locales(location: Optional[str]) -> list[str]:
    from alexatm_jax.evaluation import massive

    if location is None:
        massive.load(None)  # its message: MASSIVE cannot be downloaded, pass --data DIR
    if os.path.isfile(location):
        return sorted({r["locale"] for r in massive.read_file(location)})
    found = set()
    for sub in massive._DATA_SUBDIRS:
        folder = os.path.join(location, sub)
        if os.path.isdir(folder):
            found.update(massive._locale_files(folder))
    return sorted(found)


def available_languages(card: TaskCard, data: Optional[str] = None) -> list[str]:
    """Every language of the card's data (see the module docstring)."""
    param = language_param(card)
    data_format, location = _location(card, data)
    if data_format == "massive":
        return _massive_locales(location)
    bound = [path for path, wanted in card.data["filter"].items() if str(wanted) == "{" + param + "}"]
    if not bound:
        raise CardError(f"Task {card.name}: its filter does not select records by {{{param}}}, so 'all' "
                        f"languages cannot be read from the data; list them: --langs en,de,...")
    records = loaders.load_records(data_format, location, card.params)
    has_splits = all("split" in r for r in records)
    values = set()
    for record in records:
        if has_splits and record.get("split") != card.data["eval_split"]:
            continue
        value = prompts.get_field(record, bound[0])
        if isinstance(value, str) and value:
            values.add(value)
    return _ordered(values)


def resolve_languages(card: TaskCard, spec: str, data: Optional[str] = None) -> list[str]:
    """``all`` or ``en,de,ja`` -> the list (checked against the data when the card can say what it has)."""
    spec = (spec or "").strip()
    if card.kind == "retrieval":
        from alexatm_jax.evaluation import retrieval

        records, _ = retrieval.load_records(card, data)
        return retrieval.resolve_languages(card, records, spec)
    language_param(card)
    wanted = [lang.strip() for lang in spec.split(",") if lang.strip()]
    if not wanted:
        raise CardError("--langs is empty: give 'all' or a comma-separated list such as en,de,ja")
    if wanted == ["all"]:
        langs = available_languages(card, data)
        if not langs:
            raise CardError(f"Task {card.name}: no languages found in its data ({_location(card, data)[1]})")
        return langs
    try:
        available = available_languages(card, data)
    except CardError:
        return list(dict.fromkeys(wanted))  # cannot tell: each language's run reports missing data itself
    unknown = [lang for lang in wanted if lang not in available]
    if unknown:
        raise CardError(f"Task {card.name}: no evaluation data in language(s) {unknown}; its data has "
                        f"{', '.join(available)} (or --langs all)")
    return list(dict.fromkeys(wanted))


def card_for_language(card: TaskCard, lang: str) -> TaskCard:
    """A copy of ``card`` with its language param set to ``lang`` (other settings, e.g. decoding, kept)."""
    raw = card.to_dict()
    path = raw.pop("path")
    raw["params"] = dict(raw["params"], **{language_param(card): lang})
    return cards.card_from_dict(raw, path)


# ----------------------------------------------------------------------------------------------------------
# The majority baseline
# ----------------------------------------------------------------------------------------------------------

def _label_texts(card: TaskCard, records: Sequence[dict]) -> list[str]:
    path = card.field_paths()["label"]
    labels = []
    for record in records:
        value = prompts.get_field(record, path)
        if value is prompts._MISSING or value is None:
            continue  # e.g. debtags records without a single role (the card skips them too)
        labels.append(runner._choice_text(card, value if isinstance(value, str) else str(value)))
    return labels


def majority_source(card: TaskCard, data: Optional[str] = None) -> tuple[list[str], str]:
    """The labels the majority class is taken from (as choice texts) and where they come from: the data's
    train split, all of it whatever its language (the fine-tuning data: English for Debian sections; one
    locale's file for MASSIVE), else this language's shot split."""
    data_format, location = _location(card, data)
    records = loaders.load_records(data_format, location, card.params)
    train = [r for r in records if r.get("split") == TRAIN_SPLIT]
    if train:
        langs = sorted({str(r["lang"]) for r in train if isinstance(r.get("lang"), str)})
        return _label_texts(card, train), f"{TRAIN_SPLIT} split" + (f" ({', '.join(langs)})" if langs else "")
    pool, _ = prompts.split_records(card, records)
    return [runner._choice_text(card, values["label"]) for _, values in pool], \
        f"{card.data['shot_split']} split (the data has no {TRAIN_SPLIT} split)"


# ----------------------------------------------------------------------------------------------------------
# Running and reporting
# ----------------------------------------------------------------------------------------------------------

def classifier_description(card: TaskCard) -> str:
    if card.kind == "rank_classification":
        return (f"rank classification over the card's {len(card.choices)} labels: each label is scored by its "
                f"log-likelihood as the target after the prompt and the highest is the prediction (no free "
                f"generation, so every prediction is a label)")
    if card.kind == "retrieval":
        return "nearest-neighbour retrieval of mean-pooled encoder states"
    decoding = card.decoding
    return (f"free generation ({'beam search, ' + str(decoding.get('num_beams')) + ' beams' if int(decoding.get('num_beams', 1)) > 1 else 'greedy'}, "
            f"up to {decoding.get('max_new_tokens')} tokens), post-processed and scored by the card's metrics")


def _row(card: TaskCard, lang: str, run: dict, majority: Optional[tuple]) -> dict:
    row = {"lang": lang, "shots": run["shots"], "n": run["num_examples"], "metrics": {}, "baseline": None}
    if card.kind == "rank_classification":
        predictions = [e["prediction"] for e in run["examples"]]
        references = [e["reference"] for e in run["examples"]]
        row["metrics"]["accuracy"] = nlu_metrics.accuracy_with_stderr(predictions, references).to_dict()
        if majority is not None:
            label, _ = majority
            estimate = nlu_metrics.accuracy_with_stderr([label] * len(references), references)
            row["baseline"] = dict(estimate.to_dict(), label=label)
    else:
        for name, metric in run["metrics"].items():
            stderr = metric.get("stderr")
            row["metrics"][name] = {"value": metric["score"] / 100.0,
                                    "stderr": None if stderr is None else stderr / 100.0,
                                    "n": metric.get("n", run["num_examples"])}
    return row


def evaluate_languages(lm, card: TaskCard, shots: Sequence[int], *, langs: Sequence[str],
                       data: Optional[str] = None, progress: bool = True, checkpoint: Optional[str] = None,
                       **evaluate_kwargs) -> dict:
    """Runs ``card`` in every language of ``langs`` (``runner.evaluate``'s keyword arguments pass through)
    -> a results dict: one row per (language, shot count) with the scores, their standard errors, the
    majority baseline and n; ``per_language`` holds each language's full runner results."""
    if card.kind == "retrieval":
        card = cards.card_from_dict({k: v for k, v in card.to_dict().items() if k != "path"}, card.path,
                                    {"langs": ",".join(langs)})
        return runner.evaluate(lm, card, shots, data=data, progress=progress, checkpoint=checkpoint,
                               **evaluate_kwargs)
    param = language_param(card)
    rows, per_language, baseline = [], {}, None
    for lang in langs:
        lang_card = card_for_language(card, lang)
        if progress:
            print(f"{card.name} {param}={lang}", flush=True)
        results = runner.evaluate(lm, lang_card, shots, data=data, progress=progress, checkpoint=checkpoint,
                                  **evaluate_kwargs)
        majority = None
        if card.kind == "rank_classification":
            labels, source = majority_source(lang_card, data)
            if labels:
                label, _ = nlu_metrics.majority_baseline(labels)
                majority = (label, source)
                baseline = baseline or {}
                baseline.setdefault("by_language", {})[lang] = {"label": label, "source": source,
                                                                "num_labels": len(labels)}
        for run in results["runs"]:
            rows.append(_row(card, lang, run, majority))
        per_language[lang] = results
    if baseline:
        distinct = {(b["label"], b["source"]) for b in baseline["by_language"].values()}
        if len(distinct) == 1:
            first = next(iter(baseline["by_language"].values()))
            baseline.update(label=first["label"], source=first["source"], num_labels=first["num_labels"])
    return {
        "kind": "languages",
        "checkpoint": checkpoint if checkpoint is not None else getattr(lm, "path", None),
        "task": card.to_dict(),
        "language_param": param,
        "languages": list(langs),
        "shots": [int(k) for k in shots],
        "classifier": classifier_description(card),
        "baseline": baseline,
        "rows": rows,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "per_language": per_language,
    }


def _cell(estimate: Optional[dict]) -> str:
    if not estimate:
        return "—"
    text = f"{100 * estimate['value']:.1f}"
    return text if estimate.get("stderr") is None else f"{text} ± {100 * estimate['stderr']:.1f}"


def markdown_table(results: dict) -> str:
    """The per-language table (a retrieval card's results: its matrix)."""
    if results.get("kind") != "languages":
        return runner.markdown_table(results)
    names = []
    for row in results["rows"]:
        names += [n for n in row["metrics"] if n not in names]
    has_baseline = any(row["baseline"] for row in results["rows"])
    baseline = results.get("baseline") or {}
    header = (f"Task `{results['task']['name']}` on `{results['checkpoint']}`, {len(results['languages'])} "
              f"languages ({results['language_param']}), {', '.join(map(str, results['shots']))} shot(s). "
              f"Classifier: {results['classifier']}.")
    if has_baseline:
        if baseline.get("label") is not None:
            header += (f" Majority baseline: always `{baseline['label']}`, the most frequent label of the "
                       f"{baseline['source']} ({baseline['num_labels']} examples).")
        else:
            header += " Majority baseline: the most frequent training label of each language (see results.json)."
    header += " ± is the standard error sqrt(p(1-p)/n); scores in %."
    columns = [f"{n} %" for n in names] + (["majority baseline %"] if has_baseline else [])
    lines = [header, "", "| language | shots | examples | " + " | ".join(columns) + " |",
             "|---|---:|---:|" + "---:|" * len(columns)]
    for row in results["rows"]:
        cells = [_cell(row["metrics"].get(n)) for n in names] + ([_cell(row["baseline"])] if has_baseline else [])
        lines.append(f"| {row['lang']} | {row['shots']} | {row['n']} | " + " | ".join(cells) + " |")
    for shots in results["shots"]:
        rows = [r for r in results["rows"] if r["shots"] == shots]
        if len(rows) < 2:
            continue
        cells = []
        for n in names:
            values = [r["metrics"][n]["value"] for r in rows if n in r["metrics"]]
            cells.append(f"{100 * sum(values) / len(values):.1f}" if values else "—")
        if has_baseline:
            values = [r["baseline"]["value"] for r in rows if r["baseline"]]
            cells.append(f"{100 * sum(values) / len(values):.1f}" if values else "—")
        lines.append(f"| mean of {len(rows)} | {shots} | {sum(r['n'] for r in rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: dict, output_dir: str) -> str:
    """``output_dir/results.json`` (local or remote), as ``runner.write_results``."""
    return runner.write_results(results, output_dir)
