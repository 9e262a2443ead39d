"""jaxpost: JAX-native LLM post-training (SFT, reward models, DPO family, PPO, GRPO family)."""
import os

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax",
    "orbax-checkpoint",
    "grain",
    "sentencepiece",
    "ml-collections",
    "absl-py",
    "tokenizers",
    "jinja2",
    "safetensors",
    "tensorboardX",
    "tqdm",
    "numpy",
    "math-verify",
    "qwix",          # Quantised frozen bases for QLoRA (jaxpost/models/lora.py).
]

EXTRAS = {
    # Test-only references: torch is pinned to the CPU wheel (plain `torch` pulls GBs of CUDA).
    "test": ["pytest", "pytest-xdist", "torch==2.13.0", "transformers", "peft",
             "trl",  # TRL's own loss code, the reference tests/algorithms/test_trl_parity.py compares with.
             "nbclient", "nbformat", "ipykernel", "matplotlib"],  # The last four run notebooks/quickstart.ipynb.
    "tpu": ["jax[tpu]"],
    "gpu": ["jax[cuda12]"],
}

# The repository's top-level kernels/, configs/ and assets/ folders install inside the package (as
# jaxpost/kernels/*, jaxpost/configs and jaxpost/assets), so that an installed jaxpost (wheel, `pip install
# git+URL`) runs the bundled configs and the demo without a checkout. kernels/ has no __init__.py of its own:
# from the repository root it is at most a namespace portion, which a regular package named `kernels`
# elsewhere on sys.path (the PyPI package that transformers imports) always wins over. jaxpost/kernels/
# __init__.py is the package's own; in a checkout its __path__ reaches the top-level folder.
KERNEL_DIRS = {"jaxpost.kernels." + p: os.path.join("kernels", *p.split("."))
               for p in setuptools.find_packages("kernels")}

setuptools.setup(
    name="jaxpost",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",  # jax >= 0.10 needs 3.11; requirements/lock.txt is resolved for 3.11 and up.
    packages=setuptools.find_packages(include=["jaxpost", "jaxpost.*"]) + list(KERNEL_DIRS)
    + ["jaxpost.configs", "jaxpost.assets"],
    package_dir={**KERNEL_DIRS, "jaxpost.configs": "configs", "jaxpost.assets": "assets"},
    package_data={"jaxpost.configs": ["*.py"], "jaxpost.assets": ["*/*.jsonl", "*/*.model"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
