"""Algorithms as pure losses: `loss_fn(params, batch, frozen) -> (loss_sum, metric_sums)`.

The train step divides both by `normalizer(batch)` over the global batch (see jaxpost/step.py).
"""
