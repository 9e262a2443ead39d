"""The model's XLA attention is the kernels' oracle with the model's numerics (upcast=False).

Expected values: `_old_xla_attention` is the formula the model ran before it called the kernels'
`attention_reference` (bf16 dots with f32 logits, softmax over a finite mask fill, probabilities cast
to v's dtype). Sharing the oracle's code must not change the model's numbers: bit for bit, forward and
backward. Against the f32 HIGHEST oracle (upcast=True) it agrees only to bf16 rounding: probabilities
rounded to bf16 (rel. 2^-9) and a bf16 output, so 2e-2 of the largest entry.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxpost.kernels.attention import reference
from jaxpost.models import attention

B, T, S, H, K, D = 2, 10, 10, 4, 2, 16
# Row 0 packs two examples; row 1's first query sees no key of its segment (its id appears only in
# the queries, so kv ids differ there): a fully masked row, which must give zeros, not NaN.
Q_SEG = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 2], [9, 0, 0, 0, 0, 0, 1, 1, 1, 1]], jnp.int32)
KV_SEG = Q_SEG.at[1, 0].set(0)
OPTIONS = dict(sliding_window=4, logit_softcap=3.0)


def _old_xla_attention(q, k, v, *, q_segment_ids, kv_segment_ids, sliding_window, logit_softcap):
  """Copy of jaxpost.models.attention.xla_attention before it called the kernels' reference."""
  b, t, h, d = q.shape
  s = k.shape[1]
  qg = q.reshape(b, t, k.shape[2], h // k.shape[2], d)  # (B, T, K, G, D)
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * d ** -0.5
  logits = logit_softcap * jnp.tanh(logits / logit_softcap)
  q_pos, k_pos = jnp.arange(t)[:, None] + (s - t), jnp.arange(s)[None, :]
  mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]  # (B, T, S)
  mask = (mask & (k_pos <= q_pos)[None] & (k_pos > q_pos - sliding_window)[None])[:, None, None]
  probs = jax.nn.softmax(jnp.where(mask, logits, -0.7 * float(jnp.finfo(jnp.float32).max)), axis=-1)
  probs = jnp.where(mask, probs, 0.0).astype(v.dtype)
  return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)


def _inputs(dtype):
  kq, kk, kv, kd = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(kq, (B, T, H, D), jnp.float32).astype(dtype)
  k = jax.random.normal(kk, (B, S, K, D), jnp.float32).astype(dtype)
  v = jax.random.normal(kv, (B, S, K, D), jnp.float32).astype(dtype)
  return q, k, v, jax.random.normal(kd, (B, T, H, D), jnp.float32).astype(dtype)


def _out_and_grads(fn, q, k, v, do):
  """out and (dq, dk, dv) for the cotangent do, in one jit (one compile), as f32 numpy."""
  def run(q, k, v):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, q_segment_ids=Q_SEG, kv_segment_ids=KV_SEG, **OPTIONS),
                       q, k, v)
    return (out, *vjp(do))
  return [np.asarray(x, np.float32) for x in jax.jit(run)(q, k, v)]


def test_xla_attention_keeps_the_old_numbers_and_matches_the_oracle():
  q, k, v, do = _inputs(jnp.bfloat16)
  model = _out_and_grads(attention.xla_attention, q, k, v, do)
  assert not np.any(model[0][1, 0]) and np.all(np.isfinite(model[1]))  # fully masked query: 0, finite dq
  old = _out_and_grads(_old_xla_attention, q, k, v, do)
  oracle = _out_and_grads(reference.attention_reference, q, k, v, do)  # upcast=True: f32, HIGHEST
  for name, x, want, ref in zip(("out", "dq", "dk", "dv"), model, old, oracle):
    np.testing.assert_array_equal(x, want, err_msg=name)  # bit for bit, forward and backward
    np.testing.assert_allclose(x, ref, atol=2e-2 * np.max(np.abs(ref)), err_msg=name)


def test_model_mask_is_the_kernels_mask():
  # q position p = S - T + t sees keys p-3..p of its own segment (window W = 4).
  mask = np.asarray(attention.attention_mask(Q_SEG, KV_SEG, sliding_window=4))  # (B, T, S)
  p, s = np.arange(T)[:, None] + (S - T), np.arange(S)[None, :]
  want = (np.asarray(Q_SEG)[:, :, None] == np.asarray(KV_SEG)[:, None, :]) & (s <= p) & (s > p - 4)
  np.testing.assert_array_equal(mask, want)
