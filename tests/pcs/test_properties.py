"""Property-based tests (hypothesis) of the invariants pcs promises for any input."""

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax

import pcs
from pcs import implicit

# XLA on CPU flushes subnormal numbers to zero (see README), so inputs stay clear of them: with
# beta <= 1e6, m0 <= 1e3 for tiny x, and w0 = x / m0 is normal whenever |x| >= 1e-300.
magnitudes = st.floats(1e-300, 1e30)
finite64 = st.one_of(st.just(0.0), magnitudes, magnitudes.map(lambda v: -v))


@hypothesis.given(hnp.arrays(np.float64, st.integers(1, 16), elements=finite64),
                  st.floats(1e-6, 1e6))
def test_init_identities_for_any_x_and_beta(x, beta):
  with jax.enable_x64(True):
    m0, w0 = (np.asarray(v) for v in pcs.product_init(jnp.asarray(x), beta))
  np.testing.assert_allclose(m0 * w0, x, rtol=1e-14, atol=0)
  assert np.all(np.abs(m0**2 - w0**2 - beta) <= 1e-14 * (beta + 2 * np.abs(x)))
  assert np.all(m0 >= np.abs(w0))


shapes = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 3)),
                  min_size=1, max_size=3)


def _params(shape_list, seed):
  rng = np.random.default_rng(seed)
  return {f'layer{i}': jnp.asarray(rng.normal(size=s), jnp.float32)
          for i, s in enumerate(shape_list)}


@hypothesis.given(shapes, st.floats(0.0, 0.999), st.integers(0, 2**31 - 1))
def test_prune_hits_the_exact_target(shape_list, sparsity, seed):
  params = _params(shape_list, seed)
  pruned, masks = pcs.prune(params, sparsity, scope='layerwise')
  for name, x in params.items():
    assert int(jnp.sum(~masks[name])) == round(sparsity * x.size)
    assert int(jnp.sum(pruned[name] == 0)) == round(sparsity * x.size)
  pruned, masks = pcs.prune(params, sparsity, scope='global')
  total = sum(x.size for x in params.values())
  assert sum(int(jnp.sum(~m)) for m in masks.values()) == round(sparsity * total)


@hypothesis.given(shapes, st.floats(0.0, 0.95), st.integers(0, 2**31 - 1))
def test_keep_masked_keeps_masks_fixed(shape_list, sparsity, seed):
  params = _params(shape_list, seed)
  pruned, masks = pcs.prune(params, sparsity, scope='layerwise')
  tx = pcs.keep_masked(optax.adam(0.1), masks)
  state = tx.init(pruned)
  rng = np.random.default_rng(seed + 1)
  for _ in range(3):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), pruned)
    updates, state = tx.update(grads, state, pruned)
    pruned = optax.apply_updates(pruned, updates)
  for name in params:
    assert bool(jnp.all(jnp.where(masks[name], True, pruned[name] == 0)))


leaf_shapes = st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple)
trees = st.recursive(leaf_shapes, lambda children: st.one_of(
    st.lists(children, min_size=1, max_size=3),
    st.dictionaries(st.sampled_from('abcd'), children, min_size=1, max_size=3)), max_leaves=6)
# Every leaf selected, scalars included: a drawn tree may hold no kernel, and a `where`
# that selects nothing is an error.
EVERY_LEAF = lambda path, leaf: True
TRANSFORMS = [
    lambda: pcs.pilot(optax.adam(1e-2), alpha=1e-2, where=EVERY_LEAF),
    lambda: pcs.mirror(optax.sgd(1e-2), alpha=1e-2, learning_rate=1e-2, where=EVERY_LEAF),
    lambda: pcs.soft_threshold(optax.sgd(1e-2), weight_decay=1e-3, where=EVERY_LEAF),
    lambda: pcs.l1(optax.sgd(1e-2), strength=1.0, learning_rate=1e-2, where=EVERY_LEAF),
    lambda: pcs.gmp(optax.sgd(1e-2), final_sparsity=0.5, begin_step=0, end_step=2, frequency=1,
                    where=EVERY_LEAF),
]


@hypothesis.given(trees, st.integers(0, len(TRANSFORMS) - 1))
def test_updates_always_match_the_params_tree(shape_tree, which):
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shape_tree,
                        is_leaf=lambda n: isinstance(n, tuple))
  tx = TRANSFORMS[which]()
  state = tx.init(params)
  update = jax.jit(tx.update)  # one compilation per drawn tree, not one per operation
  for _ in range(2):
    updates, state = update(jax.tree.map(jnp.ones_like, params), state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for u, x in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.shape == x.shape and u.dtype == x.dtype and bool(jnp.all(jnp.isfinite(u)))
    params = optax.apply_updates(params, updates)


@hypothesis.given(hnp.arrays(np.float32, 16,
                             elements=st.floats(-3.0000000054977558e+38, 3.0000000054977558e+38,
                                                width=32, allow_nan=False, allow_infinity=False)),
                  st.floats(-1e4, 80.0), st.floats(-1e3, 1e3))
def test_mirror_never_produces_inf_or_nan(x, log_a, step):
  z = implicit.mirror_map(jnp.asarray(x), log_a)
  assert bool(jnp.all(jnp.isfinite(z)))
  assert bool(jnp.all(jnp.isfinite(implicit.inverse_mirror_map(z + step, log_a))))
  # The transform, from beta = 2 a_0 (down to 1e-304, below float32's range) with a decay.
  params = {'kernel': jnp.asarray(x).reshape(4, 4)}
  tx = pcs.mirror(optax.sgd(1.0), alpha=abs(step), beta=2 * float(np.exp(max(log_a, -700.0))),
                  learning_rate=1.0)
  state = tx.init(params)
  assert bool(jnp.isfinite(state.log_a))
  updates, _ = jax.jit(tx.update)({'kernel': jnp.full((4, 4), step, jnp.float32)}, state, params)
  assert bool(jnp.all(jnp.isfinite(optax.apply_updates(params, updates)['kernel'])))
