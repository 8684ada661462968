"""Debian section classification: the seqio fine-tuning tasks (tokens decoded back to the bundled text), the task
cards (prompt, choices, rank classification through the runner), users' JSON lines and their errors."""

import json
import types
import unicodedata

import numpy as np
import pytest
import seqio
import sentencepiece as spm

from alexatm_jax.data import bundled, debian_labels, nlu_tasks, tasks  # noqa: F401  (tasks registers everything)
from alexatm_jax.data import vocab as vocab_lib
from alexatm_jax.data.pipeline import make_batch_iterator
from alexatm_jax.evaluation import cards, prompts, runner

LANGS = ("en", "it", "fr", "de", "ja", "ru", "es", "pt")
USER_LINES = [
    {"lang": "fr", "summary": "bibliothèque de compression", "description": "Cette bibliothèque compresse des données.",
     "section": "libs", "tags": ["role::shared-lib", "use::compressing"]},
    {"lang": "fr", "summary": "éditeur de texte", "description": "Un éditeur de texte pour la console.",
     "section": "utils"},
    {"lang": "de", "summary": "Kompressionsbibliothek", "description": "Diese Bibliothek komprimiert Daten.",
     "section": "libs", "tags": []},
]


@pytest.fixture(scope="module")
def vocabulary():
    return vocab_lib.get_vocabulary()


@pytest.fixture(scope="module")
def records():
    return debian_labels.bundled_records()


def _write(path, lines):
    path.write_text("".join((json.dumps(x, ensure_ascii=False) if not isinstance(x, str) else x) + "\n"
                            for x in lines), encoding="utf-8")
    return str(path)


