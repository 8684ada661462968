"""MASSIVE: the release-format loader, annotation -> words/BIO tags, the text-to-text format, the official metrics
(checked against seqeval itself and hand-worked values) and the two task cards end to end on a random model."""

import json
import math
import os

import pytest

from alexatm_jax.evaluation import cards, loaders, massive, metrics, nlu_metrics, runner

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "massive")
DATA = os.path.join(FIXTURE, "1.0", "data")


# ----------------------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("locale", ["en-US", "de-DE", "ja-JP"])
def test_loader_counts_partitions_and_skips_mmnlu22(locale):
    records = massive.load(FIXTURE, locale)  # the parent of 1.0/data
    counts = {split: sum(r["split"] == split for r in records) for split in massive.PARTITIONS}
    assert counts == {"train": 5, "dev": 2, "test": 3}
    # The file has 12 lines; the two MMNLU-22 lines (ids 100, 101, no labels) are skipped.
    with open(os.path.join(DATA, f"{locale}.jsonl"), encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    assert len(raw) == 12 and sum(r["partition"] == "MMNLU-22" for r in raw) == 2
    assert {r["id"] for r in records} == {str(i) for i in range(1, 11)}
    assert all(r["locale"] == locale for r in records)
    # The data folder itself, one file, and a partition subset give the same records.
    assert massive.load(DATA, locale) == records
    assert massive.load(os.path.join(DATA, f"{locale}.jsonl"), locale) == records
    assert [r["id"] for r in massive.load(DATA, locale, ["dev"])] == ["6", "7"]


def test_loader_fields_of_a_record():
    first = massive.load(DATA, "en-US", ["train"])[0]
    assert first["intent"] == "alarm_set" and first["scenario"] == "alarm" and first["split"] == "train"
    assert first["words"] == "wake me up at seven am tomorrow".split()
    assert first["tags"] == ["Other"] * 4 + ["time", "time", "date"]
    assert first["bio"] == ["O"] * 4 + ["B-time", "I-time", "B-date"]
    assert first["t2t_input"] == "Annotate: wake me up at seven am tomorrow"
    assert first["t2t_target"] == "Other Other Other Other time time date alarm_set"


def test_loader_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="cannot be downloaded here: pass --data DIR"):
        massive.load(None)
    with pytest.raises(FileNotFoundError, match=r"No fr-FR.jsonl .* de-DE, en-US, ja-JP. Pick one with --param"):
        massive.load(FIXTURE, "fr-FR")
    with pytest.raises(FileNotFoundError, match="No MASSIVE data in .*expected <locale>.jsonl"):
        massive.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        massive.load(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="holds locale.s. de-DE, not en-US: pass --param locale=de-DE"):
        massive.load(os.path.join(DATA, "de-DE.jsonl"), "en-US")
    with pytest.raises(ValueError, match="Unknown MASSIVE partition"):
        massive.load(DATA, "en-US", ["validation"])


