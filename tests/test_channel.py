"""The seed's 1D time + channel attention: the causal channel attention against its step-by-step reference,
causality by gradients, both branches trained, and the seed's output scale."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from r1jax import reference
from r1jax.mixers.channel import TimeChannelAttention, TimeChannelOptions, causal_channel_attention

from helpers import assert_causal, mixer_config


@pytest.mark.parametrize("shape", [(2, 7, 3, 4), (1, 12, 2, 8)])
def test_channel_attention_equals_the_step_by_step_reference(shape):
  q, k, v = (jax.random.normal(jax.random.key(i), shape) for i in range(3))
  want = reference.channel_attention(q, k, v)
  np.testing.assert_allclose(causal_channel_attention(q, k, v), want, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("time", [True, False])
def test_time_channel_is_causal(time):
  assert_causal(TimeChannelAttention(mixer_config(d_model=16, heads=2), TimeChannelOptions(time=time)))


@pytest.mark.slow
def test_both_branches_get_gradients_and_the_seed_scale_is_head_dim_to_the_minus_half():
  cfg = mixer_config(d_model=16, heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  scaled, plain = (TimeChannelAttention(cfg, TimeChannelOptions(seed_scale=s)) for s in (True, False))
  params = nn.meta.unbox(scaled.init(jax.random.key(1), x, deterministic=True))
  np.testing.assert_allclose(
    scaled.apply(params, x, deterministic=True)[0],
    plain.apply(params, x, deterministic=True)[0] * 8**-0.5,
    rtol=1e-5,
    atol=1e-7,
  )
  grads = jax.grad(lambda p: (scaled.apply(p, x, deterministic=True)[0] ** 2).sum())(params)
  assert set(grads["params"]) == {"time", "channel"}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(np.asarray(g)).sum() > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"
