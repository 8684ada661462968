"""The trainer's batch iterator: features, packing without cross-attention, resumable state, sharding."""

import json

import numpy as np
import pytest

from alexatm_jax.data import nlu_tasks, pipeline, tasks  # noqa: F401  (nlu_tasks registers debian_section)

LENGTHS = {"inputs": 64, "targets": 64}


KW = dict(task_feature_lengths=LENGTHS, batch_size=4, seed=4)


@pytest.fixture(scope="module")
def run():
    """25 batches of the demo mixture, the iterator state after them, and the 10 batches that follow."""
    it = pipeline.make_batch_iterator("alexatm_demo", **KW)
    # Through many CLM/denoise tasks and languages before saving.
    before = [next(it) for _ in range(25)]
    state = json.loads(json.dumps(it.state()))
    after = [next(it) for _ in range(10)]
    return before, state, after


def _resumed_chain(name, generations, **kwargs):
    """The batches read by a chain of iterators, as a preemptible job killed again and again reads them: each
    iterator restores the (JSON round-tripped) state of the previous one, reads ``generations[g]`` batches and
    saves its own state."""
    batches, state = [], None
    for count in generations:
        it = pipeline.make_batch_iterator(name, **kwargs)
        if state is not None:
            it.restore(state)
        batches += [next(it) for _ in range(count)]
        state = json.loads(json.dumps(it.state()))
    return batches


def _assert_same_batches(expected, got):
    assert len(got) == len(expected)
    for index, (want, have) in enumerate(zip(expected, got)):
        assert set(want) == set(have)
        for key in want:
            np.testing.assert_array_equal(want[key], have[key], err_msg=f"batch {index}, {key}")


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
    assert len(json.dumps(state)) < 10_000  # counters, not buffers
    b = pipeline.make_batch_iterator("alexatm_demo", **KW).restore(state)
    _assert_same_batches(expected[:5], [next(b) for _ in range(5)])
    with pytest.raises(ValueError, match="different arguments"):
        b.restore(dict(state, fingerprint="0" * 16))
    with pytest.raises(ValueError, match="not a BatchIterator state"):
        b.restore({"batches": 3})
    # A state written by other pipeline code is refused before tf.data sees it (it could crash TensorFlow).
    with pytest.raises(ValueError, match="different version of the input pipeline"):
        b.restore(dict(state, pipeline="0" * 16))


def test_resumes_any_number_of_times(run):
    """Six generations (the sixth restores a state written by an iterator restored four times): exactly the
    batches of one uninterrupted iterator, none missing or repeated. tf.data's own iterator checkpoints failed
    at the sixth ("Expected 1 components but got 0", issue 10)."""
    before, _, after = run
    _assert_same_batches(before + after, _resumed_chain("alexatm_demo", (25, 2, 2, 2, 2, 2), **KW))


@pytest.mark.parametrize("shard", [0, 1])
def test_every_shard_resumes_any_number_of_times(shard):
    """Each process of a 2-process run saves and restores its own shard's state, generation after generation."""
    kwargs = dict(KW, shard_index=shard, num_shards=2)
    generations = (25, 2, 2, 2, 2, 2)
    reference = pipeline.make_batch_iterator("alexatm_demo", **kwargs)
    expected = [next(reference) for _ in range(sum(generations))]
    _assert_same_batches(expected, _resumed_chain("alexatm_demo", generations, **kwargs))
    other = pipeline.make_batch_iterator("alexatm_demo", **dict(kwargs, shard_index=1 - shard))
    assert not np.array_equal(next(other)["decoder_target_tokens"], expected[0]["decoder_target_tokens"])


def _nlu_language_mixture():
    """The 8 per-language Debian section tasks mixed (their test splits): several NLU tasks in one stream."""
    import seqio

    name = "test_debian_section_languages"
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(f"{nlu_tasks.TASK_NAME}_{lang}", 1.0) for lang in nlu_tasks.LANGS])
    return name


@pytest.mark.parametrize("case", ["task", "mixture"])
def test_nlu_data_resumes_any_number_of_times(case):
    """The fine-tuning task (one task: 185 batches of 32 rows run into the second epoch of its ~4000 train
    examples) and a mixture of NLU tasks resume the same way. tf.data's checkpoints of the mixture broke at the
    third generation ("Expected 6 components but got 0")."""
    if case == "task":
        name, generations = "debian_section", (30, 40, 25, 40, 20, 30)
        kwargs = dict(task_feature_lengths={"inputs": 64, "targets": 8}, batch_size=32, seed=1)
    else:
        name, generations = _nlu_language_mixture(), (25, 2, 2, 2, 2, 2)
        kwargs = dict(task_feature_lengths={"inputs": 64, "targets": 8}, batch_size=4, seed=3, split="test",
                      pack=False)
    reference = pipeline.make_batch_iterator(name, **kwargs)
    expected = [next(reference) for _ in range(sum(generations))]
    _assert_same_batches(expected, _resumed_chain(name, generations, **kwargs))


