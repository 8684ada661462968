"""Measured statistics of objective examples (``show-data --stats`` and the statistical tests).

Works on examples as produced by the tasks in ``alexatm_jax.data.tasks`` (before feature conversion):
``inputs``/``targets`` end with EOS; ``objective``, ``lang``, ``num_spans`` are scalars.
"""

from __future__ import annotations

import collections
from typing import Dict, List, Mapping

import numpy as np

from alexatm_jax.data.preprocessors import OBJECTIVES
from alexatm_jax.data.bundled import LANGS


def objective_name(ex) -> str:
    return OBJECTIVES[int(ex["objective"])]


def lang_name(ex) -> str:
    return LANGS[int(ex["lang"])]


def take_examples(name: str, sequence_length: Mapping[str, int], num: int, *, split: str = "train",
                  seed: int = 0) -> List[Dict[str, np.ndarray]]:
    """``num`` examples of a registered mixture/task (shuffled, repeated, deterministic for ``seed``)."""
    import seqio

    from alexatm_jax.data import tasks  # noqa: F401

    try:
        provider = seqio.get_mixture_or_task(name)
    except ValueError:
        raise ValueError(f"no seqio task or mixture named {name!r}; registered mixtures: "
                         f"{', '.join(sorted(seqio.MixtureRegistry.names()))}") from None
    if split not in provider.splits:
        raise ValueError(f"{name} has no split {split!r}: it has {', '.join(provider.splits)}")
    ds = provider.get_dataset(dict(sequence_length), split=split, shuffle=True, seed=seed, num_epochs=None,
                              use_cached=False, try_in_mem_cache=False)
    return list(ds.take(num).as_numpy_iterator())


def measure(examples) -> dict:
    """Fraction of tokens dropped and mean dropped-span length over denoising examples; CLM prefix fraction
    (prefix / document piece) min/mean/max; objective and language rates; number of examples."""
    dropped = kept_total = spans = 0
    prefix_fracs = []
    objectives = collections.Counter()
    langs = collections.Counter()
    for ex in examples:
        obj = objective_name(ex)
        objectives[obj] += 1
        langs[lang_name(ex)] += 1
        n_in, n_tgt = len(ex["inputs"]) - 1, len(ex["targets"]) - 1  # without EOS
        if obj == "denoise":
            dropped += n_tgt - n_in
            kept_total += n_tgt
            spans += int(ex["num_spans"])
        elif obj in ("clm", "ul2_s"):
            prefix = n_in - 1  # without the [CLM]/[S2S] token
            prefix_fracs.append(prefix / (prefix + n_tgt))
    n = max(len(examples), 1)
    out = {
        "examples": len(examples),
        "objective_rates": {k: v / n for k, v in sorted(objectives.items())},
        "language_rates": {k: v / n for k, v in sorted(langs.items())},
    }
    if kept_total:
        out["denoise_dropped_fraction"] = dropped / kept_total
        out["denoise_mean_span_length"] = dropped / max(spans, 1)
    if prefix_fracs:
        out["clm_prefix_fraction"] = {"min": min(prefix_fracs), "mean": float(np.mean(prefix_fracs)),
                                      "max": max(prefix_fracs)}
    return out


def expected_rates(name: str) -> Dict[str, Dict[str, float]]:
    """The configured objective and language rates of a mixture (from seqio's rates)."""
    import seqio

    mixture = seqio.get_mixture_or_task(name)
    objectives, langs = collections.Counter(), collections.Counter()
    total = sum(mixture.get_rate(t) for t in mixture.tasks)
    from alexatm_jax.data import tasks

    for t in mixture.tasks:
        obj, lang = tasks._OBJ_LANG[t.name]
        objectives[obj] += mixture.get_rate(t) / total
        langs[lang] += mixture.get_rate(t) / total
    return {"objective_rates": dict(objectives), "language_rates": dict(langs)}
