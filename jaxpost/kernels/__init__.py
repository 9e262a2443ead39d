"""Pallas kernels, each beside its pure-jnp reference: `jaxpost.kernels.attention`, `jaxpost.kernels.logprobs`.

Their code lives in the repository's top-level `kernels/` folder, which has no `__init__.py` of its own, so
that it never imports as a top-level `kernels` (the PyPI package of that name, which transformers imports,
always wins over a namespace portion on sys.path). setup.py installs its subpackages here, beside this file;
in a checkout (editable install, or the repository root on sys.path) this `__path__` entry finds them there.
"""
import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.join(_os.path.dirname(_os.path.dirname(_here)), "kernels")
if not _os.path.isdir(_os.path.join(_here, "attention")) and _os.path.isdir(_os.path.join(_checkout, "attention")):
  __path__.append(_checkout)  # noqa: F821 (a package's __path__)