def _write_with_line(tmp_path, line: str, number: int = 3) -> str:
    """A copy of en-US.jsonl with its line ``number`` replaced."""
    with open(os.path.join(DATA, "en-US.jsonl"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    lines[number - 1] = line
    path = tmp_path / "en-US.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _labelled(annot_utt: str, utt: str) -> str:
    return json.dumps({"id": "9", "locale": "en-US", "partition": "test", "scenario": "alarm",
                       "intent": "alarm_set", "utt": utt, "annot_utt": annot_utt})


@pytest.mark.parametrize("line, message", [
    ('{"id": "9", "partition": ', "is not valid JSON"),
    ('["a list"]', "is a JSON list, expected an object"),
    (_labelled("wake me at [time : five", "wake me at five"), "slot 'time' is not closed"),
    (_labelled("wake me at five] am", "wake me at five am"), "closes no slot"),
    (_labelled("wake [time : me [date : at] five]", "wake me at five"), "opens a slot inside slot 'time'"),
    (_labelled("wake me at [time five]", "wake me at five"), "not followed by 'slot_type : '"),
    (_labelled("wake me at [time : ] five", "wake me at five"), "slot 'time' .* has no words"),
    (_labelled("wake me at [time : five am]", "wake me at five"), "utt has 4 words but annot_utt has 5"),
    (json.dumps({"id": "9", "locale": "en-US", "partition": "validation", "utt": "x"}), "partition 'validation'"),
])
def test_malformed_lines_are_clear_errors(tmp_path, line, message):
    path = _write_with_line(tmp_path, line)
    with pytest.raises(ValueError, match=message) as error:
        massive.load(path)
    assert f"{path}:3" in str(error.value)


def test_lines_without_labels_are_skipped(tmp_path):
    # A line of a labelled partition with no annotation is skipped like MMNLU-22, not crashed on.
    path = _write_with_line(tmp_path, json.dumps({"id": "3", "locale": "en-US", "partition": "train",
                                                  "utt": "what's the weather like"}))
    assert [r["id"] for r in massive.load(path, "en-US", ["train"])] == ["1", "2", "4", "5"]


# ----------------------------------------------------------------------------------------------------------
# annot_utt -> words and BIO tags, worked by hand
# ----------------------------------------------------------------------------------------------------------

def _bio(annot_utt, locale="en-US", utt=None):
    words, tags = massive.parse_annotation(annot_utt, locale, utt)
    return list(zip(words, massive.to_bio(tags)))


def test_bio_multi_word_and_adjacent_slots():
    assert _bio("remind me about the [event_name : dentist appointment] on [date : friday]") == [
        ("remind", "O"), ("me", "O"), ("about", "O"), ("the", "O"), ("dentist", "B-event_name"),
        ("appointment", "I-event_name"), ("on", "O"), ("friday", "B-date")]
    # Adjacent slots of different types: two spans.
    assert _bio("wake me at [time : seven am] [date : tomorrow]") == [
        ("wake", "O"), ("me", "O"), ("at", "O"), ("seven", "B-time"), ("am", "I-time"), ("tomorrow", "B-date")]
    # Adjacent slots of the same type merge into one span (MASSIVE's per-word tags cannot separate them).
    assert _bio("from [place_name : paris] [place_name : berlin]") == [
        ("from", "O"), ("paris", "B-place_name"), ("berlin", "I-place_name")]


def test_bio_punctuation_attached_to_words():
    # Words come from utt, split on whitespace: punctuation stays on its word, and the word keeps its slot.
    assert _bio("what's the weather in [place_name : new york]?", utt="what's the weather in new york?") == [
        ("what's", "O"), ("the", "O"), ("weather", "O"), ("in", "O"), ("new", "B-place_name"),
        ("york?", "I-place_name")]
    # The slot closes at ']' even with punctuation after it (MASSIVE's script would tag 'gracias' time too).
    assert _bio("¿pon una alarma a las [time : cinco]? gracias", "es-ES") == [
        ("¿pon", "O"), ("una", "O"), ("alarma", "O"), ("a", "O"), ("las", "O"), ("cinco?", "B-time"),
        ("gracias", "O")]
    # Punctuation before the slot on the same word: the word is still in the slot.
    assert _bio("el tiempo para ([date : mañana])", "es-ES") == [
        ("el", "O"), ("tiempo", "O"), ("para", "O"), ("(mañana)", "B-date")]


def test_bio_japanese_and_chinese_split_per_character():
    assert _bio("[date : 明日]の [time : 7時]に起こして", "ja-JP") == [
        ("明", "B-date"), ("日", "I-date"), ("の", "O"), ("7", "B-time"), ("時", "I-time"), ("に", "O"),
        ("起", "O"), ("こ", "O"), ("し", "O"), ("て", "O")]
    # An all-ASCII chunk stays one word; Latin letters inside a Japanese chunk are split like the rest.
    assert _bio("[device_type : wemo プラグ]を", "ja-JP") == [
        ("wemo", "B-device_type"), ("プ", "I-device_type"), ("ラ", "I-device_type"), ("グ", "I-device_type"),
        ("を", "O")]
    assert _bio("[app_name : spotify]で", "ja-JP") == [
        ("s", "B-app_name"), ("p", "I-app_name"), ("o", "I-app_name"), ("t", "I-app_name"), ("i", "I-app_name"),
        ("f", "I-app_name"), ("y", "I-app_name"), ("で", "O")]
    # The words of a per-character locale come from the annotation, not from utt.
    assert _bio("播放 [artist_name : 周杰伦] 的歌", "zh-CN", utt="ignored") == [
        ("播", "O"), ("放", "O"), ("周", "B-artist_name"), ("杰", "I-artist_name"), ("伦", "I-artist_name"),
        ("的", "O"), ("歌", "O")]
    # zh-TW too; the closing bracket ends the slot even after an all-ASCII word (MASSIVE's script would not).
    assert _bio("[app_name : line] 打開", "zh-TW") == [("line", "B-app_name"), ("打", "O"), ("開", "O")]


def test_fixture_japanese_record_is_split_per_character():
    record = next(r for r in massive.load(DATA, "ja-JP") if r["id"] == "10")
    assert record["utt"] == "wemo プラグをオンにして"
    assert record["t2t_input"] == "Annotate: wemo プ ラ グ を オ ン に し て"
    assert record["t2t_target"] == "device_type device_type device_type device_type " + "Other " * 6 + "iot_wemo_on"


# ----------------------------------------------------------------------------------------------------------
# Text-to-text format
# ----------------------------------------------------------------------------------------------------------

def test_t2t_round_trip_on_every_fixture_record():
    for locale in ("en-US", "de-DE", "ja-JP"):
        for record in massive.load(DATA, locale):
            assert record["t2t_input"] == "Annotate: " + " ".join(record["words"])
            assert massive.parse_t2t_target(record["t2t_target"]) == (record["tags"], record["intent"])
            assert massive.parse_t2t_target(record["t2t_target"], len(record["words"])) == (
                record["tags"], record["intent"])


def test_t2t_inverse_is_robust_to_wrong_lengths():
    assert massive.parse_t2t_target("Other time alarm_set", 4) == (["Other", "time", "Other", "Other"], "alarm_set")
    assert massive.parse_t2t_target("Other time date date alarm_set", 2) == (["Other", "time"], "alarm_set")
    assert massive.parse_t2t_target("  ", 2) == (["Other", "Other"], "")
    assert massive.parse_t2t_target("alarm_set") == ([], "alarm_set")


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------

def test_slot_f1_is_seqeval_on_the_bio_tags():
    from seqeval.metrics import classification_report, f1_score

    gold = [["Other", "time", "time", "date"], ["place_name", "place_name", "Other"], ["Other", "Other"],
            ["date", "Other", "time"]]
    predicted = [["Other", "time", "Other", "date"], ["place_name", "place_name", "Other"], ["time", "Other"],
                 ["date", "Other"]]  # the last one too short: padded with Other
    gold_bio = [massive.to_bio(g) for g in gold]
    predicted_bio = [massive.to_bio(p + ["Other"] * (len(g) - len(p))) for p, g in zip(predicted, gold)]
    result = nlu_metrics.slot_micro_f1(predicted, gold)
    assert result.value == pytest.approx(f1_score(gold_bio, predicted_bio))
    report = classification_report(gold_bio, predicted_bio, output_dict=True)
    assert result.value == pytest.approx(report["micro avg"]["f1-score"])
    # By hand: gold spans time(0), date(0), place_name(1), date(3), time(3) = 5; predicted time(0, wrong
    # extent), date(0), place_name(1), time(2), date(3) = 5; right: date(0), place_name(1), date(3) = 3.
    assert result.value == pytest.approx(2 * 0.6 * 0.6 / 1.2)
    assert result.n == 12 and result.stderr == pytest.approx(math.sqrt(0.6 * 0.4 / 12))


@pytest.mark.parametrize("predicted, gold, f1", [
    ([["X", "X", "Z"]], [["X", "X", "Y"]], 0.5),  # one of two spans right
    ([["X", "X", "Y", "Other"]], [["X", "X", "Y", "Other", "Y"]], 0.8),  # too short: padded, 2 TP 1 FN
    ([["X", "X", "Z", "Z"]], [["X", "X", "Y"]], 0.5),  # too long: cut to the gold length
    ([["X", "Other", "Other", "Y", "Y"]], [["X", "X", "Other", "Y", "Y"]], 0.5),  # wrong extent is wrong
    ([["Other"], ["X"]], [["Y"], ["X"]], 2 / 3),  # 1 TP, 1 FN over two examples
])
def test_slot_f1_hand_worked(predicted, gold, f1):
    assert nlu_metrics.slot_micro_f1(predicted, gold).value == pytest.approx(f1)


def test_nlu_scores_hand_worked_with_stderr():
    gold = [("alarm_set", ["Other", "time"]), ("play_music", ["Other", "artist_name", "artist_name"]),
            ("weather_query", ["Other", "Other"]), ("alarm_set", ["time", "date"])]
    predicted = [("alarm_set", ["Other", "time"]),  # all right
                 ("play_music", ["Other", "artist_name", "Other"]),  # intent right, slot extent wrong
                 ("weather_query", ["Other"]),  # all right once padded
                 ("alarm_query", ["time", "date"])]  # slots right, intent wrong
    scores = nlu_metrics.nlu_scores(predicted, gold)
    assert scores["intent_acc"] == nlu_metrics.Estimate(0.75, math.sqrt(0.75 * 0.25 / 4), 4)
    assert scores["ex_match_acc"] == nlu_metrics.Estimate(0.5, math.sqrt(0.5 * 0.5 / 4), 4)
    # Gold spans: time, artist_name, time, date = 4; predicted: time, artist_name (1 word), time, date = 4; 3 right.
    slots = scores["slot_micro_f1"]  # n is the number of gold words (9), as MASSIVE computes the stderr
    assert slots.value == pytest.approx(0.75) and slots.n == 9
    assert slots.stderr == pytest.approx(math.sqrt(0.75 * 0.25 / 9))


def test_t2t_scores_and_the_metric_results():
    references = ["Other time alarm_set", "Other artist_name artist_name play_music", "Other Other weather_query",
                  "time date alarm_set"]
    predictions = ["Other time alarm_set", "Other artist_name Other play_music", "Other weather_query",
                   "time date date alarm_query"]  # the last one has a tag too many
    scores = nlu_metrics.t2t_scores(predictions, references)
    assert {k: round(v.value, 6) for k, v in scores.items()} == {
        "intent_acc": 0.75, "slot_micro_f1": 0.75, "ex_match_acc": 0.5}
    results = {r.name: r for r in metrics.compute("massive", predictions, references)}
    assert set(results) == {"intent_acc", "slot_micro_f1", "ex_match_acc"}
    assert results["intent_acc"].score == pytest.approx(75.0)
    assert results["intent_acc"].to_dict()["stderr"] == pytest.approx(100 * math.sqrt(0.75 * 0.25 / 4))
    assert "seqeval" in results["slot_micro_f1"].signature
    assert metrics.compute("massive", [""], ["Other alarm_set"])[0].score == 0.0  # empty output: no crash


def test_accuracy_and_majority_baseline():
    assert nlu_metrics.accuracy_with_stderr(["a", "b", "a"], ["a", "a", "a"]) == nlu_metrics.Estimate(
        2 / 3, math.sqrt(2 / 3 * 1 / 3 / 3), 3)
    label, estimate = nlu_metrics.majority_baseline(["b", "a", "b", "c"], ["a", "b", "b", "c", "b"])
    assert label == "b" and estimate.value == pytest.approx(0.6) and estimate.n == 5
    # Ties go to the smallest label, whatever the order; without gold, scored on the labels themselves.
    assert nlu_metrics.majority_baseline(["y", "x", "x", "y"])[0] == "x"
    assert nlu_metrics.majority_baseline(["y", "x", "x", "y"])[1].value == 0.5
    result = metrics.accuracy([0, 1, 1, 1], [0, 1, 0, 0]).to_dict()
    assert result["score"] == 50.0 and result["stderr"] == pytest.approx(25.0) and result["n"] == 4
    with pytest.raises(ValueError, match="must pair up"):
        nlu_metrics.accuracy_with_stderr([1], [1, 2])


# ----------------------------------------------------------------------------------------------------------
# Cards
# ----------------------------------------------------------------------------------------------------------

def test_cards_load_and_cover_the_fixture():
    intent_card = cards.load_card("massive_intent", {"locale": "de-DE"})
    assert intent_card.kind == "rank_classification" and len(intent_card.choices) == 60
    assert intent_card.params == {"locale": "de-DE"} and intent_card.data["format"] == "massive"
    slots_card = cards.load_card("massive_slots")
    assert slots_card.metrics == ["massive"] and slots_card.params == {"locale": "en-US"}
    pool, evaluation, source = runner.load_examples(intent_card, DATA)
    assert len(pool) == 5 and len(evaluation) == 3 and source.startswith("massive:")
    assert all(values["label"] in intent_card.choices for _, values in pool + evaluation)
    assert evaluation[0][1]["text"] == "stell einen wecker für halb sieben"
    _, evaluation = runner.load_examples(slots_card, FIXTURE)[:2]
    assert evaluation[0][1] == {"source": "Annotate: set an alarm for six thirty am",
                                "target": "Other Other Other Other time time time alarm_set"}
    assert "massive" in loaders.FORMATS


def test_cards_golden_prompts():
    from alexatm_jax.evaluation import prompts

    slots = cards.load_card("massive_slots")
    pool, evaluation, _ = runner.load_examples(slots, FIXTURE)
    shot = [v for r, v in pool if r["id"] == "4"]
    # 0 shots: exactly MASSIVE's text-to-text input; a shot is its input, a newline and its target.
    assert prompts.render_prompt(slots, [], evaluation[0][1]) == "Annotate: set an alarm for six thirty am"
    assert prompts.render_prompt(slots, shot, evaluation[0][1]) == (
        "Annotate: tell me a joke\nOther Other Other Other general_joke\n\nAnnotate: set an alarm for six thirty am")
    assert prompts.postprocess(slots, " Other time alarm_set\n\nAnnotate: x") == "Other time alarm_set"
    intent = cards.load_card("massive_intent")
    pool, evaluation, _ = runner.load_examples(intent, FIXTURE)
    shot = [v for r, v in pool if r["id"] == "4"]
    assert prompts.render_prompt(intent, shot, evaluation[0][1], ["general_joke"]) == (
        "Utterance: tell me a joke\nIntent: general_joke\n\nUtterance: set an alarm for six thirty am\nIntent:")


def test_cards_without_data_say_so():
    for name in ("massive_intent", "massive_slots"):
        with pytest.raises(ValueError, match="MASSIVE cannot be downloaded here: pass --data DIR"):
            runner.load_examples(cards.load_card(name), None)


# ----------------------------------------------------------------------------------------------------------
# End to end on a small random model (as tests/test_eval.py builds it)
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from alexatm_jax.checkpoints.model_dir import save_model_dir
    from alexatm_jax.data.bundled import bundled_spm_path
    from alexatm_jax.model.config import ModelConfig
    from alexatm_jax.model.transformer import AlexaTMTransformer

    config = ModelConfig(vocab_size=8192, d_model=32, encoder_layers=1, decoder_layers=1, num_heads=2,
                         encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512, dropout_rate=0.0,
                         pad_token_id=0, eos_token_id=1, bos_token_id=3, decoder_start_token_id=0, init_std=0.1)
    model = AlexaTMTransformer(config)
    dummy = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), dummy, dummy, enable_dropout=False)["params"])
    directory = tmp_path_factory.mktemp("massive") / "model"
    save_model_dir(directory, config, params, tokenizer_path=bundled_spm_path())
    return str(directory)


