"""The boundary with Flax NNX: its ``State`` and ``Variable`` trees as plain pytrees.

NNX hands out parameters as ``nnx.State`` mappings whose leaves are ``nnx.Variable``
objects (``nnx.state(model, nnx.Param)``). :func:`plain` turns such a tree into nested
dicts of arrays, so every pcs function sees the parameter's own key path (``('Dense_0',
'kernel')``, without NNX's variable wrapper) whether it was handed an NNX tree or a pure
one. flax is not imported: NNX objects are recognised by their type's module.
"""

from collections.abc import Mapping
from typing import Any, Callable

import jax
import optax


def is_nnx_variable(x: Any) -> bool:
  """Whether ``x`` is an ``nnx.Variable`` (``nnx.Param``, ``nnx.BatchStat``, ...)."""
  return type(x).__module__.startswith('flax.nnx') and hasattr(x, 'get_value')


def is_nnx_state(x: Any) -> bool:
  """Whether ``x`` is an NNX state mapping (``nnx.State``)."""
  return type(x).__module__.startswith('flax.nnx') and isinstance(x, Mapping)


def is_nnx_module(x: Any) -> bool:
  """Whether ``x`` is an ``nnx.Module`` (checked without importing flax)."""
  return any(c.__module__.startswith('flax.nnx') and c.__name__ == 'Module'
             for c in type(x).__mro__)


def is_linen_module(x: Any) -> bool:
  """Whether ``x`` is a ``flax.linen.Module`` (checked without importing flax)."""
  return any(c.__module__.startswith('flax.linen') and c.__name__ == 'Module'
             for c in type(x).__mro__)


def is_nnx_graphdef(x: Any) -> bool:
  """Whether ``x`` is an NNX ``GraphDef`` (``nnx.split``'s first result)."""
  return any(c.__module__ == 'flax.nnx.graphlib' and c.__name__.endswith('Def')
             for c in type(x).__mro__)


def _plain_node(x: Any) -> Any:
  if is_nnx_variable(x):
    return plain(x.get_value())
  if is_nnx_state(x):
    return {key: plain(value) for key, value in x.items()}
  return x


def plain(tree: Any) -> Any:
  """``tree`` with every NNX ``State`` made a dict and every ``Variable`` its value.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> plain(nnx.State({'Dense_0': {'kernel': nnx.Param(jnp.ones(2))}}))
    {'Dense_0': {'kernel': Array([1., 1.], dtype=float32)}}
  """
  return jax.tree.map(_plain_node, tree, is_leaf=lambda x: is_nnx_variable(x)
                      or is_nnx_state(x))


def _holds_nnx(tree: Any) -> bool:
  nodes = jax.tree.leaves(tree, is_leaf=lambda x: is_nnx_variable(x) or is_nnx_state(x))
  return any(is_nnx_variable(n) or is_nnx_state(n) for n in nodes)


def restore(like: Any, tree: Any) -> Any:
  """``tree`` (plain, with ``plain(like)``'s structure) in ``like``'s own structure: NNX
  ``State`` / ``Variable`` trees come back as such, plain trees as they are."""
  if not _holds_nnx(like):
    return tree
  return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(tree))


def check_like_params(updates: Any, params: Any) -> None:
  """Raises ValueError naming the first path where ``updates`` (the gradients) differ from
  ``params`` in structure or shape."""
  flat_u = jax.tree_util.tree_flatten_with_path(updates)[0]
  flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
  shapes_u = {jax.tree_util.keystr(p): jax.numpy.shape(x) for p, x in flat_u}
  shapes_p = {jax.tree_util.keystr(p): jax.numpy.shape(x) for p, x in flat_p}
  for key in list(shapes_p) + list(shapes_u):
    if key not in shapes_u or key not in shapes_p:
      where = 'params but not the gradients' if key in shapes_p else 'the gradients only'
      raise ValueError(f'The gradients (`updates`) must have the structure of params; the '
                       f'first difference is {key}, in {where}.')
    if shapes_u[key] != shapes_p[key]:
      raise ValueError(f'The gradient at {key} has shape {shapes_u[key]} but the parameter '
                       f'has {shapes_p[key]}.')
  if jax.tree.structure(updates) != jax.tree.structure(params):  # type: ignore[operator]
    raise ValueError(f'The gradients (`updates`) must have the structure of params; got '
                     f'{jax.tree.structure(updates)}, params have {jax.tree.structure(params)}.')


def inner_optimizer(inner: Any, owner: str) -> optax.GradientTransformationExtraArgs:
  """``inner`` with extra-args support; refused at construction unless it is an optimizer."""
  if not (callable(getattr(inner, 'init', None)) and callable(getattr(inner, 'update', None))):
    raise TypeError(f'{owner}: `inner` must be an optax optimizer (a GradientTransformation '
                    f'such as optax.sgd(0.1, momentum=0.9)); got {type(inner).__name__} '
                    f'{inner!r:.60}.')
  return optax.with_extra_args_support(inner)


def transform(init_fn: Callable, update_fn: Callable) -> optax.GradientTransformationExtraArgs:
  """A pcs transform behind the NNX boundary.

  ``init`` and ``update`` see plain trees (:func:`plain`), so a ``where`` predicate gets
  the same key paths at both, whether ``nnx.Optimizer`` passes ``State`` trees or arrays;
  the updates go back in the structure the gradients came in; gradients that differ from
  the params in structure or shape are refused with the first differing path.
  """
  def init(params):
    return init_fn(plain(params))

  def update(updates, state, params=None, **extra_args):
    plain_updates = plain(updates)
    plain_params = None if params is None else plain(params)
    if plain_params is not None:
      check_like_params(plain_updates, plain_params)
    out, new_state = update_fn(plain_updates, plain(state), plain_params, **extra_args)
    return restore(updates, out), new_state

  return optax.GradientTransformationExtraArgs(init, update)
