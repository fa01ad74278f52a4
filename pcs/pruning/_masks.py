"""Exact-sparsity magnitude pruning: global, layerwise, ERK and N:M masks, and a summary.

Masks are bool pytrees with the structure of the params (True = kept); leaves not
selected by ``where`` get all-True masks. Ties in magnitude are broken by position
(the earlier flat index is pruned first), so masks are deterministic. The number
of pruned weights is round(sparsity * size), per layer (layerwise, ERK) or over
all selected weights (global).
"""

import dataclasses
import warnings
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pcs.core import _boundary as boundary
from pcs.core import _layout as layout_lib
from pcs.core import _paths as paths
from pcs.core import _selection as selection
import itertools

SCOPES = ('global', 'layerwise', 'erk')


def check_sparsity(sparsity) -> None:
  """Raises ValueError unless a concrete ``sparsity`` is a number in [0, 1)."""
  if isinstance(sparsity, jax.core.Tracer):
    return
  try:
    value = float(sparsity)
  except (TypeError, ValueError):
    raise ValueError(f'`sparsity` must be a number in [0, 1); got {sparsity!r}.') from None
  if not 0.0 <= value < 1.0:
    raise ValueError(f'`sparsity` must be in [0, 1); got {sparsity!r}.')


def check_scope(scope: str) -> None:
  if scope not in SCOPES:
    raise ValueError(f'`scope` must be one of {SCOPES}; got {scope!r}.')


def _keep_largest(magnitudes: jax.Array, num_pruned) -> jax.Array:
  """Bool mask of a flat vector keeping all but the ``num_pruned`` smallest entries.

  A stable sort ranks equal magnitudes by position, so ties prune earlier entries
  first; ``num_pruned`` may be traced.
  """
  order = jnp.argsort(magnitudes, stable=True)
  ranks = jnp.zeros(magnitudes.shape, jnp.int32).at[order].set(
      jnp.arange(magnitudes.size, dtype=jnp.int32))
  return ranks >= num_pruned


def erk_densities(shapes: Sequence[Tuple[int, ...]], sparsity) -> jax.Array:
  """Per-layer densities of the Erdos-Renyi-Kernel distribution.

  density_l = min(1, c * sum(shape_l) / prod(shape_l)), with c chosen so that
  sum_l density_l * size_l = (1 - sparsity) * sum_l size_l; layers that would exceed
  density 1 are kept dense and c is re-solved for the others.

  Reference: Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020.
  """
  sizes = jnp.asarray([float(np.prod(s)) for s in shapes])
  scores = jnp.asarray([float(sum(s)) / float(np.prod(s)) for s in shapes])
  budget = (1.0 - jnp.asarray(sparsity, jnp.float32)) * jnp.sum(sizes)
  dense = jnp.zeros(sizes.shape, bool)
  for _ in range(len(shapes)):
    free = jnp.sum(jnp.where(dense, 0.0, scores * sizes))
    c = (budget - jnp.sum(jnp.where(dense, sizes, 0.0))) / jnp.maximum(free, 1e-30)
    dense = dense | (c * scores > 1.0)
  return jnp.where(dense, 1.0, jnp.minimum(1.0, c * scores))


def erk_shape(name: str, shape: Tuple[int, ...], layouts: dict) -> Tuple[int, ...]:
  """The shape ERK scores a kernel by: ``(*window, *batch, fan_in, fan_out)`` where its
  layout is known (an attention kernel (in, heads, head_dim) counts as the matrix
  (in, heads * head_dim)), else the shape itself (a conv kernel's is its own)."""
  layout = layout_lib.layout_for(name, shape, layouts)
  if layout is None:
    return tuple(shape)
  size = lambda axes: int(np.prod([shape[a] for a in axes]))
  return (tuple(shape[a] for a in layout.window_axes + layout.batch_axes)
          + (size(layout.in_axes), size(layout.out_axes)))