def test_eval_massive_slots_end_to_end(checkpoint, tmp_path, capsys):
    from alexatm_jax import cli

    out = tmp_path / "slots"
    code = cli.main(["eval", "--checkpoint", checkpoint, "--task", "massive_slots", "--data", FIXTURE,
                     "--param", "locale=ja-JP", "--shots", "0,1", "--limit", "2", "--max-new-tokens", "6",
                     "--output", str(out), "--no-progress"])
    assert code == 0
    assert "| shots | examples | intent_acc | slot_micro_f1 | ex_match_acc |" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["task"]["params"] == {"locale": "ja-JP"} and results["data"] == f"massive:{FIXTURE}"
    for run in results["runs"]:
        assert set(run["scores"]) == {"intent_acc", "slot_micro_f1", "ex_match_acc"}
        assert all(set(m) >= {"score", "stderr", "n", "signature"} for m in run["metrics"].values())
        examples = run["examples"]
        assert examples[0]["prompt"].endswith("Annotate: 六 時 半 に ア ラ ー ム を セ ッ ト し て")
        # The recorded scores are MASSIVE's metrics of the recorded strings.
        expected = nlu_metrics.t2t_scores([e["prediction"] for e in examples], [e["reference"] for e in examples])
        for name, estimate in expected.items():
            assert run["metrics"][name]["score"] == pytest.approx(100 * estimate.value)
            assert run["metrics"][name]["stderr"] == pytest.approx(100 * estimate.stderr)


def test_eval_massive_intent_end_to_end(checkpoint, tmp_path, capsys):
    from alexatm_jax import cli

    out = tmp_path / "intent"
    code = cli.main(["eval", "--checkpoint", checkpoint, "--task", "massive_intent", "--data", DATA,
                     "--param", "locale=de-DE", "--limit", "2", "--batch-size", "64", "--output", str(out),
                     "--no-progress"])
    assert code == 0
    run = json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"][0]
    assert set(run["scores"]) == {"accuracy"} and run["num_examples"] == 2
    assert {"stderr", "n"} <= set(run["metrics"]["accuracy"])
    assert all(len(e["choice_scores"]) == 60 for e in run["examples"])
    assert [e["reference"] for e in run["examples"]] == ["alarm_set", "transport_ticket"]
    # Without --data the command stops with the message, not a traceback.
    assert cli.main(["eval", "--checkpoint", checkpoint, "--task", "massive_intent", "--output",
                     str(tmp_path / "none")]) == 2
    assert "MASSIVE cannot be downloaded here: pass --data DIR" in capsys.readouterr().err
