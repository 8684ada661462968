"""Task cards, loaders for the benchmarks' own formats, and golden tests of AlexaTM's prompt formats."""

import os

import pytest
import yaml

from alexatm_jax.evaluation import cards, loaders, prompts, runner
from alexatm_jax.evaluation.cards import CardError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")


def _shots_and_query(card, data=None, k=1):
    pool, evaluation, _ = runner.load_examples(card, data)
    shots = [values for _, values in prompts.choose_shots(card, pool, k)]
    return shots, evaluation


def test_every_shipped_card_loads():
    names = cards.available_tasks()
    for expected in ("flores101_mt", "flores101_mt_harness", "xsum", "xsum_harness", "mlsum", "udhr_translation",
                     "debian_translation", "debian_summarization", "debian_language_id"):
        assert expected in names
    for name in names:
        card = cards.load_card(name)
        assert card.metrics and card.prompt["template"]


def test_flores_golden_prompt():
    card = cards.load_card("flores101_mt", {"src": "en", "tgt": "fr"})
    shots, evaluation = _shots_and_query(card, os.path.join(FIXTURES, "flores101_dataset"), k=2)
    prompt = prompts.render_prompt(card, shots, evaluation[0][1])
    assert prompt == (
        "[CLM] Sentence:  On Monday, scientists announced a new diagnostic tool.; Translation in French: "
        "Lundi, des scientifiques ont annoncé un nouvel outil de diagnostic.; "
        "Sentence:  The lead researchers say this may bring early detection of cancer.; Translation in French: "
        "Selon les chercheurs principaux, cela pourrait permettre de détecter le cancer plus tôt.; "
        "Sentence:  The weather was fine yesterday.; Translation in French:")
    assert evaluation[0][1]["target"] == "Il faisait beau hier."
    zero = prompts.render_prompt(card, [], evaluation[1][1])
    assert zero == "[CLM] Sentence:  Many people visited the museum.; Translation in French:"
    # Output post-processing: cut at the first ';', stripped.
    assert prompts.postprocess(card, " Il faisait beau hier.; Sentence:  x") == "Il faisait beau hier."


def test_xsum_golden_prompt_shot_filter_and_truncation():
    card = cards.load_card("xsum")
    pool, evaluation, source = runner.load_examples(card, os.path.join(FIXTURES, "xsum"))
    assert source.startswith("xsum:") and [r["id"] for r, _ in evaluation] == ["t1", "t2"]
    # The 200-word training document is never a shot (AlexaTM: shots under 192 words).
    shots = prompts.choose_shots(card, pool, 2)
    assert {r["id"] for r, _ in shots} == {"x1", "x3"}
    with pytest.raises(CardError, match="only 2 eligible"):
        prompts.choose_shots(card, pool, 3)
    first = [v for r, v in pool if r["id"] == "x1"]
    prompt = prompts.render_prompt(card, first, evaluation[0][1])
    assert prompt == (
        "[CLM] Article: The council approved the new budget on Tuesday. It includes more money for schools. "
        "==> Short summary: A council has approved a budget with more money for schools. <br><br><br> "
        "Article: A new bridge opened in the city. Thousands crossed it on the first day. The mayor gave a "
        "speech. ==> Short summary:")
    assert prompts.postprocess(card, " A bridge. <br><br><br> Article: x") == "A bridge."
    # Truncation keeps whole sentences within the budget (here: words as tokens).
    count = lambda text: len(text.split())  # noqa: E731
    cut = lambda text, n: " ".join(text.split()[:n])  # noqa: E731
    text = evaluation[0][1]["source"]
    assert prompts.truncate_at_sentence(text, 100, count, cut) == (text, False)
    assert prompts.truncate_at_sentence(text, 14, count, cut) == (
        "A new bridge opened in the city. Thousands crossed it on the first day.", True)
    assert prompts.truncate_at_sentence(text, 4, count, cut) == ("A new bridge opened", True)


def test_seeded_random_shots_are_reproducible():
    card = cards.load_card("debian_summarization", {"lang": "fr"})
    card.shots["selection"] = "random"
    pool, _, _ = runner.load_examples(card)
    a = [r["id"] for r, _ in prompts.choose_shots(card, pool, 3, seed=1)]
    b = [r["id"] for r, _ in prompts.choose_shots(card, pool, 3, seed=1)]
    c = [r["id"] for r, _ in prompts.choose_shots(card, pool, 3, seed=2)]
    assert a == b and a != c
    assert all(r["lang"] == "fr" for r, _ in pool)


