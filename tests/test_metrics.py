"""Every metric equals a direct sacrebleu / rouge-score call on the same strings, on Latin, Cyrillic,
Devanagari and Japanese text; the multilingual ROUGE tokenizer fixes rouge-score's ASCII-only default."""

import os

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from alexatm_jax.data.bundled import bundled_spm_path
from alexatm_jax.evaluation import metrics

TEXTS = {
    "latin": (["The cat sat on the mat.", "Il fait beau aujourd'hui à Paris.", "Ein kleiner Test"],
              ["The cat is sitting on the mat.", "Il fait très beau aujourd'hui à Paris.", "Ein kleiner Test"]),
    "cyrillic": (["Все люди рождаются свободными.", "Кошка сидит на ковре"],
                 ["Все люди рождаются свободными и равными.", "Кот сидит на ковре"]),
    "devanagari": (["सभी मनुष्य जन्म से स्वतंत्र हैं।", "यह एक परीक्षा है"],
                   ["सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतंत्रता प्राप्त है।", "यह एक परीक्षा है"]),
    "japanese": (["すべての人間は、生まれながらにして自由である。", "猫がマットの上に座っている"],
                 ["すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。",
                  "猫がマットの上に座った"]),
}


@pytest.mark.parametrize("script", sorted(TEXTS))
def test_bleu_and_chrf_equal_sacrebleu(script):
    hyps, refs = TEXTS[script]
    ours = metrics.bleu(hyps, refs)
    direct = sacrebleu.metrics.BLEU()
    assert ours.score == direct.corpus_score(hyps, [refs]).score
    assert ours.signature == str(direct.get_signature()) and "tok:13a" in ours.signature
    for word_order, name in ((0, "chrf"), (2, "chrf++")):
        ours = metrics.chrf(hyps, refs, word_order=word_order)
        direct = sacrebleu.metrics.CHRF(word_order=word_order)
        assert ours.name == name
        assert ours.score == direct.corpus_score(hyps, [refs]).score
        assert ours.signature == str(direct.get_signature())
        assert 0 < ours.score <= 100


@pytest.mark.parametrize("script", sorted(TEXTS))
def test_spbleu_without_official_model_uses_given_spm_and_says_so(script, tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "official_flores_spm_path", lambda: str(tmp_path / "absent.model"))
    hyps, refs = TEXTS[script]
    spm_path = bundled_spm_path()
    ours = metrics.spbleu(hyps, refs, spm_path=spm_path)
    import sentencepiece as spm
    processor = spm.SentencePieceProcessor(model_file=spm_path)
    pieces = lambda t: " ".join(processor.encode(t, out_type=str))  # noqa: E731
    direct = sacrebleu.metrics.BLEU(tokenize="none").corpus_score([pieces(h) for h in hyps],
                                                                  [[pieces(r) for r in refs]])
    assert ours.score == direct.score
    assert "tok:none" in ours.signature
    assert "not the official flores101 tokenizer" in ours.signature
    assert "alexatm_demo.model" in ours.signature
    with pytest.raises(ValueError, match="SentencePiece model"):
        metrics.spbleu(hyps, refs, spm_path=None)


def test_spbleu_uses_official_flores_tokenizer_when_its_model_is_cached(tmp_path, monkeypatch):
    # Stand a SentencePiece model in for the official file, where sacrebleu looks for it.
    from sacrebleu import utils
    from sacrebleu.tokenizers import tokenizer_spm
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(bundled_spm_path(), models / "sacrebleu_tokenizer_spm.model")
    monkeypatch.setattr(utils, "SACREBLEU_DIR", str(tmp_path))
    monkeypatch.setattr(tokenizer_spm, "SACREBLEU_DIR", str(tmp_path))
    hyps, refs = TEXTS["cyrillic"]
    ours = metrics.spbleu(hyps, refs, spm_path=None)
    direct = sacrebleu.metrics.BLEU(tokenize="flores101")
    assert ours.score == direct.corpus_score(hyps, [refs]).score
    assert "tok:flores101" in ours.signature and "not the official" not in ours.signature


def test_rouge_default_tokenizer_fails_on_non_latin_and_ours_does_not():
    default = rouge_scorer.RougeScorer(["rouge1"])
    ours = metrics.rouge(["Все люди рождаются свободными"], ["Все люди рождаются свободными"])
    assert default.score("Все люди рождаются свободными", "Все люди рождаются свободными")["rouge1"].fmeasure == 0
    assert ours["rouge1"].score == 100.0
    assert metrics.rouge(["猫が座る"], ["猫が座る"])["rouge2"].score == 100.0


def test_multilingual_tokenizer():
    tok = metrics.MultilingualTokenizer()
    assert tok.tokenize("The Cat, sat!") == ["the", "cat", "sat"]
    assert tok.tokenize("Все люди") == ["все", "люди"]
    # Devanagari vowel signs (combining marks) stay inside their word.
    assert tok.tokenize("सभी मनुष्य जन्म से स्वतंत्र हैं।") == ["सभी", "मनुष्य", "जन्म", "से", "स्वतंत्र", "हैं"]
    assert tok.tokenize("猫がマットの上") == ["猫", "が", "マ", "ッ", "ト", "の", "上"]
    assert tok.tokenize("ＡＢＣ 123") == ["abc", "123"]  # NFKC folds full-width forms


@pytest.mark.parametrize("script", sorted(TEXTS))
def test_rouge_equals_rouge_score_with_our_tokenizer(script):
    hyps, refs = TEXTS[script]
    ours = metrics.rouge(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=metrics.MultilingualTokenizer())
    for kind in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(scorer.score(r, h)[kind].fmeasure for h, r in zip(hyps, refs)) / len(hyps)
        assert ours[kind].score == pytest.approx(expected, abs=1e-9)
        assert 0 < ours[kind].score <= 100
        assert "multilingual" in ours[kind].signature
    if script == "latin":
        # On ASCII text our tokenizer agrees with rouge-score's default.
        default = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
        for kind in ("rouge1", "rouge2", "rougeL"):
            expected = 100 * sum(default.score(r, h)[kind].fmeasure for h, r in zip(hyps[:1], refs[:1]))
            assert metrics.rouge(hyps[:1], refs[:1])[kind].score == pytest.approx(expected, abs=1e-9)


def test_exact_match_and_accuracy():
    assert metrics.exact_match(["Paris ", "ＬＯＮＤＯＮ", "Rome"], ["paris", "london", "Milan"]).score == \
        pytest.approx(200 / 3)
    assert metrics.accuracy([0, 2, 1, 1], [0, 2, 0, 1]).score == 75.0
    with pytest.raises(ValueError, match="pair up"):
        metrics.bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="Unknown metric"):
        metrics.compute("meteor", ["a"], ["a"])


def test_compute_dispatch():
    hyps, refs = TEXTS["latin"]
    names = [r.name for r in metrics.compute("rouge", hyps, refs)]
    assert names == ["rouge1", "rouge2", "rougeL"]
    assert metrics.compute("chrf++", hyps, refs)[0].score == metrics.chrf(hyps, refs, word_order=2).score
