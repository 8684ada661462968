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
    "numpy>=1.26,<3",
    "pyyaml>=6.0,<7",
    "tqdm>=4.66,<5",
    "matplotlib>=3.8,<4",
    "safetensors>=0.4,<1",
]

EXTRAS = {
    "cuda": ["jax[cuda12]>=0.9.0,<0.11"],
    "tpu": ["jax[tpu]>=0.9.0,<0.11"],
    # Reading PyTorch checkpoints (torch.load with weights_only=True). CPU build is enough.
    "convert": ["torch>=2.1,<3"],
    "notebooks": ["nbclient>=0.10,<1", "nbformat>=5.10,<6", "ipykernel>=6.29,<8"],
}
EXTRAS["test"] = sorted(set(
    ["pytest>=8,<10", "pytest-xdist>=3.5,<4"] + EXTRAS["convert"] + EXTRAS["notebooks"]))

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
        "alexatm_jax.task_cards": ["*.yaml"],
        "alexatm_jax.gin_configs": ["*/*.gin"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["alexatm-jax=alexatm_jax.cli:main"]},
    license="Apache-2.0",
)