def test_mlsum_loader_and_card():
    records = loaders.load_records("mlsum", os.path.join(FIXTURES, "mlsum"))
    assert {(r["lang"], r["split"]) for r in records} == {("de", "train"), ("de", "test"), ("es", "train"),
                                                          ("es", "validation"), ("es", "test")}
    card = cards.load_card("mlsum", {"lang": "es"})
    pool, evaluation, _ = runner.load_examples(card, os.path.join(FIXTURES, "mlsum"))
    assert [v["target"] for _, v in evaluation] == ["Abre un nuevo puente."]
    assert [v["source"] for _, v in pool] == ["El ayuntamiento aprobó el presupuesto. Incluye más dinero para "
                                              "escuelas."]


def test_flores_loader_layouts(tmp_path):
    records = loaders.load_records("flores101", os.path.join(FIXTURES, "flores101_dataset"))
    assert len(records) == 5 and records[0]["texts"].keys() == {"en", "fr", "de"}
    assert [r["split"] for r in records] == ["dev"] * 2 + ["devtest"] * 3
    # Flores-200 file names (eng_Latn) are understood too.
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "eng_Latn.dev").write_text("a\nb\n")
    (tmp_path / "dev" / "jpn_Jpan.dev").write_text("あ\nい\n")
    records = loaders.load_records("flores101", str(tmp_path))
    assert records[1]["texts"] == {"en": "b", "ja": "い"}
    (tmp_path / "dev" / "fra.dev").write_text("x\n")
    with pytest.raises(ValueError, match="not aligned"):
        loaders.load_records("flores101", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No Flores data"):
        loaders.load_records("flores101", str(tmp_path / "dev"))


def test_bundled_offline_cards_cover_their_languages():
    for lang in ("ar", "hi", "ja", "mr", "ta", "te"):
        card = cards.load_card("udhr_translation", {"src": "en", "tgt": lang})
        pool, evaluation, _ = runner.load_examples(card)
        assert len(pool) == 20 and len(evaluation) == 24
    for tgt in ("it", "fr", "de", "ja", "ru", "es", "pt"):
        for params in ({"src": "en", "tgt": tgt}, {"src": tgt, "tgt": "en"}):
            pool, evaluation, _ = runner.load_examples(cards.load_card("debian_translation", params))
            assert pool and evaluation
    for lang in ("de", "en", "es", "fr", "it", "ja", "pt", "ru"):
        pool, evaluation, _ = runner.load_examples(cards.load_card("debian_summarization", {"lang": lang}))
        assert len(pool) == 30 and len(evaluation) == 150


def test_user_jsonl_without_splits_takes_shots_from_card_source():
    card = cards.load_card("udhr_translation", {"src": "en", "tgt": "fr"})
    pool, evaluation, source = runner.load_examples(card, os.path.join(FIXTURES, "user_translation.jsonl"))
    assert source.startswith("jsonl:")
    assert [v["target"] for _, v in evaluation] == ["Bonjour.", "Merci beaucoup.", "À demain."]
    assert len(pool) == 20  # UDHR dev sentences


def test_card_errors_are_clear(tmp_path):
    with pytest.raises(CardError, match="Unknown task 'nope'.*udhr_translation"):
        cards.load_card("nope")
    with pytest.raises(CardError, match="no param"):
        cards.load_card("udhr_translation", {"language": "fr"})
    bad = {"name": "bad", "prompt": {"template": "Q: {question}"}, "data": {"fields": {"target": "answer"}},
           "metrics": ["bleu"]}
    with pytest.raises(CardError, match=r"uses \['question'\]"):
        cards.card_from_dict(bad)
    with pytest.raises(CardError, match="unknown top-level"):
        cards.card_from_dict({"name": "x", "promt": {}})
    with pytest.raises(CardError, match="not one of"):
        cards.card_from_dict({**bad, "prompt": {"template": "{target}"}, "metrics": ["meteor"]})
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**bad, "prompt": {"template": "Q: {source}"},
                                    "data": {"fields": {"source": "q", "target": "a"}}}))
    assert cards.load_card(str(path)).name == "bad"
    # A record without the card's field: a clear error naming the record and the field.
    card = cards.load_card("udhr_translation", {"src": "en", "tgt": "fr"})
    with pytest.raises(CardError, match=r"record 'r1' has no field 'texts.fr'"):
        prompts.example_values(card, {"id": "r1", "texts": {"en": "x"}})
    with pytest.raises(ValueError, match="no location"):
        runner.load_examples(cards.load_card("xsum"))
