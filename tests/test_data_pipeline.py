"""The trainer's batch iterator: features, packing without cross-attention, resumable state, sharding."""

import json

import numpy as np
import pytest

from alexatm_jax.data import pipeline, tasks

LENGTHS = {"inputs": 64, "targets": 64}


KW = dict(task_feature_lengths=LENGTHS, batch_size=4, seed=4)


@pytest.fixture(scope="module")
def run():
    """25 batches of the demo mixture, the iterator state after them, and the 5 batches that follow."""
    it = pipeline.make_batch_iterator("alexatm_demo", **KW)
    # Past the first shuffle-buffer fills and through many CLM/denoise tasks before saving.
    before = [next(it) for _ in range(25)]
    state = json.loads(json.dumps(it.state()))
    after = [next(it) for _ in range(5)]
    return before, state, after


@pytest.fixture(scope="module")
def batches(run):
    return run[0] + run[2]


def test_batch_keys_shapes_dtypes(batches):
    for batch in batches:
        assert set(batch) == set(pipeline.BATCH_KEYS)
        for key, value in batch.items():
            assert value.shape == (4, 64)
            assert value.dtype == (np.float32 if key == "decoder_loss_weights" else np.int32)


def test_packed_segments_never_attend_across(batches):
    for batch in batches:
        for row in range(4):
            for side in ("encoder", "decoder"):
                seg = batch[f"{side}_segment_ids"][row]
                pos = batch[f"{side}_positions"][row]
                real = seg > 0
                # Segments are contiguous blocks numbered 1, 2, ... followed by padding only.
                assert np.all(np.diff(seg[real]) >= 0) and not np.any(real[np.argmin(real):]) or real.all()
                for s in np.unique(seg[real]):
                    idx = np.flatnonzero(seg == s)
                    assert np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))
                    assert np.array_equal(pos[idx], np.arange(len(idx)))  # positions restart per segment
            enc, dec = batch["encoder_segment_ids"][row], batch["decoder_segment_ids"][row]
            assert set(np.unique(enc[enc > 0])) == set(np.unique(dec[dec > 0]))
            # The decoder's first input token of every segment is the start id (0), not the previous
            # segment's last target: no information crosses a segment boundary.
            starts = np.flatnonzero((dec > 0) & (batch["decoder_positions"][row] == 0))
            assert np.all(batch["decoder_input_tokens"][row][starts] == 0)
            assert np.array_equal(batch["decoder_loss_weights"][row] > 0, dec > 0)


def test_state_restore_gives_identical_batches(run):
    _, state, expected = run
    assert len(json.dumps(state)) < 2_000_000
    b = pipeline.make_batch_iterator("alexatm_demo", **KW).restore(state)
    for want, got in zip(expected, [next(b) for _ in range(5)]):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    with pytest.raises(ValueError, match="different arguments"):
        b.restore(dict(state, fingerprint="0" * 16))
    with pytest.raises(ValueError, match="not a BatchIterator state"):
        b.restore({"batches": 3})
    # A state written by other pipeline code is refused before tf.data sees it (it could crash TensorFlow).
    with pytest.raises(ValueError, match="different version of the input pipeline"):
        b.restore(dict(state, pipeline="0" * 16))


def test_unpacked_validation_has_segment_ids_and_pads_last_batch():
    it = pipeline.make_batch_iterator("alexatm_demo", LENGTHS, 64, split="validation", pack=False, shuffle=False,
                                      repeat=False)
    batches = list(it)
    assert batches
    for batch in batches:
        seg = batch["encoder_segment_ids"]
        assert set(np.unique(seg)) <= {0, 1}
        np.testing.assert_array_equal(seg, (batch["encoder_input_tokens"] != 0).astype(np.int32))
    assert (batches[-1]["decoder_loss_weights"].sum(axis=1) == 0).any()  # padded rows


def test_shards_are_disjoint_and_complete(tmp_path):
    docs = [f"document number {i} about topic{i} with enough words to split" for i in range(40)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    tasks.register_mixture("test_shard_mix", {"en": tasks.files_source({"train": str(path)})}, ("clm",),
                           objective_rates={"clm": 1.0})
    vocabulary = tasks.output_features()["targets"].vocabulary
    seen = []
    for shard in range(2):
        it = pipeline.make_batch_iterator("test_shard_mix", LENGTHS, 8, shard_index=shard, num_shards=2,
                                          pack=False, repeat=False, seed=shard)
        texts = set()
        for batch in it:
            for row in range(8):
                if batch["encoder_segment_ids"][row].any():
                    inp = [t for t in batch["encoder_input_tokens"][row].tolist() if t > 1]
                    tgt = [t for t in batch["decoder_target_tokens"][row].tolist() if t > 1]
                    texts.add(vocabulary.decode(inp[1:] + tgt))
        seen.append(texts)
    assert not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1]) == 20
    assert {t.replace(" ", "") for t in seen[0] | seen[1]} == {d.replace(" ", "") for d in docs}


def test_bad_arguments():
    with pytest.raises(ValueError, match="no seqio task or mixture named 'nope'"):
        pipeline.make_batch_iterator("nope", LENGTHS, 2)
    with pytest.raises(ValueError, match="exactly the keys"):
        pipeline.make_batch_iterator("alexatm_demo", {"inputs": 64}, 2)
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.make_batch_iterator("alexatm_demo", LENGTHS, 2, shard_index=2, num_shards=2)


def test_mixture_vocabulary_must_match_the_run_tokenizer(tmp_path):
    import sentencepiece as spm
    from alexatm_jax.data import bundled

    pipeline.check_vocabulary("alexatm_demo", bundled.bundled_spm_path())  # the same model: fine
    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"another tokenizer, line {i}" for i in range(100)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "other"), vocab_size=30)
    with pytest.raises(ValueError, match="tokenizes with .* but the run's tokenizer is"):
        pipeline.check_vocabulary("alexatm_demo", str(tmp_path / "other.model"))
