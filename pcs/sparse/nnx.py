"""The Flax NNX adapter: one call turns a pruned ``nnx.Module`` into one whose ``__call__``
runs its exported ``nnx.Linear`` / ``nnx.Conv`` layers with the sparse kernels.

    sparse_model = pcs.sparse.nnx.sparsify(model, inputs=x)   # measured per layer
    logits = nnx.jit(lambda m, x: m(x))(sparse_model, x)

The returned model is a copy: each exported layer is replaced by a :class:`SparseLinear`
or :class:`SparseConv` holding the compressed kernel (as :class:`SparseWeight`
variables, not ``nnx.Param``: they are not trained) and the layer's bias. It works under
``nnx.jit`` and, through ``nnx.split`` / ``nnx.merge``, under ``jax.jit``. Importing this
module needs flax (``pip install 'pcs[export]'``).
"""

from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
from flax import nnx

from pcs.core import _boundary as boundary
from pcs.core import _selection as selection
from pcs.sparse import _artifact
from pcs.sparse import _export
from pcs.sparse import _formats as formats
from pcs.sparse import _layers as layers

_recording: Optional[Dict[Tuple, _export.LayerInput]] = None


class SparseWeight(nnx.Variable):
  """An array of a compressed kernel (values, indices, row pointers or positions)."""


def _arrays(layer) -> Dict[str, Any]:
  if isinstance(layer, formats.CSR):
    return {'values': layer.values, 'indices': layer.indices, 'indptr': layer.indptr}
  return {'values': layer.values, 'positions': layer.positions}


class _SparseLayer(nnx.Module):
  """A compressed kernel and its bias; subclasses say how the product is taken."""

  def __init__(self, layer, bias: Optional[jax.Array], source_path: Tuple):
    self.kernel_shape = tuple(layer.kernel_shape)
    self.format = 'csr' if isinstance(layer, formats.CSR) else 'n_m'
    self.n_m = (layer.n, layer.m) if isinstance(layer, formats.NM) else None
    self.source_path = tuple(source_path)
    self.weights = nnx.Dict({k: SparseWeight(jax.numpy.asarray(v))
                             for k, v in _arrays(layer).items()})
    self.bias = None if bias is None else nnx.Param(bias)

  @property
  def layer(self):
    """The compressed kernel as a :class:`pcs.sparse.CSR` or :class:`pcs.sparse.NM`."""
    arrays = {k: v.get_value() for k, v in self.weights.items()}
    if self.format == 'csr':
      return formats.CSR(kernel_shape=self.kernel_shape, **arrays)
    return formats.NM(kernel_shape=self.kernel_shape, n=self.n_m[0], m=self.n_m[1], **arrays)

  def _bias(self):
    return None if self.bias is None else self.bias.get_value()

  def _record(self, x, options=None):
    if _recording is not None:
      _recording[self.source_path] = _export.LayerInput(tuple(x.shape), options)


class SparseLinear(_SparseLayer):
  """``nnx.Linear`` with a sparse kernel: y = x W + b."""

  def __call__(self, x: jax.Array) -> jax.Array:
    self._record(x)
    return layers.dense(x, self.layer, self._bias())


class SparseConv(_SparseLayer):
  """``nnx.Conv`` with a sparse kernel (channels last, no groups or dilation)."""

  def __init__(self, layer, bias, source_path, *, strides, padding):
    super().__init__(layer, bias, source_path)
    self.strides = strides
    self.padding = padding

  def __call__(self, x: jax.Array) -> jax.Array:
    options = {'strides': self.strides, 'padding': self.padding}
    self._record(x, options)
    return layers.conv(x, self.layer, self._bias(), **options)


def _targets(model) -> Dict[Tuple, Any]:
  return {tuple(path): node for path, node in nnx.iter_graph(model)
          if isinstance(node, (nnx.Linear, nnx.Conv))}


def _sparse_module(path, module, layer):
  name = '/'.join(map(str, path))
  if tuple(layer.kernel_shape) != tuple(module.kernel.shape):
    raise ValueError(f'pcs.sparse.nnx: the exported kernel of {name} has shape '
                     f'{layer.kernel_shape} but the model\'s layer has '
                     f'{tuple(module.kernel.shape)}; the export belongs to another model.')
  bias = module.bias.get_value() if module.use_bias else None
  if isinstance(module, nnx.Linear):
    return SparseLinear(layer, bias, path)
  if module.feature_group_count != 1 or module.mask is not None:
    raise ValueError(f'{name}: sparse convolutions take feature_group_count=1 and no mask.')
  for attr in ('input_dilation', 'kernel_dilation'):
    value = getattr(module, attr)
    if value not in (None, 1) and tuple(value) != (1,) * len(module.kernel_size):
      raise ValueError(f'{name}: sparse convolutions take no {attr}.')
  if isinstance(module.padding, str) and module.padding.upper() not in ('SAME', 'VALID'):
    raise ValueError(f'{name}: sparse convolutions take SAME, VALID or explicit padding; '
                     f'got {module.padding!r}.')
  return SparseConv(layer, bias, path, strides=module.strides or 1, padding=module.padding)


def _replace(model, path, new) -> None:
  parent = model
  for key in path[:-1]:
    parent = parent[key] if isinstance(key, int) else getattr(parent, key)
  if isinstance(path[-1], int):
    parent[path[-1]] = new
  else:
    setattr(parent, path[-1], new)


