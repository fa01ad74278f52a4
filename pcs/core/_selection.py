"""Which parameter leaves a sparsifying transform acts on (the ``where`` argument)."""

from typing import Any, Callable, Union

import jax
import jax.numpy as jnp

from pcs.core import _boundary as boundary

Where = Union[None, Any, Callable[[tuple, jax.Array], bool]]


def _default_where(path, leaf) -> bool:
  del path
  return jnp.ndim(leaf) >= 2


def select(params: Any, where: Where = None, *, check_float: bool = True) -> Any:
  """Resolves ``where`` into a pytree of Python bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> pcs.select({'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)})
    {'bias': False, 'kernel': True}

  Args:
    params: the parameter pytree.
    where: ``None`` selects every leaf with ``ndim >= 2`` (kernels, not biases or
      norm scales); a callable ``where(path, leaf) -> bool`` with ``path`` as in
      ``jax.tree_util.tree_map_with_path``; or a pytree of bools with exactly the
      structure of ``params``.
    check_float: raise if a selected leaf is not a real floating-point array.

  Returns:
    A pytree of bools with the structure of ``params``.

  Raises:
    ValueError: if the ``where`` tree does not match ``params``, if it holds
      something other than bools, or if a selected leaf is not a float array.
  """
  params = boundary.plain(params)
  if where is None:
    where = _default_where
  if callable(where):
    mask = jax.tree_util.tree_map_with_path(lambda p, x: bool(where(p, x)), params)
  else:
    params_def = jax.tree_util.tree_structure(params)
    where_def = jax.tree_util.tree_structure(where)
    if params_def != where_def:  # type: ignore[operator]  # PyTreeDef's stubs lack ==
      raise ValueError(
          '`where` must be None, a callable (path, leaf) -> bool, or a pytree of '
          'bools with the structure of params; got a tree with structure '
          f'{where_def}, params have {params_def}.')
    mask = jax.tree.map(_as_bool, where)
  if check_float:
    for path, x in selected_leaves(params, mask):
      if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(
            f'`where` selects the leaf {jax.tree_util.keystr(path)} of dtype '
            f'{jnp.result_type(x)}; only real floating-point leaves can be '
            'sparsified. Exclude it with `where`.')
  return mask


def _as_bool(value) -> bool:
  if isinstance(value, bool) or (hasattr(value, 'dtype') and jnp.ndim(value) == 0
                                 and jnp.result_type(value) == jnp.bool_):
    return bool(value)
  raise ValueError(f'`where` trees must hold bools only; got {value!r}.')


def path_name(path: tuple) -> str:
  """A key path as ``'a/b/kernel'`` (dict keys, attribute names and indices joined by /)."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def selected_leaves(params: Any, mask: Any) -> list:
  """``[(path, leaf)]`` for the leaves of ``params`` where ``mask`` (from :func:`select`) holds."""
  return [(path, x) for (path, x), chosen
          in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(mask))
          if chosen]


def sparsity(params: Any, where: Where = None) -> jax.Array:
  """Fraction of exact zeros among the selected leaves of ``params``.

  ``sparsity = #{i : x_i == 0} / #{i}`` over all entries of the leaves chosen by
  ``where`` (default: every leaf with ``ndim >= 2``).

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> float(pcs.sparsity({'kernel': jnp.array([[0.0, 1.0], [0.0, 2.0]]), 'bias': jnp.zeros(2)}))
    0.5

  Args:
    params: the parameter pytree.
    where: leaf selection, as in :func:`select`.

  Returns:
    A float32 scalar in [0, 1]; 0 when nothing is selected.
  """
  params = boundary.plain(params)
  chosen = [x for _, x in selected_leaves(params, select(params, where, check_float=False))]
  total = sum(jnp.size(x) for x in chosen)
  if total == 0:
    return jnp.zeros((), jnp.float32)
  zeros = sum((jnp.sum(x == 0, dtype=jnp.int32) for x in chosen), jnp.zeros((), jnp.int32))
  return zeros.astype(jnp.float32) / total


def l1_norm(params: Any, mask: Any) -> jax.Array:
  """``||x||_1 = sum_i |x_i|`` over the leaves of ``params`` where ``mask`` is True."""
  chosen = [x for _, x in selected_leaves(params, mask)]
  return sum((jnp.sum(jnp.abs(x), dtype=jnp.float32) for x in chosen),
             jnp.zeros((), jnp.float32))
