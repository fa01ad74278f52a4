"""Which parameter leaves a sparsifying transform acts on (the ``where`` argument).

The default, :func:`kernels`, is the rule that fits a transformer and a CNN alike: every
leaf with ``ndim >= 2`` except embedding tables, biases and scales. An embedding is a
lookup table, so zeros in it speed up no product, and the rows of rare tokens get
little gradient, so a decay empties them whatever their use; attention biases
(``(heads, head_dim)``) and norm scales are few and are no weight matrices. Kernels of Linear /
LinearGeneral / Einsum / Conv layers are selected, and so are unnamed arrays and
leaves of other names with ``ndim >= 2`` (plain pytrees of weight matrices).

Every pcs transform records its selection in its state as a params-shaped tree that
holds no array (:func:`record`), so :func:`pcs.stats` and :func:`pcs.latents` use the
transform's own ``where`` when none is given.
"""

from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import optax

from pcs.core import _boundary as boundary
from pcs.core import _paths as paths

Where = Union[None, Any, Callable[[tuple, jax.Array], bool]]

EXCLUDED_NAMES = ('bias', 'scale')


def leaf_name(path: tuple) -> str:
  """The last key of a key path as a string (``''`` for the root)."""
  return paths.path_name(path[-1:])


def _is_embedding(name: str) -> bool:
  return 'embed' in name.lower()


def kernels(path: tuple, leaf: Any) -> bool:
  """The default ``where``: every leaf with ``ndim >= 2`` except embeddings, biases and scales.

  A leaf is excluded when its name (the last key of its path) is ``bias`` or ``scale``,
  or contains ``embed`` (``nnx.Embed`` and linen ``Embed`` tables, ``pos_embedding``).
  So the kernels of Linear / LinearGeneral / Einsum / Conv layers are selected, the
  attention biases of shape ``(heads, head_dim)`` and the embedding tables are not, and
  unnamed arrays with ``ndim >= 2`` are (see the module docstring for why).

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> params = {'embed': {'embedding': jnp.ones((50, 8))}, 'query': {
    ...     'kernel': jnp.ones((8, 2, 4)), 'bias': jnp.ones((2, 4))}}
    >>> pcs.select(params, pcs.kernels)  # the default: pcs.select(params)
    {'embed': {'embedding': False}, 'query': {'bias': False, 'kernel': True}}
  """
  name = leaf_name(path).lower()
  return jnp.ndim(leaf) >= 2 and name not in EXCLUDED_NAMES and not _is_embedding(name)


def kernels_and_embeddings(path: tuple, leaf: Any) -> bool:
  """:func:`kernels` and the embedding tables: every leaf with ``ndim >= 2`` except those
  named ``bias`` or ``scale``.

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> params = {'embed': {'embedding': jnp.ones((50, 8))}, 'out': {'kernel': jnp.ones((8, 50))}}
    >>> pcs.select(params, pcs.kernels_and_embeddings)
    {'embed': {'embedding': True}, 'out': {'kernel': True}}
    >>> tx = pcs.pilot(optax.adamw(1e-3), alpha=1e-4, where=pcs.kernels_and_embeddings)
  """
  return jnp.ndim(leaf) >= 2 and leaf_name(path).lower() not in EXCLUDED_NAMES


def select(params: Any, where: Where = None, *, check_float: bool = True) -> Any:
  """Resolves ``where`` into a pytree of Python bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> pcs.select({'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)})
    {'bias': False, 'kernel': True}

  Args:
    params: the parameter pytree.
    where: ``None`` is :func:`kernels` (every leaf with ``ndim >= 2`` except
      embeddings, biases and scales); a callable ``where(path, leaf) -> bool`` with ``path`` as in
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
    where = kernels
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


def selected_leaves(params: Any, mask: Any) -> list:
  """``[(path, leaf)]`` for the leaves of ``params`` where ``mask`` (from :func:`select`) holds."""
  return [(path, x) for (path, x), chosen
          in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(mask))
          if chosen]


def sparsity(params: Any, where: Where = None) -> jax.Array:
  """Fraction of exact zeros among the selected leaves of ``params``.

  ``sparsity = #{i : x_i == 0} / #{i}`` over all entries of the leaves chosen by
  ``where`` (default :func:`kernels`).

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


class Selected(optax.MaskedNode):
  """A selected leaf in a selection :func:`record`.

  Like ``optax.MaskedNode``, of which it is a subclass, it holds no array, so code that
  passes over MaskedNode holes (``tree_map_params`` with ``is_leaf=lambda n:
  isinstance(n, optax.MaskedNode)``, ``jit``, orbax, ``nnx.Optimizer``) passes over it
  too; only its type says that the leaf is selected.
  """


def record(mask: Any) -> Any:
  """The selection ``mask`` (from :func:`select`) as a tree holding no array: ``Selected()``
  at the selected leaves, ``optax.MaskedNode()`` at the others.

  Its structure is static, so a state that keeps it works under ``jit``, restores with
  orbax against ``jax.eval_shape(tx.init, params)`` and is a params-shaped tree for
  ``optax.tree_utils.tree_map_params``.
  """
  return jax.tree.map(lambda s: Selected() if s else optax.MaskedNode(), mask)


def recorded(selected: Any, params: Any) -> Any:
  """The bool tree (structure of ``params``) of a :func:`record`; leaves that were holes when
  the transform was initialised (``optax.masked`` passes those, a whole subtree as one
  hole where its mask is a prefix tree) are not selected.

  Raises:
    ValueError: if ``params`` has another structure than the recorded one.
  """
  def expand(marker, subtree):
    return jax.tree.map(lambda _: isinstance(marker, Selected), subtree)

  try:
    return jax.tree.map(expand, selected, params,
                        is_leaf=lambda n: isinstance(n, optax.MaskedNode))
  except ValueError:
    raise ValueError(
        'The pcs state recorded its selection for params of structure '
        f'{jax.tree.structure(selected, is_leaf=lambda n: isinstance(n, optax.MaskedNode))}'
        f', but params have {jax.tree.structure(params)}; pass `where`.') from None


def describe(params: Any, limit: int = 12) -> str:
  """The leaves of ``params`` as ``'path shape'``, the first ``limit`` of them."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  shown = ', '.join(f'{paths.path_name(path) or "<root>"} {tuple(jnp.shape(x))}'
                    for path, x in leaves[:limit])
  return shown + (f' and {len(leaves) - limit} more' if len(leaves) > limit else '')


def check_selects_some(params: Any, mask: Any, owner: str) -> None:
  """Raises ValueError if ``params`` has leaves and ``mask`` selects none of them.

  A tree without leaves passes: ``optax.masked`` and ``optax.multi_transform`` hand a
  transform MaskedNode at every leaf it does not own, and
  ``optax.tree_utils.tree_map_params`` initialises with a leafless placeholder.
  """
  params = boundary.plain(params)
  leaves = jax.tree.leaves(params)
  if leaves and not any(jax.tree.leaves(mask)):
    raise ValueError(
        f'{owner}: `where` selects none of the {len(leaves)} leaves of params: '
        f'{describe(params)}. The default (pcs.kernels) takes every leaf with ndim >= 2 '
        'except embeddings, biases and scales; check the predicate or tree passed as '
        "`where` (e.g. `where=lambda path, leaf: path[-1].key == 'kernel'`).")
