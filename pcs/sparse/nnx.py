"""The Flax NNX adapter: one call turns a pruned ``nnx.Module`` into one whose ``__call__``
runs its exported ``nnx.Linear`` / ``nnx.Conv`` layers with the sparse kernels.

    sparse_model = pcs.sparse.nnx.sparsify(model, inputs=x)   # measured per layer
    logits = nnx.jit(lambda m, x: m(x))(sparse_model, x)

The returned model is a copy: each exported layer is replaced by a :class:`SparseLinear`
or :class:`SparseConv` holding the compressed kernel (as :class:`SparseWeight`
variables, not ``nnx.Param``: they are not trained) and the layer's bias. It works under
``nnx.jit`` and, through ``nnx.split`` / ``nnx.merge``, under ``jax.jit``; :func:`bind`
gives the cheapest call, one jitted function with the model's state bound. Importing
this module needs flax (``pip install 'pcs[export]'``).
"""

import contextvars
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np
from flax import nnx

from pcs.core import _boundary as boundary
from pcs.core import _layout as layout_lib
from pcs.core import _selection as selection
from pcs.sparse import _artifact
from pcs.sparse import _export
from pcs.sparse import _formats as formats
from pcs.sparse import _layers as layers
from pcs.sparse import _timing as timing

# The layer inputs seen while :func:`layer_inputs` traces the model (None otherwise).
_recording: contextvars.ContextVar[Optional[Dict[Tuple, _export.LayerInput]]] = (
    contextvars.ContextVar('pcs_sparse_nnx_recording', default=None))


class SparseWeight(nnx.Variable):
  """An array of a compressed kernel (values, indices, row pointers or positions)."""


def _arrays(layer) -> Dict[str, Any]:
  if isinstance(layer, formats.CSR):
    return {'values': layer.values, 'indices': layer.indices, 'indptr': layer.indptr}
  return {'values': layer.values, 'positions': layer.positions}


class _SparseLayer(nnx.Module):
  """A compressed kernel and its bias; subclasses say how the product is taken."""

  def __init__(self, layer, bias: Optional[jax.Array], source_path: Tuple, dtype=None):
    self.kernel_shape = tuple(layer.kernel_shape)
    self.dtype = dtype  # the dense layer's computation dtype (None: promote x and float32)
    self.format = 'csr' if isinstance(layer, formats.CSR) else 'n_m'
    self.n_m = (layer.n, layer.m) if isinstance(layer, formats.NM) else None
    self.threads = layer.threads
    self.source_path = tuple(source_path)
    self.weights = nnx.Dict({k: SparseWeight(jax.numpy.asarray(v))
                             for k, v in _arrays(layer).items()})
    self.bias = None if bias is None else nnx.Param(bias)

  @property
  def layer(self):
    """The compressed kernel as a :class:`pcs.sparse.CSR` or :class:`pcs.sparse.NM`."""
    arrays = {k: v.get_value() for k, v in self.weights.items()}
    if self.format == 'csr':
      return formats.CSR(kernel_shape=self.kernel_shape, threads=self.threads, **arrays)
    return formats.NM(kernel_shape=self.kernel_shape, n=self.n_m[0], m=self.n_m[1],
                      threads=self.threads, **arrays)

  def _bias(self):
    return None if self.bias is None else self.bias.get_value()

  def _input(self, x):
    """``x`` in the dtype the dense layer returns for it (the kernels compute in float32
    and return their input's dtype)."""
    return x.astype(self.dtype or jax.numpy.promote_types(x.dtype, jax.numpy.float32))

  def _record(self, x, options=None):
    seen = _recording.get()
    if seen is not None:
      seen[self.source_path] = _export.LayerInput(tuple(x.shape), options)


def _sharded(y: jax.Array, out_sharding) -> jax.Array:
  """``y`` constrained to ``out_sharding`` where the caller names one (as the dense
  layers take it; the sparse product itself runs replicated)."""
  return y if out_sharding is None else jax.lax.with_sharding_constraint(y, out_sharding)


class SparseLinear(_SparseLayer):
  """``nnx.Linear`` with a sparse kernel: y = x W + b."""

  def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
    self._record(x)
    return _sharded(layers.dense(self._input(x), self.layer, self._bias()), out_sharding)


