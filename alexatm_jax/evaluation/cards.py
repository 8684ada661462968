"""Task cards: declarative YAML descriptions of a few-shot evaluation (see ``tasks/*.yaml``).

A card names its data (format, location, splits, which record fields fill the prompt), the prompt format
(template, target prefix, example separator, CLM or denoising mode), how shots are chosen, how long
documents are truncated, how outputs are post-processed, the decoding settings and the metrics. ``params``
are the card's knobs (e.g. source and target language); ``{name}`` placeholders in field paths, filters and
templates are filled from them, and ``{<param>_name}`` gives a language code's English name.

Cards are looked up by name in the repository's ``tasks/`` folder, or read from a path to a YAML file.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import string
from pathlib import Path
from typing import Any, Optional

import yaml

from alexatm_jax.evaluation import loaders
from alexatm_jax.evaluation import metrics as metric_lib



def _tasks_dir() -> Path:
    """The task cards: installed inside the package (``alexatm_jax/task_cards``, see setup.py), or the
    repository's ``tasks/`` folder in a source checkout / editable install."""
    installed = Path(__file__).resolve().parents[1] / "task_cards"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "tasks"


TASKS_DIR = _tasks_dir()

LANGUAGE_NAMES = {
    "ar": "Arabic", "en": "English", "fr": "French", "de": "German", "hi": "Hindi", "it": "Italian",
    "ja": "Japanese", "mr": "Marathi", "pt": "Portuguese", "es": "Spanish", "ta": "Tamil", "te": "Telugu",
    "ru": "Russian",
}

KINDS = ("generate", "rank_classification", "retrieval")
MODES = ("clm", "denoising")
SELECTIONS = ("first", "random")

_DEFAULTS: dict[str, Any] = {
    "description": "",
    "kind": "generate",
    "params": {},
    "data": {"format": "bundled", "path": None, "eval_split": "test", "shot_split": "dev", "fields": {},
             "filter": {}, "skip_missing": False},
    "prompt": {"mode": "clm", "clm_token": "[CLM]", "template": None, "target_prefix": " ",
               "example_separator": "\n"},
    "shots": {"selection": "first", "seed": 0, "max_words": None, "max_words_field": "source"},
    "truncate": None,
    "postprocess": {"cut_at": None, "strip": True},
    "decoding": {"max_new_tokens": 64, "num_beams": 1},
    "choices": None,
    "metrics": [],
}
_DECODING_KEYS = {"max_new_tokens", "num_beams", "length_penalty", "do_sample", "temperature", "top_k", "top_p",
                  "seed"}


class CardError(ValueError):
    """A task card that cannot work: the message names the field and the fix."""


@dataclasses.dataclass
class TaskCard:
    name: str
    description: str
    kind: str
    params: dict
    data: dict
    prompt: dict
    shots: dict
    truncate: Optional[dict]
    postprocess: dict
    decoding: dict
    choices: Optional[dict]
    metrics: list
    path: Optional[str] = None

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    # -- placeholder filling -------------------------------------------------------------------------------
    def values(self) -> dict:
        """The params plus ``<param>_name`` for every param that is a known language code."""
        out = dict(self.params)
        for key, value in self.params.items():
            if isinstance(value, str) and value in LANGUAGE_NAMES:
                out[f"{key}_name"] = LANGUAGE_NAMES[value]
        return out

    def fill(self, text: str) -> str:
        try:
            return text.format_map(self.values())
        except KeyError as error:
            raise CardError(f"Task {self.name}: {text!r} uses {{{error.args[0]}}}, which is not a param; "
                            f"params are {sorted(self.params)}") from None

    def field_paths(self) -> dict[str, str]:
        return {name: self.fill(path) for name, path in self.data["fields"].items()}

    @property
    def cut_at(self) -> list[str]:
        cut = self.postprocess.get("cut_at")
        if cut is None:
            separator = self.prompt["example_separator"].strip()
            return [separator] if separator else []
        return [cut] if isinstance(cut, str) else list(cut)


