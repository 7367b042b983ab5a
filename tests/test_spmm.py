"""CSR spmm: the C++ kernel and the XLA path agree with dense maths, and
their gradients match autodiff of the dense product."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax.ops import spmm as spmm_lib
from recjax.ops.spmm import CsrMatrix, spmm

BACKENDS = ['xla'] + (['ffi'] if spmm_lib.ffi_available() else [])


def _random_coo(rng, r, c, nnz):
  key = np.unique(rng.integers(0, r * c, size=nnz))
  return key // c, key % c, rng.normal(size=len(key)).astype(np.float32)


@pytest.mark.parametrize('backend', BACKENDS)
def test_matches_dense_and_grad(backend):
  rng = np.random.default_rng(0)
  rows, cols, w = _random_coo(rng, 30, 20, 150)
  dense = np.zeros((30, 20), np.float32)
  dense[rows, cols] = w
  a = CsrMatrix.from_coo(rows, cols, w, (30, 20))
  at = CsrMatrix.from_coo(cols, rows, w, (20, 30))
  x = jnp.asarray(rng.normal(size=(20, 8)), jnp.float32)
  np.testing.assert_allclose(spmm(a, x, at, backend=backend), dense @ x,
                             rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda x: jnp.sum(jnp.sin(spmm(a, x, at, backend=backend))))(x)
  g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(dense @ x)))(x)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('backend', BACKENDS)
def test_symmetric_backward(backend):
  rng = np.random.default_rng(1)
  rows, cols, w = _random_coo(rng, 25, 25, 120)
  dense = np.zeros((25, 25), np.float32)
  dense[rows, cols] = w
  dense = dense + dense.T
  r, c = np.nonzero(dense)
  a = CsrMatrix.from_coo(r, c, dense[r, c], (25, 25))
  x = jnp.asarray(rng.normal(size=(25, 4)), jnp.float32)
  f = lambda x: jnp.sum(spmm(a, spmm(a, x, backend=backend),
                             backend=backend) ** 2)
  g_ref = jax.grad(lambda x: jnp.sum((dense @ (dense @ x)) ** 2))(x)
  np.testing.assert_allclose(jax.grad(f)(x), g_ref, rtol=1e-4, atol=1e-4)


def test_rows_without_edges_are_zero_and_errors_are_clear():
  a = CsrMatrix.from_coo(np.array([0]), np.array([1]),
                         np.array([2.0], np.float32), (3, 3))
  x = jnp.ones((3, 2))
  out = np.asarray(spmm(a, x, a))
  np.testing.assert_array_equal(out, [[2, 2], [0, 0], [0, 0]])
  with pytest.raises(ValueError, match='shape'):
    spmm(a, jnp.ones((4, 2)), a)
  with pytest.raises(ValueError, match='backend'):
    spmm(a, x, a, backend='cuda')