def magnitude_masks(params: Any, sparsity, *, scope: str = 'global',
                    where: selection.Where = None, layouts: Optional[dict] = None) -> Any:
  """Masks that prune the smallest-magnitude selected weights (see :func:`prune`).

  ``sparsity`` may be a traced scalar (as in :func:`pcs.gmp`); scope, where and
  layouts (used by ERK) are static.
  """
  check_sparsity(sparsity)
  check_scope(scope)
  mask_tree = selection.select(params, where)
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = [x for _, x in with_paths]
  chosen = [i for i, c in enumerate(jax.tree.leaves(mask_tree)) if c]
  masks = [jnp.ones(jnp.shape(x), bool) for x in leaves]
  if not chosen:
    return jax.tree.unflatten(treedef, masks)
  sparsity = jnp.asarray(sparsity, jnp.float32)
  magnitudes = [jnp.abs(leaves[i]).astype(jnp.float32).ravel() for i in chosen]
  if scope == 'global':
    flat = jnp.concatenate(magnitudes)
    keep = _keep_largest(flat, jnp.round(sparsity * flat.size).astype(jnp.int32))
    offsets = np.cumsum([0] + [m.size for m in magnitudes])
    pieces = [keep[a:b] for a, b in itertools.pairwise(offsets)]
  else:
    if scope == 'layerwise':
      fractions = [sparsity] * len(chosen)
    else:
      resolved = layout_lib.resolve(layouts)
      densities = erk_densities([erk_shape(paths.path_name(with_paths[i][0]),
                                           jnp.shape(leaves[i]), resolved)
                                 for i in chosen], sparsity)
      fractions = [1.0 - densities[j] for j in range(len(chosen))]
    pieces = [_keep_largest(m, jnp.round(f * m.size).astype(jnp.int32))
              for m, f in zip(magnitudes, fractions)]
  for i, piece in zip(chosen, pieces):
    masks[i] = piece.reshape(jnp.shape(leaves[i]))
  return jax.tree.unflatten(treedef, masks)


def _n_m_layout(name: str, shape: Tuple[int, ...], m: int, layouts: dict):
  """The layout N:M groups ``name`` by; raises ValueError where it is not known or M does
  not divide the fan-in."""
  if len(shape) < 2:
    raise ValueError(f'`n_m` groups the input axes of kernels (ndim >= 2); {name} has shape '
                     f'{shape}. Exclude it with `where`.')
  layout = layout_lib.layout_for(name, shape, layouts)
  if layout is None:
    raise ValueError(
        f'`n_m`: the input axes of {name}, of shape {shape}, are not known from its shape '
        f'or name: a {len(shape)}-D conv kernel (*window, in, out) reads its input on '
        f'axis -2 (of size {shape[-2]}), a DenseGeneral / LinearGeneral kernel (*in, *out), '
        'such as an attention projection (in, heads, head_dim), on its leading axes. Pass '
        '`layouts=pcs.kernel_layouts(model)` (linen: '
        '`pcs.kernel_layouts(model, x)`), or for this leaf `layouts={'
        f"'{name}': pcs.KernelLayout(in_axes=..., out_axes=..., window_axes=...)}}`.")
  fan_in = int(np.prod([shape[a] for a in layout.in_axes]))
  if fan_in % m:
    raise ValueError(f'`n_m`: M = {m} must divide the fan-in (the in axes, flattened) of '
                     f'every selected leaf; {name} has shape {shape}, in axes '
                     f'{layout.in_axes}: {fan_in}.')
  return layout


def n_m_masks(params: Any, n: int, m: int, *, where: selection.Where = None,
              layouts: Optional[dict] = None) -> Any:
  """N:M masks: in every group of m consecutive weights along the input axes, keep the n
  largest magnitudes (ties: the earlier weight is pruned first).

  The input (contraction) axes of each kernel come from its layout
  (:class:`pcs.KernelLayout`: ``layouts``, else the name, see
  :func:`pcs.core._layout.named_layout`); several in axes are flattened in C order
  into one fan-in axis, and groups run along it, separately for every output unit,
  conv window offset and batch index. For Dense (in, out) and Conv (*window, in,
  out) kernels that is axis -2; for an attention out kernel (heads, head_dim, out) it
  is heads * head_dim.

  Reference: Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021 (2:4).
  """
  if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
    raise ValueError(f'`n_m` must be two integers 0 < N <= M; got {(n, m)!r}.')
  mask_tree = selection.select(params, where)
  resolved = layout_lib.resolve(layouts)

  def leaf_mask(path, x, chosen):
    if not chosen:
      return jnp.ones(jnp.shape(x), bool)
    shape = tuple(jnp.shape(x))
    layout = _n_m_layout(paths.path_name(path), shape, m, resolved)
    others = layout.window_axes + layout.batch_axes + layout.out_axes
    order = others + layout.in_axes
    moved = jnp.transpose(jnp.abs(x).astype(jnp.float32), order)
    lead = moved.shape[:len(others)]
    groups = moved.reshape(lead + (-1, m))
    ranks = jnp.argsort(jnp.argsort(groups, axis=-1, stable=True), axis=-1, stable=True)
    keep = (ranks >= m - n).reshape(moved.shape)
    return jnp.transpose(keep, np.argsort(order))

  return jax.tree_util.tree_map_with_path(leaf_mask, params, mask_tree)


