"""NLU fine-tuning and cross-lingual evaluation: rank scoring over a label set, the per-language table with
standard errors and the majority baseline, translation retrieval with mean-pooled encoder states, and the
fine-tuning run file. Small random models saved as model directories, and stub models whose answers are known."""

import json
import math
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alexatm_jax
from alexatm_jax import cli
from alexatm_jax.checkpoints.model_dir import save_model_dir
from alexatm_jax.data.bundled import bundled_spm_path
from alexatm_jax.evaluation import cards, languages, retrieval, runner
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.transformer import AlexaTMTransformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = ModelConfig(vocab_size=8192, d_model=32, encoder_layers=1, decoder_layers=1, num_heads=2,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512, dropout_rate=0.0,
                     pad_token_id=0, eos_token_id=1, bos_token_id=3, decoder_start_token_id=0, init_std=0.1)
BUNDLED_LANGS = ["en", "it", "fr", "de", "ja", "ru", "es", "pt"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    dummy = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(AlexaTMTransformer(CONFIG).init(jax.random.PRNGKey(0), dummy, dummy,
                                                      enable_dropout=False)["params"])
    return str(save_model_dir(tmp_path_factory.mktemp("nlu") / "model", CONFIG, params,
                              tokenizer_path=bundled_spm_path()))


@pytest.fixture(scope="module")
def lm(checkpoint):
    return alexatm_jax.load(checkpoint)


# ----------------------------------------------------------------------------------------------------------
# Rank scoring over the label set
# ----------------------------------------------------------------------------------------------------------

def test_score_choices_is_the_score_of_every_input_choice_pair(lm):
    inputs = [[5, 17, 300, 1], [900, 44, 1], [7, 7, 7, 7, 7, 7, 1]]
    choices = [[25], [300, 301], [4000, 12, 99, 1]]
    scores = lm.score_choices(inputs, choices)
    assert scores.shape == (3, 3)
    expected = [[lm.score([i], [c])[0] for c in choices] for i in inputs]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


class PairsOnly:
    """The model with only ``score`` (the runner's fallback path: one row per (prompt, label) pair)."""

    def __init__(self, lm):
        self.config, self.tokenizer, self.path, self._lm = lm.config, lm.tokenizer, lm.path, lm

    def score(self, *args, **kwargs):
        return self._lm.score(*args, **kwargs)


def test_rank_classification_scores_every_label_and_predicts_the_best(lm):
    card = cards.load_card("debian_section", {"lang": "de"})
    shared = runner.evaluate(lm, card, [0], limit=3, progress=False, batch_size=48)["runs"][0]
    pairs = runner.evaluate(PairsOnly(lm), card, [0], limit=3, progress=False, batch_size=16)["runs"][0]
    labels = set(card.choices.values())
    for fast, slow in zip(shared["examples"], pairs["examples"]):
        assert set(fast["choice_scores"]) == labels and len(labels) == 16
        # The prediction is always one of the labels: the best-scoring one.
        assert fast["prediction"] in labels
        assert fast["prediction"] == max(fast["choice_scores"], key=fast["choice_scores"].get)
        np.testing.assert_allclose([fast["choice_scores"][k] for k in sorted(labels)],
                                   [slow["choice_scores"][k] for k in sorted(labels)], rtol=1e-4, atol=1e-4)
        assert fast["prediction"] == slow["prediction"]


class KeywordModel:
    """A stub classifier with a known answer: a label scores 1 when all its tokens occur in the prompt, else 0
    (ties: the first label in the card's order)."""

    def __init__(self, lm):
        self.config, self.tokenizer, self.path = lm.config, lm.tokenizer, "keyword-stub"

    def score_choices(self, ids, choice_ids, attention_mask=None, choice_mask=None):
        out = np.zeros((len(ids), len(choice_ids)), np.float32)
        for i, (row, mask) in enumerate(zip(ids, attention_mask)):
            present = set(np.asarray(row)[np.asarray(mask) > 0].tolist())
            for c, (choice, cmask) in enumerate(zip(choice_ids, choice_mask)):
                out[i, c] = float(set(np.asarray(choice)[np.asarray(cmask) > 0].tolist()) <= present)
        return out


def _record(lang, split, section, mention):
    description = f"A tool written in {section} for everyone." if mention else "Ein Werkzeug für alle."
    return {"lang": lang, "split": split, "summary": "a package", "description": description, "section": section}


@pytest.fixture()
def labelled_file(tmp_path):
    """English train (majority perl: 3 of 5), dev and test in en (label named in the text) and de (not)."""
    rows = [_record("en", "train", s, True) for s in ("perl", "perl", "perl", "python", "text")]
    rows += [_record(lang, "dev", "python", lang == "en") for lang in ("en", "de")]
    test = ("python", "perl", "text", "graphics")
    rows += [_record("en", "test", s, True) for s in test] + [_record("de", "test", s, False) for s in test]
    path = tmp_path / "sections.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_per_language_table_on_a_known_case(lm, labelled_file):
    card = cards.load_card("debian_section")
    langs = languages.resolve_languages(card, "all", data=labelled_file)
    assert langs == ["en", "de"]
    results = languages.evaluate_languages(KeywordModel(lm), card, [0], langs=langs, data=labelled_file,
                                           progress=False)
    rows = {row["lang"]: row for row in results["rows"]}
    # English: every label is named in its description -> all right; German: no label -> always 'admin'.
    assert rows["en"]["metrics"]["accuracy"] == {"value": 1.0, "stderr": 0.0, "n": 4}
    assert rows["de"]["metrics"]["accuracy"] == {"value": 0.0, "stderr": 0.0, "n": 4}
    # The majority class of the (English) train split, 'perl', scored on each language's test labels: 1 of 4.
    assert results["baseline"]["label"] == "perl" and results["baseline"]["source"] == "train split (en)"
    for lang in ("en", "de"):
        assert rows[lang]["baseline"]["label"] == "perl"
        assert rows[lang]["baseline"]["value"] == 0.25
        assert rows[lang]["baseline"]["stderr"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    table = languages.markdown_table(results)
    assert "rank classification over the card's 16 labels" in table
    assert "always `perl`, the most frequent label of the train split (en) (5 examples)" in table
    assert "| language | shots | examples | accuracy % | majority baseline % |" in table
    assert "| en | 0 | 4 | 100.0 ± 0.0 | 25.0 ± 21.7 |" in table
    assert "| de | 0 | 4 | 0.0 ± 0.0 | 25.0 ± 21.7 |" in table
    assert "| mean of 2 | 0 | 8 | 50.0 | 25.0 |" in table


def test_languages_of_the_bundled_card_and_user_errors(tmp_path, capsys):
    card = cards.load_card("debian_section")
    assert languages.resolve_languages(card, "all") == BUNDLED_LANGS
    assert languages.resolve_languages(card, "ja,de") == ["ja", "de"]
    with pytest.raises(cards.CardError, match=r"no evaluation data in language\(s\) \['xx'\]"):
        languages.resolve_languages(card, "en,xx")
    with pytest.raises(cards.CardError, match="no language param"):
        languages.resolve_languages(cards.load_card("xsum"), "all")
    # Refused before any model is loaded (the checkpoint does not exist).
    code = cli.main(["eval", "--checkpoint", str(tmp_path / "none"), "--task", "debian_section", "--langs", "xx",
                     "--output", str(tmp_path / "out")])
    assert code == 2 and "no evaluation data in language(s) ['xx']" in capsys.readouterr().err


def test_eval_langs_command_writes_the_table_and_results(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["eval", "--checkpoint", checkpoint, "--task", "debian_section", "--langs", "en,ja",
                     "--shots", "0", "--limit", "2", "--batch-size", "48", "--output", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["kind"] == "languages" and results["languages"] == ["en", "ja"]
    assert results["baseline"]["label"] == "libs"  # the English train split's most frequent section
    assert [(r["lang"], r["n"]) for r in results["rows"]] == [("en", 2), ("ja", 2)]
    for row in results["rows"]:
        examples = results["per_language"][row["lang"]]["runs"][0]["examples"]
        hits = sum(e["prediction"] == e["reference"] for e in examples)
        assert row["metrics"]["accuracy"]["value"] == hits / 2
        assert row["baseline"]["value"] == sum(e["reference"] == "libs" for e in examples) / 2
        assert f"| {row['lang']} | 0 | 2 |" in printed
    assert "Classifier: rank classification" in printed and f"wrote {out / 'results.json'}" in printed


# ----------------------------------------------------------------------------------------------------------
# Translation retrieval
# ----------------------------------------------------------------------------------------------------------

def test_mean_pool_ignores_padding():
    states = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    np.testing.assert_allclose(retrieval.mean_pool(states, [[1, 1, 0]]), [[2.0, 3.0]])


def test_nearest_neighbour_accuracy_by_hand():
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    candidates = np.array([[0.9, 0.1], [0.2, 0.8], [-1.0, 0.0]])
    # Cosines of query 2 ([1, 1]): 0.78 with candidate 0, 0.86 with candidate 1, -0.71 with its own -> miss.
    assert retrieval.nearest_neighbour_hits(queries, candidates).tolist() == [True, True, False]
    # Scale does not matter (cosine), and a model giving every text one vector scores chance (1/N).
    assert retrieval.nearest_neighbour_hits(10 * queries, candidates).tolist() == [True, True, False]
    assert retrieval.nearest_neighbour_hits(np.ones((4, 3)), np.ones((4, 3))).mean() == 0.25
    vectors = {"en": {"a": queries[0], "b": queries[1], "c": queries[2]},
               "de": {"a": candidates[0], "b": candidates[1], "c": candidates[2]},
               "ja": {"a": candidates[0]}}
    matrix = retrieval.pair_accuracies(vectors, ["en", "de", "ja"])
    assert matrix["en"]["de"].value == pytest.approx(2 / 3) and matrix["en"]["de"].n == 3
    assert matrix["en"]["de"].stderr == pytest.approx(math.sqrt(2 / 9 / 3))
    # de -> en: candidate rows as queries: 0 -> en 0 (0.99), 1 -> en 1 (0.97), 2 -> en 0 (-1 vs 0 vs -0.71): miss.
    assert matrix["de"]["en"].value == pytest.approx(2 / 3)
    assert "ja" not in matrix["en"] and "ja" not in matrix  # one shared record: below min_pairs=2


def test_centering_removes_a_language_offset():
    """Translations = the same points shifted by a large per-language offset: raw cosines see only the offset
    (one hub: 1 hit of 4), centering each language recovers every translation."""
    points = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -1.0, 0.0]])
    english, german = points + [50.0, 50.0, 0.0], points + [0.0, 50.0, 50.0]
    assert retrieval.nearest_neighbour_hits(english, german).sum() == 1
    assert retrieval.nearest_neighbour_hits(retrieval.center(english), retrieval.center(german)).all()


def test_retrieval_of_identical_texts_is_perfect(lm, tmp_path):
    """Each record holds the same sentence in every 'language': the nearest neighbour must be itself."""
    sentences = ["The cat sleeps on the mat.", "Prices rose sharply in March.", "Open the window, please.",
                 "Ein ganz anderer Satz über Musik.", "日本語の文です。"]
    path = tmp_path / "aligned.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "texts": {lang: s for lang in ("en", "de", "fr")}}) + "\n"
                            for i, s in enumerate(sentences)), encoding="utf-8")
    card = cards.load_card("udhr_retrieval")
    results = runner.evaluate(lm, card, [0], data=str(path), progress=False)
    run = results["runs"][0]
    assert run["languages"] == ["en", "de", "fr"] and run["scores"]["retrieval_accuracy"] == 100.0
    assert all(cell == {"value": 1.0, "stderr": 0.0, "n": 5} for row in run["matrix"].values() for cell in row.values())
    # The vectors do not depend on the padding of the batch a text is embedded in.
    alone, _ = retrieval.embed_texts(lm, card, [sentences[0]])
    batched, _ = retrieval.embed_texts(lm, card, [sentences[0], " ".join(sentences)], batch_size=2)
    np.testing.assert_allclose(alone[0], batched[0], rtol=1e-4, atol=1e-5)


