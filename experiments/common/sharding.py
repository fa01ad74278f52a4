"""Where the train state lives on the ('data',) mesh: replicated, or sharded FSDP-style.

With ``param_sharding='fsdp'`` (ZeRO-3 style) every large parameter is split along
its largest axis that the data axis divides, and the optimizer state follows the
parameters: its specs are derived from the params' with
``optax.tree_utils.tree_map_params``, so pcs latents (pilot's m, STR's w) and inner
moments are sharded like the weight they belong to. ``jax.jit`` is given these
shardings and GSPMD inserts the gathers. Small leaves (biases, norm scales, scalars)
stay replicated.
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

import pcs

PARAM_SHARDINGS = ('replicated', 'fsdp')
MIN_SHARDED_SIZE = 2**12  # elements: smaller leaves are not worth a gather


def leaf_spec(shape, axis_size: int) -> P:
  """P() for small leaves; else the largest axis that ``axis_size`` divides on 'data'."""
  if int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % axis_size == 0:
      return P(*([None] * axis + ['data']))
  return P()


def param_specs(params: Any, mesh: jax.sharding.Mesh, mode: str) -> Any:
  """PartitionSpecs of the params: all ``P()`` when replicated, :func:`leaf_spec` for fsdp."""
  if mode not in PARAM_SHARDINGS:
    raise ValueError(f'`param_sharding` must be one of {PARAM_SHARDINGS}; got {mode!r}.')
  if mode == 'replicated':
    return jax.tree.map(lambda _: P(), params)
  return jax.tree.map(lambda x: leaf_spec(jnp.shape(x), mesh.shape['data']), params)


def state_specs(tx: optax.GradientTransformation, opt_state: Any, params: Any,
                specs: Any) -> Any:
  """The optimizer state's specs, derived from the params' (``tree_map_params``).

  A params-shaped leaf gets its weight's spec when it has the weight's shape (a
  momentum, pilot's m), ``P()`` otherwise (STR's per-layer threshold); holes stay
  holes; every other part of the state (counts, alpha, ...) is replicated.
  """
  def follow(value, spec, weight):
    if pcs.core.is_hole(value):
      return value
    return spec if jnp.shape(value) == jnp.shape(weight) else P()

  return optax.tree_utils.tree_map_params(
      tx, follow, opt_state, specs, params, transform_non_params=lambda _: P(),
      is_leaf=pcs.core.is_hole)


def named(mesh: jax.sharding.Mesh, specs: Any) -> Any:
  """NamedShardings on ``mesh`` for a tree of PartitionSpecs (holes kept)."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda n: isinstance(n, P))


def bytes_per_device(tree: Any, shardings: Any) -> int:
  """Bytes of ``tree`` (arrays or ShapeDtypeStructs) that one device holds."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(
      shardings, is_leaf=lambda n: isinstance(n, NamedSharding))):
    shard = sharding.shard_shape(tuple(leaf.shape))
    total += int(np.prod(shard, dtype=np.int64)) * jnp.dtype(leaf.dtype).itemsize
  return total