def all_kept(params: Any) -> Any:
  """All-True masks shaped like ``params`` (nothing pruned).
  Example:
    >>> import jax.numpy as jnp, pcs
    >>> pcs.pruning.all_kept({'w': jnp.ones(2)})['w']
    Array([ True,  True], dtype=bool)
  """
  return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), params)


def check_masks(params: Any, masks: Any) -> None:
  """Raises ValueError unless ``masks`` is a bool pytree shaped like ``params``."""
  p_def, m_def = jax.tree.structure(params), jax.tree.structure(masks)
  if p_def != m_def:  # type: ignore[operator]  # PyTreeDef's stubs lack ==
    raise ValueError(f'`masks` must have the structure of params; got {m_def}, '
                     f'params have {p_def}.')
  for path, x, mk in zip(*zip(*jax.tree_util.tree_flatten_with_path(params)[0]),
                         jax.tree.leaves(masks)):
    if jnp.shape(mk) != jnp.shape(x) or jnp.result_type(mk) != jnp.bool_:
      raise ValueError(f'`masks` at {jax.tree_util.keystr(path)} must be a bool array of '
                       f'shape {jnp.shape(x)}; got {jnp.result_type(mk)}{list(jnp.shape(mk))}.')


def prune(params: Any, sparsity: Optional[float] = None, *, scope: str = 'global',
          n_m: Optional[Tuple[int, int]] = None, where: selection.Where = None,
          layouts: Optional[dict] = None) -> Tuple[Any, Any]:
  """Zeroes the smallest-magnitude weights to an exact target sparsity.

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> pruned, masks = pcs.prune({'w': jnp.array([[0.1, -2.0], [3.0, 0.2]])}, 0.5)
    >>> pruned['w']
    Array([[ 0., -2.],
           [ 3.,  0.]], dtype=float32)

  Args:
    params: the parameter pytree; or an ``nnx.State`` (the result comes back as a State,
      for ``nnx.update``); or an ``nnx.Module``, whose pruned copy comes back (the model
      given is unchanged; its masks are a copy holding bool arrays).
    sparsity: fraction of the selected weights to zero, in [0, 1). Exactly
      round(sparsity * n) weights are pruned per layer (``layerwise``), over all
      selected weights (``global``), or per layer with the ERK distribution's
      per-layer densities (``erk``, Evci et al., 2020).
    scope: ``'global'``, ``'layerwise'`` or ``'erk'``.
    n_m: ``(N, M)`` for N:M sparsity instead of ``sparsity``: keep the N largest of
      every M consecutive weights along a kernel's input axes (:func:`n_m_masks`).
      2-D kernels are (in, out); a kernel of ndim >= 3 needs its layout, from
      ``layouts`` or from its name (a layer named like ``conv``, or an attention
      ``query`` / ``key`` / ``value`` / ``out`` projection as Flax lays them out);
      any other is refused, with its name, shape and how to pass its layout.
    where: leaves to prune (default :func:`pcs.kernels`: every leaf with ndim >= 2
      except embeddings, biases and scales).
    layouts: ``{parameter path: pcs.KernelLayout}`` as :func:`pcs.kernel_layouts`
      returns it (paths may also be strings ``'blocks/0/attn/query/kernel'``): the
      input axes N:M groups along, and the matrix shape ERK scores.

  Returns:
    ``(pruned_params, masks)``; ``masks`` is a bool pytree (True = kept).

  Raises:
    ValueError: for a bad ``sparsity``, ``scope`` or ``n_m``, a ``where`` that selects
      nothing (naming the leaves it saw), or an N:M kernel whose input axes are not
      known or not divisible by M.
  """
  if (sparsity is None) == (n_m is None):
    raise ValueError('prune needs exactly one of `sparsity` and `n_m`.')
  given, params = params, boundary.plain(params)
  selection.check_selects_some(params, selection.select(params, where, check_float=False),
                               'prune')
  if n_m is not None:
    if not isinstance(n_m, (tuple, list)) or len(n_m) != 2:
      raise ValueError(f'`n_m` must be a pair (N, M); got {n_m!r}.')
    masks = n_m_masks(params, *n_m, where=where, layouts=layouts)
  else:
    masks = magnitude_masks(params, sparsity, scope=scope, where=where, layouts=layouts)
    if scope == 'global':
      _warn_emptied(params, masks, sparsity)
  # An NNX State comes back as a State (for nnx.update), a pure tree as a pure tree.
  return boundary.restore(given, apply_masks(params, masks)), boundary.restore(given, masks)


