"""jaxpost: JAX-native LLM post-training (SFT, reward models, DPO family, PPO, GRPO family)."""
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
             "nbclient", "nbformat", "ipykernel", "matplotlib"],  # The last four run notebooks/quickstart.ipynb.
    "tpu": ["jax[tpu]"],
    "gpu": ["jax[cuda12]"],
}

setuptools.setup(
    name="jaxpost",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    # The top-level kernels/ folder is importable only as jaxpost.kernels: a top-level `kernels`
    # module would shadow the PyPI package of that name that transformers probes for.
    packages=setuptools.find_packages(include=["jaxpost", "jaxpost.*"])
    + ["jaxpost.kernels" + p[len("kernels"):] for p in setuptools.find_packages(include=["kernels", "kernels.*"])],
    package_dir={"jaxpost.kernels": "kernels"},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