def _swapped(model, exported: _export.Exported):
  model = nnx.clone(model)
  targets = _targets(model)
  for path, layer in exported.items():
    if path not in targets:
      raise ValueError(f'pcs.sparse.nnx: the exported layer {"/".join(map(str, path))} is '
                       'not an nnx.Linear or nnx.Conv of this model; the export belongs to '
                       'another model.')
    new = _sparse_module(path, targets[path], layer)
    if not path:  # the model is itself the layer
      return new
    _replace(model, path, new)
  return model


def layer_inputs(model, inputs, **call_kwargs) -> Dict[Tuple, _export.LayerInput]:
  """``{module path: LayerInput}`` of every Linear/Conv of ``model`` called on ``inputs``
  (traced with ``jax.eval_shape``: nothing is computed)."""
  global _recording
  state = nnx.state(model, nnx.Param)
  probe = _swapped(model, _export.export(state, format='csr'))
  graphdef, variables = nnx.split(probe)
  _recording = {}
  try:
    jax.eval_shape(lambda v, x: nnx.merge(graphdef, v)(x, **call_kwargs), variables, inputs)
    return _recording
  finally:
    _recording = None


def export(model, *, inputs: Any = None, call_kwargs: Optional[Dict[str, Any]] = None,
           format: str = 'auto',  # pylint: disable=redefined-builtin
           n_m: Optional[Tuple[int, int]] = None, where: selection.Where = None,
           batch_size: int = 1, margin: float = 0.05) -> _export.Exported:
  """:func:`pcs.export` for an ``nnx.Module``: its Linear/Conv kernels in their fastest
  layout, each measured at the input it gets from ``inputs`` (an example batch)."""
  if not boundary.is_nnx_module(model):
    raise TypeError(f'`model` must be an nnx.Module; got {type(model).__name__}.')
  recorded, time_model = None, None
  if inputs is not None:
    recorded = layer_inputs(model, inputs, **(call_kwargs or {}))

    def time_model(layers):
      graphdef, state = nnx.split(_swapped(model, _export.Exported(layers, ())))
      run = lambda state, x: nnx.merge(graphdef, state)(x, **(call_kwargs or {}))
      return _export.median_ms(run, state, inputs)
  return _export.export(nnx.state(model, nnx.Param), format=format, n_m=n_m, where=where,
                        batch_size=batch_size, layer_inputs=recorded, margin=margin,
                        time_model=time_model)


def sparsify(model, exported: Optional[_export.Exported] = None, **export_kwargs):
  """A copy of the pruned ``model`` whose exported Linear/Conv layers run sparsely.

  Args:
    model: an ``nnx.Module`` (after ``nnx.update(model, pcs.prune(...)[0])``).
    exported: from :func:`export` (or :func:`pcs.sparse.load`); if None, it is made with
      ``export(model, **export_kwargs)`` (e.g. ``inputs=x`` to measure each layer).

  Returns:
    The sparse copy; ``model`` is unchanged.

  Raises:
    ValueError: if ``exported`` names a layer the model lacks or of another shape.

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> from flax import nnx
    >>> from pcs.sparse import nnx as sparse_nnx
    >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> model.kernel.set_value(jnp.array([[0.0, 1.0], [2.0, 0.0]]))
    >>> sparse = sparse_nnx.sparsify(model, format='csr')
    >>> type(sparse).__name__, sparse(jnp.ones((1, 2))) - model.bias.get_value()
    ('SparseLinear', Array([[2., 1.]], dtype=float32))
  """
  if exported is None:
    exported = export(model, **export_kwargs)
  elif export_kwargs:
    raise ValueError(f'pcs.sparse.nnx.sparsify: give either `exported` or export options, '
                     f'not both; got {sorted(export_kwargs)}.')
  if not isinstance(exported, _export.Exported):
    raise TypeError(f'`exported` must come from pcs.export; got {type(exported).__name__}.')
  return _swapped(model, exported)


def load(file, model):
  """The sparse model saved by ``pcs.sparse.save(file, exported, nnx.state(...))``.

  Args:
    file: the ``.npz`` written by :func:`pcs.sparse.save`.
    model: a newly built instance of the same architecture (e.g. ``Model(rngs=nnx.Rngs(0))``);
      its variables are overwritten with the saved ones.

  Returns:
    :func:`sparsify` of the restored model with the saved layers.

  Raises:
    ValueError: if a saved variable is missing from ``model`` or has another shape.
  """
  variables, exported = _artifact.load(file)
  saved = {tuple(_export.key_name(k) for k in path): value
           for path, value in jax.tree_util.tree_flatten_with_path(variables)[0]}
  found = {tuple(path): node for path, node in nnx.iter_graph(model)
           if isinstance(node, nnx.Variable)}
  for path, value in saved.items():
    name = '/'.join(map(str, path))
    if path not in found or tuple(found[path].get_value().shape) != value.shape:
      raise ValueError(f'pcs.sparse.nnx.load: the saved variable {name} {value.shape} has no '
                       'counterpart of that shape in `model`; the file belongs to another '
                       'model.')
    found[path].set_value(jax.numpy.asarray(value))
  return sparsify(model, exported)


def dense_kernels(model) -> Dict[Tuple, np.ndarray]:
  """``{module path: dense kernel}`` of every sparse layer of ``model`` (for checks)."""
  return {tuple(path): node.layer.todense() for path, node in nnx.iter_graph(model)
          if isinstance(node, _SparseLayer)}