def _warn_emptied(params: Any, masks: Any, sparsity) -> None:
  """Warns where global pruning kept no weight of a leaf that had some (a layer whose
  weights are small beside the others', as at some initializations): the model's output
  then ignores that layer's input. A leaf not selected has a mask of ones
  (:func:`magnitude_masks`), so only selected ones can warn. Skipped under a trace."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  emptied = [paths.path_name(path) for (path, leaf), mask in zip(flat, jax.tree.leaves(masks))
             if not isinstance(mask, jax.core.Tracer)
             and not isinstance(leaf, jax.core.Tracer) and np.size(mask)
             and not np.any(mask) and np.any(np.asarray(leaf) != 0)]
  if emptied:
    warnings.warn(f"pcs.prune: scope='global' at sparsity {sparsity} keeps no weight of "
                  f'{emptied}; the model no longer reads what those layers receive. '
                  "scope='layerwise' or 'erk' keeps weights in every layer.", stacklevel=3)


def apply_masks(params: Any, masks: Any) -> Any:
  """x * mask, in each leaf's dtype.
  Example:
    >>> import jax.numpy as jnp, pcs
    >>> pcs.apply_masks({'w': jnp.array([1.0, 2.0])}, {'w': jnp.array([True, False])})['w']
    Array([1., 0.], dtype=float32)
  """
  check_masks(params, masks)
  return jax.tree.map(lambda x, mk: jnp.where(mk, x, jnp.zeros_like(x)), params, masks)


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
  name: str
  shape: Tuple[int, ...]
  size: int
  zeros: int

  @property
  def sparsity(self) -> float:
    return self.zeros / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class SparsitySummary:
  """Per-layer and global sparsity of the selected leaves; ``print`` it for a table."""
  layers: Tuple[LayerSparsity, ...]

  @property
  def size(self) -> int:
    return sum(layer.size for layer in self.layers)

  @property
  def zeros(self) -> int:
    return sum(layer.zeros for layer in self.layers)

  @property
  def sparsity(self) -> float:
    return self.zeros / self.size if self.size else 0.0

  def __str__(self) -> str:
    width = max([len(layer.name) for layer in self.layers] + [5])
    lines = [f"{'layer':<{width}}  {'shape':<18} {'size':>10} {'zeros':>10} {'sparsity':>9}"]
    for layer in self.layers:
      lines.append(f'{layer.name:<{width}}  {layer.shape!s:<18} {layer.size:>10} '
                   f'{layer.zeros:>10} {layer.sparsity:>9.2%}')
    lines.append(f"{'total':<{width}}  {'':<18} {self.size:>10} {self.zeros:>10} "
                 f'{self.sparsity:>9.2%}')
    return '\n'.join(lines)


def summary(params: Any, where: selection.Where = None) -> SparsitySummary:
  """Per-layer and global counts of exact zeros among the leaves selected by ``where``.
  Example:
    >>> import jax.numpy as jnp, pcs
    >>> pcs.summary({'w': jnp.array([[0.0, 1.0], [0.0, 2.0]])}).sparsity
    0.5
  """
  params = boundary.plain(params)
  mask_tree = selection.select(params, where, check_float=False)
  layers = []
  for path, x in selection.selected_leaves(params, mask_tree):
    layers.append(LayerSparsity(
        name=jax.tree_util.keystr(path), shape=tuple(jnp.shape(x)), size=int(jnp.size(x)),
        zeros=int(jnp.sum(jnp.asarray(x) == 0))))
  return SparsitySummary(tuple(layers))