def test_retrieval_card_through_eval_command(checkpoint, tmp_path, capsys):
    out = tmp_path / "retrieval"
    code = cli.main(["eval", "--checkpoint", checkpoint, "--task", "udhr_retrieval", "--langs", "en,de,ja",
                     "--limit", "6", "--output", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| query \\ target | en | de | ja | mean |" in printed and "chance 16.7%" in printed
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    run = results["runs"][0]
    assert results["task"]["kind"] == "retrieval" and run["languages"] == ["en", "de", "ja"]
    assert sorted((s, t) for s, row in run["matrix"].items() for t in row) == \
        [("de", "en"), ("de", "ja"), ("en", "de"), ("en", "ja"), ("ja", "de"), ("ja", "en")]
    mean = np.mean([c["value"] for row in run["matrix"].values() for c in row.values()])
    assert run["scores"]["retrieval_accuracy"] == pytest.approx(100 * mean)
    # Both bundled cards find their languages; retrieval has no shots.
    udhr = cards.load_card("udhr_retrieval")
    assert len(retrieval.resolve_languages(udhr, retrieval.load_records(udhr)[0])) == 12
    debian = cards.load_card("debian_retrieval")
    assert retrieval.resolve_languages(debian, retrieval.load_records(debian)[0]) == \
        ["en", "de", "es", "fr", "it", "ja", "pt", "ru"]
    assert cli.main(["eval", "--checkpoint", checkpoint, "--task", "udhr_retrieval", "--shots", "1",
                     "--output", str(out)]) == 2
    assert "no shots" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# The fine-tuning run file
# ----------------------------------------------------------------------------------------------------------

def test_finetune_run_file_binds_the_debian_section_task():
    import seqio

    from alexatm_jax.commands.train import parse_gin
    from alexatm_jax.data import nlu_tasks
    from alexatm_jax.training.configs import DataConfig, OptimizerConfig

    try:
        parse_gin(["gin_configs/models/tiny.gin", "gin_configs/runs/finetune_debian_section.gin"],
                  [("MODEL_DIR", "'/tmp/ft'"), ("INIT_FROM", "'/tmp/pretrain'")], [REPO])
        data, optimizer = DataConfig(), OptimizerConfig()
        assert data.mixture_or_task_name == "debian_section" and data.pack
        assert dict(data.task_feature_lengths) == {"inputs": 256, "targets": 16}
        assert gin.query_parameter("INIT_FROM/gin.macro.value") == "/tmp/pretrain"  # train.init_from = %INIT_FROM
        assert optimizer.learning_rate == 1e-3 and optimizer.freeze_encoder_steps == 0
        assert data.problems(CONFIG) == [] and optimizer.problems() == []
        # The eval split the trainer reads exists in the task (the bundled English dev split).
        task = seqio.get_mixture_or_task(data.mixture_or_task_name)
        assert data.eval_split in task.splits and "train" in task.splits
        assert nlu_tasks.SEQIO_SPLITS[data.eval_split] == "dev"
    finally:
        gin.clear_config()


# ----------------------------------------------------------------------------------------------------------
# On a mesh
# ----------------------------------------------------------------------------------------------------------

SHARDED = r'''
import json, sys
import jax, jax.numpy as jnp, flax.linen as nn, numpy as np
import alexatm_jax
from alexatm_jax.checkpoints.model_dir import save_model_dir
from alexatm_jax.data.bundled import bundled_spm_path
from alexatm_jax.evaluation import cards, runner
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.transformer import AlexaTMTransformer
from alexatm_jax.partitioning import make_mesh

assert jax.device_count() == 8
config = ModelConfig(vocab_size=8192, d_model=32, encoder_layers=1, decoder_layers=1, num_heads=2,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512, dropout_rate=0.0,
                     pad_token_id=0, eos_token_id=1, bos_token_id=3, decoder_start_token_id=0, init_std=0.1)
dummy = jnp.ones((1, 4), jnp.int32)
params = nn.unbox(AlexaTMTransformer(config).init(jax.random.PRNGKey(0), dummy, dummy, enable_dropout=False)["params"])
directory = save_model_dir(sys.argv[1], config, params, tokenizer_path=bundled_spm_path())
out = {}
for name, mesh in (("single", None), ("mixed", make_mesh("data=2,fsdp=2,tensor=2"))):
    lm = alexatm_jax.load(directory, mesh=mesh)
    # 3 prompts: not a multiple of the 4-way data parallelism, so padding rows are exercised.
    scores = lm.score_choices([[5, 17, 300, 1], [900, 44, 1], [7, 7, 7, 1]], [[25], [300, 301], [4000, 12, 1]])
    ranked = runner.evaluate(lm, cards.load_card("debian_section", {"lang": "ja"}), [0], limit=3, batch_size=48,
                             progress=False)["runs"][0]
    matrix = runner.evaluate(lm, cards.load_card("udhr_retrieval", {"langs": "en,hi,ta"}), [0], limit=5,
                             batch_size=3, progress=False)["runs"][0]["matrix"]
    out[name] = {"scores": np.asarray(scores).tolist(), "predictions": [e["prediction"] for e in ranked["examples"]],
                 "label_scores": [e["choice_scores"] for e in ranked["examples"]], "matrix": matrix}
print("RESULTS " + json.dumps(out))
'''


def test_rank_scoring_and_retrieval_on_a_mesh_equal_one_device(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path / "model")], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads([l for l in result.stdout.splitlines() if l.startswith("RESULTS ")][0][len("RESULTS "):])
    single, mixed = out["single"], out["mixed"]
    np.testing.assert_allclose(mixed["scores"], single["scores"], rtol=1e-4, atol=1e-4)
    assert mixed["predictions"] == single["predictions"] and mixed["matrix"] == single["matrix"]
    for a, b in zip(mixed["label_scores"], single["label_scores"]):
        np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=1e-4, atol=1e-4)
