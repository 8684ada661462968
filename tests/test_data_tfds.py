"""The TFDS source path (mC4/Wikipedia for users with the data) on a small dataset built locally."""

import numpy as np
import tensorflow_datasets as tfds

from alexatm_jax.data import bundled, pipeline, tasks

TEXTS = [rec["text"] for rec in bundled.pretrain_documents("fr", "validation")]


class AlexatmTestWiki(tfds.core.GeneratorBasedBuilder):
    """A Wikipedia-shaped dataset (``title``, ``text``) of real French documents, prepared offline."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"title": tfds.features.Text(), "text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(TEXTS[:-8]), "validation": self._generate_examples(TEXTS[-8:])}

    def _generate_examples(self, texts):
        for i, text in enumerate(texts):
            yield i, {"title": f"doc {i}", "text": text}


def test_tfds_source_feeds_a_mixture(tmp_path):
    AlexatmTestWiki(data_dir=str(tmp_path)).download_and_prepare()
    source = tasks.tfds_source("alexatm_test_wiki:1.0.0", data_dir=str(tmp_path))
    assert source.num_input_examples("train") == len(TEXTS) - 8
    tasks.register_mixture("test_tfds_mix", {"fr": source}, ("denoise", "clm"))
    vocabulary = tasks.output_features()["targets"].vocabulary
    it = pipeline.make_batch_iterator("test_tfds_mix", {"inputs": 64, "targets": 64}, 4, seed=0)
    joined = " ".join(t.replace("\n", " ") for t in TEXTS)
    for _ in range(3):
        batch = next(it)
        assert batch["encoder_input_tokens"].shape == (4, 64)
        row = batch["decoder_target_tokens"][0]
        seg = batch["decoder_segment_ids"][0]
        first = [t for t in row[seg == 1].tolist() if t > 1]
        text = vocabulary.decode(first).replace("[DOC]", " ").replace("[CLM]", " ").split()
        # Every decoded target word comes from the prepared documents.
        assert all(word in joined for word in text)
    val = list(pipeline.make_batch_iterator("test_tfds_mix", {"inputs": 64, "targets": 64}, 4, split="validation",
                                            repeat=False, shuffle=False, pack=False))
    assert val and np.any(val[0]["decoder_loss_weights"])


def test_tfds_mixture_resumes_by_replaying(tmp_path):
    """A TFDS source has no random access: the state is a batch count and restoring replays up to it (exact,
    however many times)."""
    import json

    AlexatmTestWiki(data_dir=str(tmp_path)).download_and_prepare()
    source = tasks.tfds_source("alexatm_test_wiki:1.0.0", data_dir=str(tmp_path))
    tasks.register_mixture("test_tfds_resume", {"fr": source}, ("denoise", "clm"))
    kwargs = dict(task_feature_lengths={"inputs": 64, "targets": 64}, batch_size=4, seed=3)
    reference = pipeline.make_batch_iterator("test_tfds_resume", **kwargs)
    expected = [next(reference) for _ in range(7)]
    got, state = [], None
    for count in (3, 2, 2):
        it = pipeline.make_batch_iterator("test_tfds_resume", **kwargs)
        if state is not None:
            it.restore(state)
        got += [next(it) for _ in range(count)]
        state = json.loads(json.dumps(it.state()))
        assert state["positions"] is None and state["batches"] == len(got)
    for want, have in zip(expected, got):
        for key in want:
            np.testing.assert_array_equal(want[key], have[key])
