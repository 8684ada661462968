"""Data for AlexaTM-style pretraining: the bundled corpus, the vocabulary, seqio tasks/mixtures, batches.

Submodules (import what you need; importing this package imports neither TensorFlow nor seqio):
``bundled`` (paths to the committed corpus), ``vocab`` (SentencePiece vocabulary), ``preprocessors``
(denoising, CLM, T5 span corruption, UL2), ``tasks`` (seqio registrations), ``pipeline`` (batch iterator).
"""