class SparseLinearGeneral(_SparseLayer):
  """``nnx.LinearGeneral`` with a sparse kernel, as the projections of
  ``nnx.MultiHeadAttention`` are: the contracted axes (the input's last ones) flattened
  into one, y = x W + b with W the (prod(in), prod(out)) matrix of the kernel, and the
  output's features unflattened to ``out_features``."""

  def __init__(self, layer, bias, source_path, dtype=None, *, in_features, out_features):
    super().__init__(layer, None if bias is None else bias.reshape(-1), source_path, dtype)
    self.in_features = tuple(in_features)
    self.out_features = tuple(out_features)

  def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
    lead = x.shape[:x.ndim - len(self.in_features)]
    x = x.reshape(lead + (int(np.prod(self.in_features)),))
    self._record(x)
    y = layers.dense(self._input(x), self.layer, self._bias()).reshape(lead + self.out_features)
    return _sharded(y, out_sharding)


class SparseConv(_SparseLayer):
  """``nnx.Conv`` with a sparse kernel (channels last, no groups or dilation)."""

  def __init__(self, layer, bias, source_path, dtype=None, *, strides, padding):
    super().__init__(layer, bias, source_path, dtype)
    self.strides = strides
    self.padding = padding

  def __call__(self, x: jax.Array) -> jax.Array:
    options = {'strides': self.strides, 'padding': self.padding}
    self._record(x, options)
    return layers.conv(self._input(x), self.layer, self._bias(), **options)


def _targets(model) -> Dict[Tuple, Any]:
  return {tuple(path): node for path, node in nnx.iter_graph(model)
          if isinstance(node, (nnx.Linear, nnx.LinearGeneral, nnx.Conv))}


def _unsupported(model) -> Dict[Tuple, str]:
  """``{module path: why}`` of the layers with a kernel that cannot run sparse."""
  out = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.LinearGeneral) and _general_features(node) is None:
      out[tuple(path)] = ('an nnx.LinearGeneral with batch axes, or contracted axes other '
                          'than its input\'s last, runs dense')
    elif (isinstance(getattr(node, 'kernel', None), nnx.Param)
          and not isinstance(node, (nnx.Linear, nnx.LinearGeneral, nnx.Conv))):
      out[tuple(path)] = f'{type(node).__name__} layers run dense (no sparse version)'
  return out


def _general_features(module) -> Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
  """``(in_features, out_features)`` of an ``nnx.LinearGeneral`` that is one product over
  its input's last axes (no batch axes), else None."""
  axis = tuple(module.axis) if isinstance(module.axis, (tuple, list)) else (module.axis,)
  in_features, out_features = tuple(module.in_features), tuple(module.out_features)
  if module.batch_axis or axis != tuple(range(-len(in_features), 0)):
    return None
  return in_features, out_features


def _sparse_module(path, module, layer):
  name = '/'.join(map(str, path))
  expected = tuple(module.kernel.shape)
  if isinstance(module, nnx.LinearGeneral) and _general_features(module) is not None:
    in_features, out_features = _general_features(module)
    expected = (int(np.prod(in_features)), int(np.prod(out_features)))
  if tuple(layer.kernel_shape) != expected:
    raise ValueError(f'pcs.sparse.nnx: the exported kernel of {name} has shape '
                     f'{layer.kernel_shape} but the model\'s layer has {expected}; the '
                     'export belongs to another model.')
  bias = module.bias.get_value() if module.use_bias else None
  if isinstance(module, nnx.Linear):
    return SparseLinear(layer, bias, path, module.dtype)
  if isinstance(module, nnx.LinearGeneral):
    features = _general_features(module)
    if features is None:
      raise ValueError(f'{name}: an nnx.LinearGeneral with batch axes or contracted axes '
                       'other than its input\'s last cannot run sparse; export it with a '
                       '`where` that leaves it out.')
    return SparseLinearGeneral(layer, bias, path, module.dtype, in_features=features[0],
                               out_features=features[1])
  if module.feature_group_count != 1 or module.mask is not None:
    raise ValueError(f'{name}: sparse convolutions take feature_group_count=1 and no mask.')
  for attr in ('input_dilation', 'kernel_dilation'):
    value = getattr(module, attr)
    if value not in (None, 1) and tuple(value) != (1,) * len(module.kernel_size):
      raise ValueError(f'{name}: sparse convolutions take no {attr}.')
  if isinstance(module.padding, str) and module.padding.upper() not in ('SAME', 'VALID'):
    raise ValueError(f'{name}: sparse convolutions take SAME, VALID or explicit padding; '
                     f'got {module.padding!r}.')
  return SparseConv(layer, bias, path, module.dtype, strides=module.strides or 1,
                    padding=module.padding)


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
                       'not an nnx.Linear, nnx.LinearGeneral or nnx.Conv of this model; the '
                       'export belongs to another model.')
    new = _sparse_module(path, targets[path], layer)
    if not path:  # the model is itself the layer
      return new
    _replace(model, path, new)
  return model