def _normalized(text):
    """What SentencePiece (nmt_nfkc normalisation) gives back for ``text``: NFKC, whitespace runs as one space."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _examples(task_name, split, lengths=None):
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(lengths or {"inputs": 4096, "targets": 16}, split=split, shuffle=False,
                          use_cached=False, try_in_mem_cache=False)
    return list(ds.as_numpy_iterator())


# ----------------------------------------------------------------------------------------------------------
# seqio tasks
# ----------------------------------------------------------------------------------------------------------

def test_task_inputs_and_targets_are_the_bundled_text_and_section(vocabulary, records):
    dev = [r for r in records if r["split"] == "dev" and r["lang"] == "en"]
    examples = _examples("debian_section", "validation")
    assert [e["id"].decode() for e in examples] == [r["id"] for r in dev]
    eos = vocabulary.eos_id
    sp = spm.SentencePieceProcessor(model_file=bundled.bundled_spm_path())
    for example, record in zip(examples, dev):
        text = f"Summary: {record['summary']}\nDescription: {record['description']}\nSection:"
        assert example["inputs"][-1] == eos and example["targets"][-1] == eos
        assert vocabulary.decode(example["inputs"][:-1].tolist()) == _normalized(text)
        assert vocabulary.decode(example["targets"][:-1].tolist()) == record["section"]
        # The same ids as tokenizing the text with the SentencePiece model directly.
        assert example["inputs"][:-1].tolist() == sp.encode(text)


def test_splits_and_per_language_tasks(records):
    task = seqio.get_mixture_or_task("debian_section")
    assert set(task.splits) == {"train", "validation", "test"}
    assert task.source.num_input_examples("train") == sum(r["split"] == "train" for r in records)
    en_test = [e["id"].decode().split("/")[0] for e in _examples("debian_section_en", "test")]
    assert len(en_test) == 200
    for lang in LANGS:
        per_lang = seqio.get_mixture_or_task(f"debian_section_{lang}")
        assert set(per_lang.splits) == {"validation", "test"}
        assert per_lang.source.num_input_examples("validation") == 50
    ja = _examples("debian_section_ja", "test")
    # The same descriptions, in order, in Japanese; targets (sections) identical.
    assert [e["id"].decode() for e in ja] == [f"{md5}/ja" for md5 in en_test]
    assert [e["targets"].tolist() for e in ja] == [e["targets"].tolist() for e in _examples("debian_section_en", "test")]


def test_long_inputs_keep_the_answer_cue(vocabulary):
    cue = vocabulary.encode(debian_labels.ANSWER_CUE)
    full = _examples("debian_section", "validation")
    short = _examples("debian_section", "validation", {"inputs": 32, "targets": 8})
    cut = 0
    for long_ex, ex in zip(full, short):
        assert len(ex["inputs"]) <= 32 and ex["inputs"][-1] == vocabulary.eos_id
        assert ex["inputs"][-1 - len(cue):-1].tolist() == cue
        if len(long_ex["inputs"]) > 32:
            cut += 1
            assert ex["inputs"][:31 - len(cue)].tolist() == long_ex["inputs"][:31 - len(cue)].tolist()
        else:
            assert ex["inputs"].tolist() == long_ex["inputs"].tolist()
    assert cut > 10


def test_training_batches_come_from_the_task():
    """What `alexatm-jax train --gin.MIXTURE_OR_TASK_NAME="'debian_section'"` reads; processes get disjoint data."""
    batch = next(make_batch_iterator("debian_section", {"inputs": 64, "targets": 8}, batch_size=4, pack=False))
    assert batch["encoder_input_tokens"].shape == (4, 64) and batch["decoder_target_tokens"].shape == (4, 8)
    assert (batch["decoder_loss_weights"].sum(axis=1) >= 2).all()  # a section and EOS in every row
    shards = [nlu_tasks.InMemoryExamplesSource(lambda split: [dict(id=str(i), lang="en", inputs="x", targets="y")
                                                             for i in range(10)], ("train",), "t")
              .get_dataset("train", shuffle=True, seed=1, shard_info=seqio.ShardInfo(i, 2)) for i in range(2)]
    ids = [{x["id"] for x in ds.as_numpy_iterator()} for ds in shards]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 10


def test_user_jsonl_task(tmp_path, vocabulary):
    path = _write(tmp_path / "user.jsonl", USER_LINES)
    task = nlu_tasks.register_debian_section_task("test_user_sections", path, lang="fr")
    assert task.splits == ("train",)
    examples = _examples("test_user_sections", "train")
    assert [vocabulary.decode(e["targets"][:-1].tolist()) for e in examples] == ["libs", "utils"]
    assert vocabulary.decode(examples[1]["inputs"][:-1].tolist()) == _normalized(
        "Summary: éditeur de texte\nDescription: Un éditeur de texte pour la console.\nSection:")
    dev = _write(tmp_path / "dev.jsonl", [dict(USER_LINES[1], split="dev")])
    nlu_tasks.register_debian_section_task("test_user_sections", {"train": path, "validation": dev})
    task = seqio.get_mixture_or_task("test_user_sections")
    assert task.source.num_input_examples("train") == 3 and task.source.num_input_examples("validation") == 1


def test_bad_user_jsonl_names_file_and_line(tmp_path):
    missing = dict(USER_LINES[1])
    del missing["section"]
    path = _write(tmp_path / "bad.jsonl", [USER_LINES[0], missing, USER_LINES[2]])
    expected = f"{path}:2: the record has no 'section' field"
    with pytest.raises(ValueError, match=expected):
        nlu_tasks.register_debian_section_task("test_bad", path)
    card = cards.load_card("debian_section", {"lang": "fr"})
    with pytest.raises(ValueError, match=expected):
        runner.load_examples(card, path)
    for line, message in (("{not json", "bad2.jsonl:1 is not valid JSON"),
                          (dict(USER_LINES[0], tags="role::program"), "'tags' must be a list"),
                          (dict(USER_LINES[0], split="validation"), "'split' is 'validation'")):
        with pytest.raises(ValueError, match=message):
            debian_labels.read_records(_write(tmp_path / "bad2.jsonl", [line]))
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        runner.load_examples(card, str(tmp_path / "nope.jsonl"))


# ----------------------------------------------------------------------------------------------------------
# Task cards
# ----------------------------------------------------------------------------------------------------------

def test_section_card_prompt_and_choices(records):
    card = cards.load_card("debian_section", {"lang": "fr"})
    labels = bundled.manifest()["nlu"]["debian_section"]["labels"]
    assert card.kind == "rank_classification" and list(card.choices) == labels
    assert all(card.choices[label] == label for label in labels)  # the label name is the target text: " python"
    # The prompt is the fine-tuning input of the seqio task.
    assert card.prompt["template"] == debian_labels.INPUT_TEMPLATE and card.prompt["target_prefix"] == " "
    pool, evaluation, source = runner.load_examples(card)
    assert source == "debian_labels:bundled" and len(pool) == 50 and len(evaluation) == 200
    fr_test = [r for r in records if r["split"] == "test" and r["lang"] == "fr"]
    assert [rec["id"] for rec, _ in evaluation] == [r["id"] for r in fr_test]
    _, query = evaluation[0]
    assert query["label"] == fr_test[0]["section"]
    assert prompts.render_prompt(card, [], query) == debian_labels.input_text(fr_test[0]["summary"],
                                                                               fr_test[0]["description"])
    shots = [values for _, values in prompts.choose_shots(card, pool, 2)]
    assert all(prompts.word_count(s["description"]) < card.shots["max_words"] for s in shots)
    prompt = prompts.render_prompt(card, shots, query, [s["label"] for s in shots])
    first = debian_labels.input_text(shots[0]["summary"], shots[0]["description"]) + " " + shots[0]["label"] + "\n\n"
    assert prompt.startswith(first) and prompt.endswith(prompts.render_prompt(card, [], query))
    assert prompt.count("\nSection:") == 3


def test_tags_card_uses_single_valued_facets():
    assert debian_labels.facets(["role::program", "use::editing", "use::viewing", "interface::TODO", "junk"]) == {
        "role": "program"}
    card = cards.load_card("debian_tags", {"lang": "ja"})
    pool, evaluation, _ = runner.load_examples(card)
    assert 100 <= len(evaluation) < 200 and pool  # descriptions without one role:: value are skipped
    for record, values in evaluation:
        roles = [t for t in record["tags"] if t.startswith("role::")]
        assert roles == [f"role::{values['label']}"] and values["label"] in card.choices


class _StubLM:
    """Stands in for ``alexatm_jax.load(...)`` in the runner: the bundled tokenizer, and a score that prefers the
    target " libs" (so every prediction is libs and the accuracy is the share of libs in the references)."""

    def __init__(self):
        self.tokenizer = spm.SentencePieceProcessor(model_file=bundled.bundled_spm_path())
        self.config = types.SimpleNamespace(max_position_embeddings=2048, pad_token_id=0, eos_token_id=1)
        self.prompts = []

    def score(self, ids, target_ids, attention_mask=None, target_mask=None):
        self.prompts += [self.tokenizer.decode(row[mask > 0].tolist()) for row, mask in zip(ids, attention_mask)]
        texts = [self.tokenizer.decode(row[mask > 0].tolist()) for row, mask in zip(target_ids, target_mask)]
        return np.array([1.0 if text == "libs" else 0.0 for text in texts])


def test_section_card_on_user_jsonl(tmp_path):
    path = _write(tmp_path / "mine.jsonl", USER_LINES)
    card = cards.load_card("debian_section", {"lang": "fr"})
    lm = _StubLM()
    results = runner.evaluate(lm, card, [0, 1], data=path, progress=False)
    assert results["data"] == f"debian_labels:{path}"
    zero, one = results["runs"]
    # The two French lines are evaluated (the German one is filtered out), with their own ids.
    assert [e["id"] for e in zero["examples"]] == ["mine.jsonl:1", "mine.jsonl:2"]
    assert [e["reference"] for e in zero["examples"]] == ["libs", "utils"]
    assert [e["prediction"] for e in zero["examples"]] == ["libs", "libs"]
    assert zero["scores"]["accuracy"] == pytest.approx(50.0) and zero["num_examples"] == 2
    assert len(zero["examples"][0]["choice_scores"]) == len(card.choices)
    # No "split" in the file: the shot comes from the bundled French dev split.
    fr_dev = {r["id"] for r in debian_labels.bundled_records("dev", ["fr"])}
    assert one["shot_ids"][0] in fr_dev
    assert zero["examples"][1]["prompt"] == (
        "Summary: éditeur de texte\nDescription: Un éditeur de texte pour la console.\nSection:")
