"""make_optimizer: Adam's b2 is honoured and checked."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from recjax.train.state import make_optimizer


def _cfg(**kw):
  return ml_collections.ConfigDict(dict(
      name='adam', learning_rate=0.1, schedule='constant', warmup_steps=0,
      weight_decay=0.0, grad_clip_norm=0.0, **kw))


@pytest.mark.parametrize('b2', [0.999, 0.98])
def test_adam_b2_matches_optax(b2):
  params = {'w': jnp.array([1.0, -2.0, 3.0])}
  grads = [{'w': jnp.array(g)} for g in ([0.5, -1.0, 2.0], [3.0, 0.1, -1.0],
                                         [-0.2, 0.4, 0.3])]
  got, want = make_optimizer(_cfg(b2=b2)), optax.adam(0.1, b2=b2)
  s_got, s_want = got.init(params), want.init(params)
  for g in grads:
    u_got, s_got = got.update(g, s_got, params)
    u_want, s_want = want.update(g, s_want, params)
  np.testing.assert_allclose(u_got['w'], u_want['w'], rtol=1e-6)


def test_bad_b2_names_the_key():
  with pytest.raises(ValueError, match='optimizer.b2'):
    make_optimizer(_cfg(b2=1.0))