def _merge(defaults: dict, given: dict, where: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise CardError(f"Unknown key(s) {unknown} in {where}; known keys: {sorted(defaults)}")
    merged = copy.deepcopy(defaults)
    merged.update(given)
    return merged


def card_from_dict(raw: dict, path: Optional[str] = None, params: Optional[dict] = None) -> TaskCard:
    """Validates a card (a dict as read from YAML) and applies ``params`` overrides."""
    if not isinstance(raw, dict) or "name" not in raw:
        raise CardError(f"A task card must be a YAML mapping with a 'name' ({path or 'given dict'})")
    name = raw["name"]
    unknown = sorted(set(raw) - set(_DEFAULTS) - {"name"})
    if unknown:
        raise CardError(f"Task {name}: unknown top-level key(s) {unknown}; known: {sorted(_DEFAULTS)}")
    values = {}
    for key, default in _DEFAULTS.items():
        given = raw.get(key)
        if isinstance(default, dict) and key not in ("params",):
            values[key] = _merge(default, given or {}, f"task {name} '{key}'")
        else:
            values[key] = copy.deepcopy(default if given is None else given)
    if params:
        unknown_params = sorted(set(params) - set(values["params"]))
        if unknown_params:
            raise CardError(f"Task {name} has no param(s) {unknown_params}; its params are "
                            f"{sorted(values['params'])} (set with --param KEY=VALUE)")
        values["params"].update(params)
    card = TaskCard(name=name, path=path, **values)
    _validate(card)
    return card


def _validate(card: TaskCard):
    problems = []
    if card.kind not in KINDS:
        problems.append(f"kind={card.kind!r} is not one of {KINDS}")
    if card.prompt["mode"] not in MODES:
        problems.append(f"prompt.mode={card.prompt['mode']!r} is not one of {MODES}")
    if not card.prompt["template"]:
        problems.append("prompt.template is missing")
    if card.data["format"] not in loaders.FORMATS:
        problems.append(f"data.format={card.data['format']!r} is not one of {loaders.FORMATS}")
    fields = card.data["fields"]
    # retrieval: ``text`` is a field path with a ``{lang}`` placeholder (e.g. ``texts.{lang}``), filled with
    # each language in turn (see ``evaluation.retrieval``).
    needed = {"generate": ("target",), "rank_classification": ("label",), "retrieval": ("text",)}.get(card.kind, ())
    for field in needed:
        if field not in fields:
            problems.append(f"data.fields.{field} is missing (which record value is the {field})")
    if card.shots["selection"] not in SELECTIONS:
        problems.append(f"shots.selection={card.shots['selection']!r} is not one of {SELECTIONS}")
    unknown_decoding = sorted(set(card.decoding) - _DECODING_KEYS)
    if unknown_decoding:
        problems.append(f"decoding has unknown key(s) {unknown_decoding}; known: {sorted(_DECODING_KEYS)}")
    if card.kind == "rank_classification":
        if not isinstance(card.choices, dict) or not card.choices:
            problems.append("rank_classification needs 'choices': a mapping label value -> choice text")
    elif card.kind == "retrieval":
        if "{lang}" not in fields.get("text", "{lang}"):
            problems.append("retrieval needs data.fields.text with a {lang} placeholder, e.g. texts.{lang}")
        if any(metric != "accuracy" for metric in card.metrics):
            problems.append(f"retrieval scores nearest-neighbour accuracy only; metrics {card.metrics} must be "
                            f"[accuracy] or left out")
    else:
        for metric in card.metrics:
            if metric not in metric_lib.METRIC_NAMES or metric == "accuracy":
                problems.append(f"metric {metric!r} is not one of {metric_lib.METRIC_NAMES[:-1]}")
    if card.truncate is not None:
        if not {"field", "max_tokens"} <= set(card.truncate):
            problems.append("truncate needs 'field' and 'max_tokens'")
        elif card.truncate["field"] not in fields:
            problems.append(f"truncate.field={card.truncate['field']!r} is not one of data.fields {sorted(fields)}")
    # Every placeholder of the template must be a field or a param.
    known = set(fields) | set(card.values())
    try:
        placeholders = {p for _, p, _, _ in string.Formatter().parse(card.prompt["template"] or "") if p}
    except ValueError as error:
        placeholders = set()
        problems.append(f"prompt.template is not a valid format string ({error})")
    missing = sorted(placeholders - known)
    if missing:
        problems.append(f"prompt.template uses {missing}, which are neither data.fields nor params "
                        f"(fields {sorted(fields)}, params {sorted(card.values())})")
    if problems:
        raise CardError(f"Task card {card.name} ({card.path or 'inline'}): " + "; ".join(problems))


def available_tasks(tasks_dir: Path = TASKS_DIR) -> list[str]:
    return sorted(p.stem for p in tasks_dir.glob("*.yaml")) if tasks_dir.is_dir() else []


def load_card(name_or_path: str, params: Optional[dict] = None, tasks_dir: Path = TASKS_DIR) -> TaskCard:
    """A card by name (``tasks/<name>.yaml``) or by path to a YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = tasks_dir / f"{name_or_path}.yaml"
    if not path.exists():
        raise CardError(f"Unknown task {name_or_path!r}: no {path}. Available tasks: "
                        f"{', '.join(available_tasks(tasks_dir)) or '(none)'}; or give a path to a .yaml card.")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as error:
            raise CardError(f"{path} is not valid YAML: {error}") from None
    return card_from_dict(raw, str(path), params)


def parse_params(pairs: Optional[list[str]]) -> dict:
    """['src=de', 'tgt=ja,lang=fr'] -> {'src': 'de', 'tgt': 'ja', 'lang': 'fr'}."""
    out = {}
    for pair in pairs or []:
        for item in filter(None, (p.strip() for p in pair.split(","))):
            if "=" not in item:
                raise CardError(f"--param {item!r} is not KEY=VALUE")
            key, value = item.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def expand_path(value: Optional[str]) -> Optional[str]:
    """A card's ``data.path`` may use ``~`` and environment variables (``$FLORES101_DIR``)."""
    return None if value is None else os.path.expanduser(os.path.expandvars(value))