def layer_inputs(model, inputs, where: selection.Where = None,
                 **call_kwargs) -> Dict[Tuple, _export.LayerInput]:
  """``{module path: LayerInput}`` of every Linear/LinearGeneral/Conv of ``model`` that
  ``where`` selects, called on ``inputs`` (traced with ``jax.eval_shape``: nothing is
  computed)."""
  state = nnx.state(model, nnx.Param)
  probe = _swapped(model, _export.export(state, format='csr', where=where,
                                         layouts=layout_lib.kernel_layouts(model),
                                         unsupported=_unsupported(model)))
  graphdef, variables = nnx.split(probe)
  seen: Dict[Tuple, _export.LayerInput] = {}
  token = _recording.set(seen)
  try:
    jax.eval_shape(lambda v, x: nnx.merge(graphdef, v)(x, **call_kwargs), variables, inputs)
  finally:
    _recording.reset(token)
  return seen


def bind(model, **call_kwargs) -> Callable:
  """``x -> model(x, **call_kwargs)`` compiled, with the model's state bound on device.

  ``nnx.split`` once, then one ``jax.jit`` of ``nnx.merge`` and the call, given the state
  as device arrays: a call is one dispatch, without ``nnx.jit``'s walk over the module
  graph. The model's variables are read, not updated (inference; for a decoding cache
  that a call updates, use ``nnx.jit`` or ``nnx.cached_partial``).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from pcs.sparse import nnx as sparse_nnx
    >>> model = nnx.Linear(2, 2, use_bias=False, rngs=nnx.Rngs(0))
    >>> model.kernel.set_value(jnp.array([[0.0, 1.0], [2.0, 0.0]]))
    >>> sparse_nnx.bind(sparse_nnx.sparsify(model, format='csr'))(jnp.ones((1, 2)))
    Array([[2., 1.]], dtype=float32)
  """
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args, **call_kwargs))
  return functools.partial(run, jax.device_put(state))


def export(model, *, inputs: Any = None, call_kwargs: Optional[Dict[str, Any]] = None,
           format: str = 'auto',  # pylint: disable=redefined-builtin
           n_m: Optional[Tuple[int, int]] = None, where: selection.Where = None,
           batch_size: int = 1, margin: float = 0.05) -> _export.Exported:
  """:func:`pcs.export` for an ``nnx.Module``: its Linear/Conv kernels in their fastest
  layout, each measured at the input it gets from ``inputs`` (an example batch)."""
  if not boundary.is_nnx_module(model):
    raise TypeError(f'`model` must be an nnx.Module; got {type(model).__name__}.')
  recorded, compare_model = None, None
  if inputs is not None:
    recorded = layer_inputs(model, inputs, where, **(call_kwargs or {}))

    def compare_model(layers):
      dense, sparse = (bind(_swapped(model, _export.Exported(chosen, ())),
                            **(call_kwargs or {})) for chosen in ({}, layers))
      return timing.compare_calls(dense, sparse, inputs, threshold=1.0 / (1.0 - margin))
  return _export.export(nnx.state(model, nnx.Param), format=format, n_m=n_m, where=where,
                        batch_size=batch_size, layer_inputs=recorded, margin=margin,
                        compare_model=compare_model, layouts=layout_lib.kernel_layouts(model),
                        unsupported=_unsupported(model))



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
