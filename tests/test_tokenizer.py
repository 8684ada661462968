"""The bundled SentencePiece vocabulary and the train-tokenizer command."""

import filecmp
import os

import pytest
import sentencepiece as spm

from alexatm_jax import cli
from alexatm_jax.data import bundled, tokenizer_training, vocab

MULTISCRIPT = ["Everyone has the right to life.", "Toute personne a droit à la vie.", "كل فرد له الحق في الحياة",
               "प्रत्येक व्यक्ति को जीवन का अधिकार है", "何人も、生命に対する権利を有する。", "ஒவ்வொருவருக்கும் உயிர் வாழ",
               "ప్రతి వ్యక్తికి జీవించే హక్కు", "Ξ ☃ 🙂 ꙮ"]


def test_bundled_vocabulary_layout():
    v = vocab.get_vocabulary()
    assert v.vocab_size <= 8192 and v.extra_ids == 100
    ids = vocab.special_token_ids(v)
    assert (ids["pad"], ids["eos"], ids["unk"], ids["bos"]) == (0, 1, 2, 3)
    assert (ids["mask"], ids["clm"], ids["doc"]) == (4, 5, 6)
    assert len(ids["tags"]) == tokenizer_training.NUM_RESERVED_TAGS
    assert ids["sentinels"][0] == v.vocab_size - 1
    # seqio's conventions: pad 0, eos 1.
    assert v.pad_id == 0 and v.eos_id == 1
    assert v.decode(ids["sentinels"][:1]) == "<extra_id_0>"


def test_special_tokens_are_single_pieces_and_round_trip():
    v = vocab.get_vocabulary()
    ids = vocab.special_token_ids(v)
    encoded = v.encode("[CLM] Sentence: hello [DOC] world [TAG_3]")
    assert ids["clm"] in encoded and ids["doc"] in encoded and ids["tags"][3] in encoded


def test_byte_fallback_no_unknown_in_any_script():
    v = vocab.get_vocabulary()
    for text in MULTISCRIPT:
        encoded = v.encode(text)
        assert 2 not in encoded, text
        assert v.decode(encoded) == text


def test_train_tokenizer_cli_is_deterministic_and_usable(tmp_path):
    docs = [rec["text"] for lang in ("en", "fr", "ja") for rec in bundled.pretrain_documents(lang, "validation")]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(d.replace("\n", " ") for d in docs), encoding="utf-8")
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        assert cli.main(["train-tokenizer", "--files", str(corpus), "--output", str(tmp_path / run / "spm"),
                         "--vocab-size", "1000"]) == 0
    assert filecmp.cmp(tmp_path / "a" / "spm.model", tmp_path / "b" / "spm.model", shallow=False)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "a" / "spm.model"))
    assert sp.get_piece_size() == 1000 and sp.id_to_piece(0) == "[PAD]" and sp.id_to_piece(5) == "[CLM]"
    v = vocab.get_vocabulary(str(tmp_path / "a" / "spm.model"), extra_ids=10)
    assert v.decode(v.encode(docs[0][:200].replace("\n", " "))) == docs[0][:200].replace("\n", " ")


def test_train_tokenizer_bad_input(tmp_path, capsys):
    assert cli.main(["train-tokenizer", "--files", str(tmp_path / "missing*.txt"),
                     "--output", str(tmp_path / "x")]) == 2
    assert "no files match" in capsys.readouterr().err
    with pytest.raises(ValueError, match="too small"):
        tokenizer_training.train_sentencepiece({"en": ["hi"]}, str(tmp_path / "y"), vocab_size=10)
    with pytest.raises(FileNotFoundError, match="train-tokenizer"):
        vocab.get_vocabulary(str(tmp_path / "nope.model"))
    assert not os.path.exists(tmp_path / "y.model")
