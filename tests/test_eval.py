"""The evaluation runner and the `eval` / `generate` commands, end to end on a small random model saved as a
model directory with the bundled SentencePiece tokenizer."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

import alexatm_jax
from alexatm_jax import cli
from alexatm_jax.checkpoints.model_dir import save_model_dir
from alexatm_jax.data.bundled import bundled_spm_path
from alexatm_jax.evaluation import cards, metrics, runner
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.transformer import AlexaTMTransformer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")
# The repo's own convention for models trained with the bundled SentencePiece model: pad 0, eos 1, start 0.
CONFIG = ModelConfig(vocab_size=8192, d_model=32, encoder_layers=1, decoder_layers=1, num_heads=2,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512, dropout_rate=0.0,
                     pad_token_id=0, eos_token_id=1, bos_token_id=3, decoder_start_token_id=0, init_std=0.1)


def _save(directory, config=CONFIG, eos_bias=None):
    model = AlexaTMTransformer(config)
    dummy = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), dummy, dummy, enable_dropout=False)["params"])
    if eos_bias is not None:
        bias = params["decoder"]["final_logits_bias"]
        params["decoder"]["final_logits_bias"] = bias.at[config.eos_token_id].set(eos_bias)
    save_model_dir(directory, config, params, tokenizer_path=bundled_spm_path())
    return str(directory)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("eval") / "model")


def test_eval_command_writes_results_and_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["eval", "--checkpoint", checkpoint, "--task", "udhr_translation", "--param", "src=en,tgt=de",
                     "--shots", "0,1", "--limit", "3", "--output", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| shots | examples | spbleu | chrf++ | bleu |" in printed and "| 1 | 3 |" in printed
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["checkpoint"] == checkpoint and results["shots"] == [0, 1] and results["seed"] == 0
    assert results["task"]["name"] == "udhr_translation" and results["task"]["params"] == {"src": "en", "tgt": "de"}
    zero, one = results["runs"]
    assert one["shot_ids"] == ["preamble.4"] and zero["shot_ids"] == []
    for run in results["runs"]:
        assert len(run["examples"]) == 3
        for example in run["examples"]:
            assert example["prompt"].startswith("[CLM] Sentence:  ")
            assert example["prompt"].endswith("; Translation in German:")
            assert example["prediction"] == example["raw_prediction"].split(";")[0].strip()
        # Scores and signatures are exactly those of the metrics on the recorded strings.
        predictions = [e["prediction"] for e in run["examples"]]
        references = [e["reference"] for e in run["examples"]]
        assert run["scores"]["chrf++"] == metrics.chrf(predictions, references, word_order=2).score
        assert run["scores"]["bleu"] == metrics.bleu(predictions, references).score
        assert "not the official flores101 tokenizer" in run["signatures"]["spbleu"]
        assert "tokenizer.model" in run["signatures"]["spbleu"]


def test_eval_flores_card_reads_a_flores_folder(checkpoint, tmp_path):
    out = tmp_path / "flores"
    code = cli.main(["eval", "--checkpoint", checkpoint, "--task", "flores101_mt", "--param", "src=en,tgt=de",
                     "--data", os.path.join(FIXTURES, "flores101_dataset"), "--shots", "2", "--output", str(out),
                     "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    run = results["runs"][0]
    assert run["shot_ids"] == ["dev.0", "dev.1"] and run["num_examples"] == 3
    assert [e["reference"] for e in run["examples"]] == ["Gestern war das Wetter schön.",
                                                         "Viele Menschen besuchten das Museum.", "Der Zug kam spät an."]
    assert results["data"].startswith("flores101:")


def test_runner_predictions_are_the_models_greedy_outputs(checkpoint, capsys):
    lm = alexatm_jax.load(checkpoint)
    card = cards.load_card("debian_translation", {"src": "en", "tgt": "fr"})
    results = runner.evaluate(lm, card, [1], limit=4, progress=False, batch_size=1)
    encoder = runner.PromptEncoder(lm, card)
    clm = lm.tokenizer.piece_to_id("[CLM]")
    for example in results["runs"][0]["examples"]:
        ids = encoder.prompt_ids(example["prompt"])
        # The CLM token goes in as its id (no '▁' piece before it), EOS closes the input.
        assert ids[0] == clm and ids[-1] == CONFIG.eos_token_id and ids[1] != lm.tokenizer.piece_to_id("\u2581")
        assert ids[1:-1] == lm.tokenizer.encode(example["prompt"][len("[CLM] "):])
        # One tokenisation everywhere: the API's (as in the README) is the runner's.
        assert lm.tokenize([example["prompt"]]) == [ids]
        # Alone and unpadded (a different shape from the runner's bucketed batch: padding must not matter).
        out = lm.generate([ids], max_new_tokens=card.decoding["max_new_tokens"])
        assert encoder.decode(out[0]).split(";")[0].strip() == example["prediction"]
    # ... and `alexatm-jax generate`'s, which prints the same prediction for the same prompt.
    example = results["runs"][0]["examples"][0]
    capsys.readouterr()
    assert cli.main(["generate", "--checkpoint", checkpoint, "--prompt", example["prompt"], "--stop", ";",
                     "--max-new-tokens", str(card.decoding["max_new_tokens"])]) == 0
    assert capsys.readouterr().out.strip() == example["prediction"]


def test_rank_classification_accuracy(checkpoint):
    lm = alexatm_jax.load(checkpoint)
    card = cards.load_card("debian_language_id")
    results = runner.evaluate(lm, card, [0], limit=5, progress=False)
    run = results["runs"][0]
    choices = list(card.choices.values())
    for example in run["examples"]:
        scores = example["choice_scores"]
        assert example["prediction"] == max(scores, key=scores.get)
        # Each choice's score is the model's teacher-forced log-likelihood of " <Language>".
        ids = runner.PromptEncoder(lm, card).prompt_ids(example["prompt"])
        target = lm.tokenizer.encode(" " + choices[1])
        np.testing.assert_allclose(scores[choices[1]], lm.score([ids], [target])[0], rtol=1e-4, atol=1e-4)
    hits = sum(e["prediction"] == e["reference"] for e in run["examples"])
    assert run["scores"]["accuracy"] == pytest.approx(100.0 * hits / 5)


def test_xsum_card_on_fixture_data_with_truncation(checkpoint, tmp_path):
    lm = alexatm_jax.load(checkpoint)
    card = cards.load_card("xsum")
    card.truncate["max_tokens"] = 12  # force the sentence-boundary cut on the fixture's short documents
    results = runner.evaluate(lm, card, [1], data=os.path.join(FIXTURES, "xsum"), progress=False)
    run = results["runs"][0]
    assert run["truncated_inputs"] == 2 and set(run["scores"]) == {"rouge1", "rouge2", "rougeL"}
    assert run["examples"][0]["prompt"].endswith("Article: A new bridge opened in the city. ==> Short summary:")


def test_prompt_longer_than_model_is_a_clear_error(tmp_path, capsys):
    small = _save(tmp_path / "small", CONFIG.replace(max_position_embeddings=40))
    code = cli.main(["eval", "--checkpoint", small, "--task", "udhr_translation", "--shots", "1", "--limit", "1",
                     "--output", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "tokens but the model has 40 positions. Use fewer shots" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def test_empty_predictions_are_reported(tmp_path, capsys):
    # A model that always emits EOS first: every prediction is empty, and the run says so.
    eos_first = _save(tmp_path / "eos", eos_bias=1e4)
    code = cli.main(["eval", "--checkpoint", eos_first, "--task", "debian_translation", "--shots", "0",
                     "--limit", "2", "--output", str(tmp_path / "o"), "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert "2 of 2 predictions are empty" in captured.err
    assert "Empty predictions: 0-shot: 2" in captured.out
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["runs"][0]["empty_predictions"] == 2


def test_cli_user_errors(checkpoint, tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", checkpoint, "--task", "no_such_task", "--output", str(tmp_path)]) == 2
    assert "Unknown task 'no_such_task'" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", checkpoint, "--task", "xsum", "--output", str(tmp_path)]) == 2
    assert "pass --data" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", checkpoint, "--task", "udhr_translation", "--shots", "a",
                     "--output", str(tmp_path)]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"split": "test", "texts": {"en": "x"}}) + "\n")
    assert cli.main(["eval", "--checkpoint", checkpoint, "--task", "udhr_translation", "--data", str(bad),
                     "--output", str(tmp_path), "--no-progress"]) == 2
    assert "has no field 'texts.fr'" in capsys.readouterr().err


def test_generate_command(checkpoint, capsys):
    args = ["generate", "--checkpoint", checkpoint, "--prompt", "[CLM] Hello world", "--prompt", "Bonjour",
            "--max-new-tokens", "5"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    lm = alexatm_jax.load(checkpoint)
    sp = lm.tokenizer
    ids = [[sp.piece_to_id("[CLM]")] + sp.encode("Hello world") + [1], sp.encode("Bonjour") + [1]]
    expected = [t.strip() for t in lm.detokenize(lm.generate(ids, max_new_tokens=5))]
    assert lines == expected
    assert cli.main(args + ["--num-beams", "2"]) == 0
    assert cli.main(args + ["--sample", "--top-k", "5", "--seed", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