def test_restore_refuses_states_it_cannot_continue(run):
    _, state, _ = run
    it = pipeline.make_batch_iterator("alexatm_demo", **KW)
    tasks_now = dict(state["positions"]["tasks"])
    tasks_now.pop(sorted(tasks_now)[0])
    with pytest.raises(ValueError, match="positions for the tasks"):
        it.restore(dict(state, positions=dict(state["positions"], tasks=tasks_now)))
    with pytest.raises(ValueError, match="has version 1"):
        it.restore(dict(state, version=1))
    with pytest.raises(ValueError, match="has no positions"):
        it.restore(dict(state, positions=None))


def test_pack_rows_is_greedy_and_carries_the_resume_position():
    """Examples fill a row in order while both features fit; the row's cursor is the one after its last
    example; a finite stream's last row is flushed."""
    import tensorflow as tf

    sizes = [(3, 2), (2, 2), (4, 1), (1, 5), (6, 6), (2, 1), (4, 3)]
    examples = tf.data.Dataset.from_tensor_slices(tf.range(len(sizes), dtype=tf.int64)).map(
        lambda i: {"inputs": tf.fill([tf.gather([s[0] for s in sizes], i)], tf.cast(i, tf.int32) + 2),
                   "targets": tf.fill([tf.gather([s[1] for s in sizes], i)], tf.cast(i, tf.int32) + 2),
                   "cursor": tf.stack([i + 1, 7])})
    rows = list(pipeline.pack_rows(examples, {"inputs": 6, "targets": 6}, finite=True).as_numpy_iterator())
    # Greedy in order: [0, 1] (example 2 would overflow the inputs), [2, 3], [4], [5, 6].
    assert [row["inputs"].tolist() for row in rows] == [
        [2, 2, 2, 3, 3, 0], [4, 4, 4, 4, 5, 0], [6] * 6, [7, 7, 8, 8, 8, 8]]
    assert [row["targets_segment_ids"].tolist() for row in rows] == [
        [1, 1, 2, 2, 0, 0], [1, 2, 2, 2, 2, 2], [1] * 6, [1, 2, 2, 2, 0, 0]]
    assert [row["inputs_positions"].tolist() for row in rows] == [
        [0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0], [0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 2, 3]]
    assert [row["cursor"].tolist() for row in rows] == [[2, 7], [4, 7], [5, 7], [7, 7]]


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
    # The bundled tasks hold text: a run with its own tokenizer re-registers them with it (what train does).
    from alexatm_jax.data import tasks
    try:
        tasks.use_vocabulary_for_bundled(str(tmp_path / "other.model"))
        for name in ("alexatm_demo", "debian_section", "debian_section_ja"):
            assert tasks.is_bundled(name)
            pipeline.check_vocabulary(name, str(tmp_path / "other.model"))
        assert not tasks.is_bundled("my_task")
    finally:
        tasks.use_vocabulary_for_bundled(bundled.bundled_spm_path())
    pipeline.check_vocabulary("debian_section", bundled.bundled_spm_path())


def test_thread_count_changes_speed_never_batches(run):
    before, state, after = run
    one = pipeline.make_batch_iterator("alexatm_demo", num_threads=1, **KW)
    _assert_same_batches(before[:5], [next(one) for _ in range(5)])
    # A state saved with the default pool restores into a one-thread iterator, and vice versa.
    resumed = pipeline.make_batch_iterator("alexatm_demo", num_threads=1, **KW).restore(state)
    _assert_same_batches(after[:3], [next(resumed) for _ in range(3)])


def test_data_threads_sources_and_bad_values(monkeypatch):
    import os

    monkeypatch.delenv(pipeline.THREADS_ENV, raising=False)
    assert pipeline.data_threads() == len(os.sched_getaffinity(0))
    assert pipeline.data_threads(3) == 3
    monkeypatch.setenv(pipeline.THREADS_ENV, "5")
    assert pipeline.data_threads() == 5 and pipeline.data_threads(2) == 2  # the argument wins
    for bad in ("many", "0", "-2", "1.5"):
        monkeypatch.setenv(pipeline.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=f"{pipeline.THREADS_ENV}='{bad}' is not a thread count"):
            pipeline.data_threads()
    with pytest.raises(ValueError, match="at least one thread"):
        pipeline.data_threads(0)
