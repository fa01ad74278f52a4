"""The Flax NNX adapter: one call turns a pruned ``nnx.Module`` into one whose ``__call__``
runs its exported ``nnx.Linear`` / ``nnx.Conv`` layers with their compressed weights.

    sparse_model = pcs.sparse.nnx.sparsify(model, inputs=x)   # measured per layer
    logits = nnx.jit(lambda m, x: m(x))(sparse_model, x)

Given ``inputs``, an ``nnx.BatchNorm`` in inference mode (``model.eval()``) whose input
is the very array a Linear or Conv returned is folded into that layer
(``_folding.py``): the sparse copy holds the folded kernel and bias, and a
:class:`FoldedNorm` (the identity) in the batch norm's place.

The returned model is a copy: each exported layer is replaced by a :class:`SparseLinear`
or :class:`SparseConv` holding the compressed weight (as :class:`SparseWeight`
variables, not ``nnx.Param``: they are not trained) and the layer's bias. It works under
``nnx.jit`` and, through ``nnx.split`` / ``nnx.merge``, under ``jax.jit``; :func:`bind`
gives the cheapest call, one jitted function with the model's state bound. Importing
this module needs flax (``pip install 'pcs[export]'``).
"""

import contextvars
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import jax
import numpy as np
from flax import nnx

from pcs.core import _boundary as boundary
from pcs.core import _layout as layout_lib
from pcs.core import _paths as paths
from pcs.core import _selection as selection
from pcs.sparse import _bound as bound
from pcs.sparse import _export
from pcs.sparse import _folding as folding
from pcs.sparse import _formats as formats
from pcs.sparse import _layers as layers
from pcs.sparse import _relu as relu_lib
from pcs.sparse import _timing as timing



class Probe(NamedTuple):
  """What one trace of the model finds: ``inputs``, ``{layer path: LayerInput}``;
  ``norms``, ``{Linear/Conv path: batch norm path}`` of the batch norms that fold."""
  inputs: Dict[Tuple, _export.LayerInput]
  norms: Dict[Tuple, Tuple]


class _Recording(NamedTuple):
  inputs: Dict[Tuple, _export.LayerInput]
  outputs: List[Tuple[Any, Tuple]]  # (array, layer path), kept alive for `is`
  norms: Dict[Tuple, List[Tuple]]


# What :func:`probe` records while it traces the model (None otherwise).
_recording: contextvars.ContextVar[Optional[_Recording]] = contextvars.ContextVar(
    'pcs_sparse_nnx_recording', default=None)


class SparseWeight(nnx.Variable):
  """A compressed weight (a :class:`pcs.sparse.CSR`, :class:`pcs.sparse.NM`, ...): one
  variable whose value is the format's pytree (its arrays are the leaves)."""


class _SparseLayer(nnx.Module):
  """A compressed weight and its bias; subclasses say how the product is taken."""

  def __init__(self, layer, bias: Optional[jax.Array], source_path: Tuple, dtype=None,
               activation: Optional[str] = None):
    self.kernel_shape = tuple(layer.kernel_shape)
    self.dtype = dtype  # the dense layer's computation dtype (None: promote x and float32)
    self.activation = activation  # fused into the product
    self.source_path = tuple(source_path)
    # One variable holds the whole compressed weight (its arrays are the pytree's leaves):
    # nnx.jit walks one node per layer instead of one per array.
    self.weights = SparseWeight(jax.device_put(layer))
    self.bias = None if bias is None else nnx.Param(bias)

  @property
  def name(self) -> str:
    """The path of the dense layer this one replaces, as errors name it."""
    return paths.layer_name(self.source_path)

  @property
  def layer(self) -> formats.Format:
    """The compressed weight (a :class:`pcs.sparse.CSR`, :class:`pcs.sparse.NM`, ...)."""
    return self.weights.get_value()

  def _bias(self):
    return None if self.bias is None else self.bias.get_value()

  def _input(self, x):
    """``x`` in the dtype the dense layer returns for it (the compiled products compute in float32
    and return their input's dtype)."""
    return x.astype(self.dtype or jax.numpy.promote_types(x.dtype, jax.numpy.float32))

  def _record(self, x, y=None, options=None):
    """Notes the input (and, for a Linear or Conv, the output) while :func:`probe` runs."""
    recording = _recording.get()
    if recording is not None:
      recording.inputs[self.source_path] = _export.LayerInput(tuple(x.shape), options)
      if y is not None:
        recording.outputs.append((y, self.source_path))


def _sharded(y: jax.Array, out_sharding) -> jax.Array:
  """``y`` constrained to ``out_sharding`` where the caller names one (as the dense
  layers take it; the sparse product itself runs replicated)."""
  return y if out_sharding is None else jax.lax.with_sharding_constraint(y, out_sharding)


class SparseLinear(_SparseLayer):
  """``nnx.Linear`` with a compressed weight: y = x W + b."""

  def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
    y = relu_lib.marked(layers.dense(self._input(x), self.layer, self._bias(), self.activation,
                                     name=self.name),
                        self.source_path, self.activation == 'relu')
    self._record(x, y)
    return _sharded(y, out_sharding)


class SparseLinearGeneral(_SparseLayer):
  """``nnx.LinearGeneral`` (as the projections of ``nnx.MultiHeadAttention`` are) or an
  ``nnx.Einsum`` of the same form (``'btd,dnh->btnh'``) with a compressed weight: the
  contracted axes (the input's last ones) flattened into one, y = x W + b with W the
  (prod(in), prod(out)) matrix of the kernel, and the output's features unflattened to
  ``out_features``."""

  def __init__(self, layer, bias, source_path, dtype=None, activation=None, *, in_features,
               out_features):
    super().__init__(layer, None if bias is None else bias.reshape(-1), source_path, dtype,
                     activation)
    self.in_features = tuple(in_features)
    self.out_features = tuple(out_features)

  def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
    count = len(self.in_features)
    if x.ndim < count or tuple(x.shape[x.ndim - count:]) != self.in_features:
      raise ValueError(f'{self.name}: the input must end in axes {self.in_features}; got '
                       f'shape {tuple(x.shape)}.')
    lead = x.shape[:x.ndim - count]
    x = x.reshape(lead + (int(np.prod(self.in_features)),))
    self._record(x)
    y = layers.dense(self._input(x), self.layer, self._bias(), self.activation, name=self.name)
    y = relu_lib.marked(y.reshape(lead + self.out_features), self.source_path,
                        self.activation == 'relu')
    return _sharded(y, out_sharding)


class SparseConv(_SparseLayer):
  """``nnx.Conv`` with a compressed weight (channels last, no groups or dilation)."""

  def __init__(self, layer, bias, source_path, dtype=None, activation=None, *, strides,
               padding):
    super().__init__(layer, bias, source_path, dtype, activation)
    self.strides = strides
    self.padding = padding

  def __call__(self, x: jax.Array) -> jax.Array:
    options = {'strides': self.strides, 'padding': self.padding}
    y = layers.conv(self._input(x), self.layer, self._bias(), activation=self.activation,
                    name=self.name, **options)
    y = relu_lib.marked(y, self.source_path, self.activation == 'relu')
    self._record(x, y, options)
    return y


class FoldedNorm(nnx.Module):
  """An ``nnx.BatchNorm`` folded into the layer before it (``source_path``): the identity,
  in inference mode only. Its ``use_running_average`` follows the model's mode
  (``model.train()`` sets it False, ``model.eval()`` True), as the norm's did.

  Raises:
    ValueError: when called in training mode, where the norm would normalize with the
      batch's statistics, not the running ones folded into the layer.
  """

  def __init__(self, source_path: Tuple, norm_path: Tuple,
               use_running_average: Optional[bool]):
    self.source_path = tuple(source_path)
    self.norm_path = tuple(norm_path)
    self.use_running_average = use_running_average

  def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None,
               **kwargs) -> jax.Array:
    del kwargs  # mask: a folded norm ran without one
    if not (self.use_running_average if use_running_average is None else use_running_average):
      raise ValueError(f'pcs.sparse.nnx: the batch norm {paths.layer_name(self.norm_path)} is '
                       f'folded into {paths.layer_name(self.source_path)}; it runs in '
                       'inference mode only (call model.eval() on the sparse model).')
    return x


class _NormProbe(nnx.Module):
  """An ``nnx.BatchNorm`` in the probe's copy: notes whether its input is a layer's
  output and it runs in inference mode, then normalizes."""

  def __init__(self, norm: nnx.BatchNorm, path: Tuple):
    self.norm = norm
    self.path = tuple(path)

  def __call__(self, x, *args, **kwargs):
    recording = _recording.get()
    source = next((p for y, p in recording.outputs if y is x), None) if recording else None
    if source is not None and folding.in_inference(self.norm, x, (x,) + args, kwargs):
      recording.norms.setdefault(source, []).append(self.path)
    return self.norm(x, *args, **kwargs)


def is_sparse(model) -> bool:
  """Whether ``model`` holds sparse layers (it is a copy :func:`sparsify` made)."""
  return any(isinstance(node, _SparseLayer) for _, node in nnx.iter_graph(model))


def _targets(model) -> Dict[Tuple, Any]:
  return {tuple(path): node for path, node in nnx.iter_graph(model)
          if isinstance(node, (nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Conv))}


def _unsupported(model) -> Dict[Tuple, str]:
  """``{module path: why}`` of the layers with a kernel that cannot run sparse."""
  out = {}
  for path, node in nnx.iter_graph(model):
    why = layers.conv_unsupported(node) if isinstance(node, nnx.Conv) else None
    if why is not None:
      out[tuple(path)] = f'{why}: it runs dense'
    elif isinstance(node, (nnx.LinearGeneral, nnx.Einsum)) and _general_features(node) is None:
      out[tuple(path)] = (f'an nnx.{type(node).__name__} that is not one product over its '
                          "input's last axes (batch axes, or axes in another order) runs dense")
    elif (isinstance(getattr(node, 'kernel', None), nnx.Param)
          and not isinstance(node, (nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Conv))):
      out[tuple(path)] = f'{type(node).__name__} layers run dense (no sparse version)'
  return out


def _einsum_features(module) -> Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
  """``(in dims, out dims)`` of an ``nnx.Einsum`` ``'<lead><in>,<in><out>-><lead><out>'``
  (e.g. ``'btd,dnh->btnh'``: the kernel's leading indices contracted with the input's last
  ones, in order, and its other indices the output's last ones, in order, with a bias,
  if any, over those), else None."""
  operands, output = module.einsum_str.replace(' ', '').split('->')
  inputs, kernel = operands.split(',')
  contracted = [i for i in kernel if i not in output]
  count = len(contracted)
  if (not count or list(kernel[:count]) != contracted or not inputs.endswith(kernel[:count])
      or not output.endswith(kernel[count:])
      or inputs[:len(inputs) - count] != output[:len(output) - len(kernel) + count]):
    return None
  shape = tuple(module.kernel.shape)
  if module.bias is not None and tuple(module.bias.shape) != shape[count:]:
    return None
  return shape[:count], shape[count:]


def _general_features(module) -> Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
  """``(in_features, out_features)`` of an ``nnx.LinearGeneral`` or ``nnx.Einsum`` that is
  one product over its input's last axes (no batch axes), else None."""
  if isinstance(module, nnx.Einsum):
    return _einsum_features(module)
  axis = tuple(module.axis) if isinstance(module.axis, (tuple, list)) else (module.axis,)
  in_features, out_features = tuple(module.in_features), tuple(module.out_features)
  if module.batch_axis or axis != tuple(range(-len(in_features), 0)):
    return None
  return in_features, out_features


def _sparse_module(path, module, layer, epilogue: _export.Epilogue):
  name = paths.layer_name(path)
  expected = tuple(module.kernel.shape)
  general = (_general_features(module) if isinstance(module, (nnx.LinearGeneral, nnx.Einsum))
             else None)
  if general is not None:
    expected = (int(np.prod(general[0])), int(np.prod(general[1])))
  if tuple(layer.kernel_shape) != expected:
    raise ValueError(f'pcs.sparse.nnx: the exported kernel of {name} has shape '
                     f'{layer.kernel_shape} but the model\'s layer has {expected}; the '
                     'export belongs to another model.')
  bias = module.bias.get_value() if getattr(module, 'bias', None) is not None else None
  if epilogue.norm is not None:
    bias = epilogue.bias
  common = (layer, bias, path, module.dtype, epilogue.activation)
  if isinstance(module, nnx.Linear):
    return SparseLinear(*common)
  if isinstance(module, (nnx.LinearGeneral, nnx.Einsum)):
    if general is None:
      raise ValueError(f'{name}: an nnx.{type(module).__name__} with batch axes or contracted '
                       'axes other than its input\'s last cannot run sparse; export it with a '
                       '`where` that leaves it out.')
    return SparseLinearGeneral(*common, in_features=general[0], out_features=general[1])
  return SparseConv(*common, **layers.conv_options(module, name))


def _replace(model, path, new) -> None:
  parent = model
  for key in path[:-1]:
    parent = parent[key] if isinstance(key, int) else getattr(parent, key)
  if isinstance(path[-1], int):
    parent[path[-1]] = new
  else:
    setattr(parent, path[-1], new)


def _swapped(model, exported: _export.Exported):
  """A copy of ``model`` with the exported layers sparse and their folded norms the
  identity."""
  model = nnx.clone(model)
  targets = _targets(model)
  norms = {tuple(path): node for path, node in nnx.iter_graph(model)
           if isinstance(node, nnx.BatchNorm)}
  for path, layer in exported.items():
    if path not in targets:
      raise ValueError(f'pcs.sparse.nnx: the exported layer {paths.layer_name(path)} is '
                       'not an nnx.Linear, nnx.LinearGeneral, nnx.Einsum or nnx.Conv of this '
                       'model; the export belongs to another model.')
    new = _sparse_module(path, targets[path], layer, exported.epilogue(path))
    if not path:  # the model is itself the layer
      return new
    _replace(model, path, new)
  for norm, path in exported.folded_norms.items():
    if norm not in norms:
      raise ValueError(f'pcs.sparse.nnx: the batch norm {paths.path_name(norm)} folded '
                       'into the export is not an nnx.BatchNorm of this model; the export '
                       'belongs to another model.')
    _replace(model, norm, FoldedNorm(path, norm, norms[norm].use_running_average))
  return model


def probe(model, inputs, where: selection.Where = None, **call_kwargs) -> Probe:
  """:class:`Probe` of ``model`` called on ``inputs``: every Linear/LinearGeneral/Conv
  that ``where`` selects, and the batch norms that fold into them (traced with
  ``jax.eval_shape`` on a copy with those layers sparse: nothing is computed).

  A batch norm folds into the Linear or Conv before it when its input is the very array
  (``is``) that layer returned and it runs in inference mode (``model.eval()``) on the
  last axis; a layer whose output reaches two batch norms folds into neither.
  """
  state = nnx.state(model, nnx.Param)
  copy = _swapped(model, _export.export_kernels(state, format='csr', where=where,
                                                layouts=layout_lib.kernel_layouts(model),
                                                unsupported=_unsupported(model)))
  for path, node in list(nnx.iter_graph(copy)):
    if isinstance(node, nnx.BatchNorm) and path:
      _replace(copy, tuple(path), _NormProbe(node, tuple(path)))
  graphdef, variables = nnx.split(copy)
  recording = _Recording({}, [], {})
  token = _recording.set(recording)
  try:
    jax.eval_shape(lambda v, x: nnx.merge(graphdef, v)(x, **call_kwargs), variables, inputs)
  finally:
    _recording.reset(token)
  return Probe(recording.inputs, {path: found[0] for path, found in recording.norms.items()
                                  if len(found) == 1})


def bind(model, **call_kwargs) -> bound.BoundCall:
  """``x -> model(x, **call_kwargs)`` compiled, with the model's state bound on device.

  ``nnx.split`` once, then one ``jax.jit`` of ``nnx.merge`` and the call, given the state
  as device arrays flattened once, the arrays the call reads only
  (:class:`pcs.sparse._bound.BoundCall`): a call is one dispatch, without ``nnx.jit``'s
  walk over the module graph. The model's variables are read, not updated (inference;
  for a decoding cache that a call updates, use ``nnx.jit`` or ``nnx.cached_partial``).

  Raises:
    ValueError (at the first call): if the call updates the model's state, as a model in
      training mode does (a dropout's RNG count, a batch norm's statistics).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from pcs.sparse import nnx as sparse_nnx
    >>> model = nnx.Linear(2, 2, use_bias=False, rngs=nnx.Rngs(0))
    >>> model.kernel.set_value(jnp.array([[0.0, 1.0], [2.0, 0.0]]))
    >>> sparse_nnx.bind(sparse_nnx.sparsify(model, format='csr'))(jnp.ones((1, 2)))
    Array([[2., 1.]], dtype=float32)
  """
  return _bound(model, call_kwargs, _BIND_UPDATES)


_BIND_UPDATES = (
    "pcs: the bound call updates the model's state ({what}), as a dropout's RNG "
    "count or a batch norm's statistics do in training mode. A bound call reads the state "
    'and does not write it back (a dropout mask would repeat on every call): call '
    "model.eval() first, or give the call's own flag in call_kwargs; for a call that must "
    'update the model (a decoding cache), use nnx.jit.')
_EXPORT_UPDATES = (
    "pcs.export: the model's call with `inputs` and `call_kwargs` updates its state "
    "({what}); the export times calls that only read it. Call model.eval() first (a "
    "dropout's RNG count, a batch norm's statistics), or give the call's own flag in "
    'call_kwargs. For a decoding cache, export the call without it (a prompt of the '
    "decoding batch, `decode=False` or your model's flag): the sparse layers are the same "
    'for a cached step, which the sparse model then runs as the dense one does.')


def _bound(model, call_kwargs: Dict[str, Any], updates: str) -> bound.BoundCall:
  """:func:`bind`, its refusal of a call that updates the state worded by ``updates``
  (``{what}``: the variables the call changed)."""
  graphdef, state = nnx.split(model)

  def call(state, *args):
    before = jax.tree_util.tree_flatten_with_path(state)[0]  # merge shares its variables
    model = nnx.merge(graphdef, state)
    out = model(*args, **call_kwargs)
    after = jax.tree.leaves(nnx.state(model))
    if len(after) != len(before) or any(a is not b for (_, b), a in zip(before, after)):
      changed = [paths.path_name(path) for (path, b), a in zip(before, after) if a is not b]
      raise ValueError(updates.format(what=changed or 'new variables'))
    return out
  return bound.BoundCall(call, state)


def export_module(model, *, inputs: Any = None,
                  call_kwargs: Optional[Dict[str, Any]] = None,
                  format: str = 'auto',  # pylint: disable=redefined-builtin
                  n_m: Optional[Tuple[int, int]] = None, where: selection.Where = None,
                  batch_size: int = 1, margin: float = 0.05, fold_batch_norm: bool = True,
                  fuse_relu: Any = 'auto') -> _export.Exported:
  """:func:`pcs.export` of an ``nnx.Module``: its Linear/Conv kernels in their fastest
  layout, each measured at the input it gets from ``inputs`` (an example batch)."""
  if not boundary.is_nnx_module(model):
    raise TypeError(f'`model` must be an nnx.Module; got {type(model).__name__}.')
  def calls(candidate):
    return (_bound(_swapped(model, chosen), call_kwargs or {}, _EXPORT_UPDATES)
            for chosen in (_export.Exported({}, ()), candidate))

  def compare(candidate):
    dense, sparse = calls(candidate)
    _export.check_against_dense(dense, sparse, inputs)
    return timing.compare_calls(dense, sparse, inputs, threshold=1.0 / (1.0 - margin))
  found, compare_model, find_relus = Probe({}, {}), None, None
  state, layouts, unsupported = (nnx.state(model, nnx.Param), layout_lib.kernel_layouts(model),
                                 _unsupported(model))
  if inputs is not None:
    found, compare_model = probe(model, inputs, where, **(call_kwargs or {})), compare

    def find_relus(trial):  # every candidate layer sparse, its batch norm folded
      graphdef, variables = nnx.split(_swapped(model, trial))
      return relu_lib.relu_only(
          lambda v, x: nnx.merge(graphdef, v)(x, **(call_kwargs or {})), variables, inputs)
  norms = _norm_folds(model, found.norms) if fold_batch_norm else None
  exported = _export.export_kernels(
      state, format=format, n_m=n_m, where=where,
      batch_size=batch_size, layer_inputs=found.inputs or None, margin=margin,
      compare_model=compare_model, layouts=layouts, unsupported=unsupported, norms=norms,
      fuse_relu=fuse_relu, find_relus=find_relus)
  if format != 'auto' and exported.epilogues and inputs is not None:
    dense, sparse = calls(exported)
    _export.check_against_dense(dense, sparse, inputs)
  return exported


def _variable(node, name: str) -> Any:
  """The value of ``node``'s variable ``name``; None where it has none (no node, or an
  attribute that is no ``nnx.Variable``, as a batch norm's scale without ``use_scale``)."""
  variable = getattr(node, name, None)
  return variable.get_value() if isinstance(variable, nnx.Variable) else None


def _norm_values(norm) -> Tuple:
  """``(mean, var, scale, bias)`` of an ``nnx.BatchNorm``, None where it has none."""
  return tuple(_variable(norm, name) for name in ('mean', 'var', 'scale', 'bias'))


def _norm_folds(model, norms: Dict[Tuple, Tuple]) -> Dict[Tuple, folding.NormFold]:
  """The :class:`NormFold` of every batch norm found, from ``model``'s own."""
  nodes = {tuple(path): node for path, node in nnx.iter_graph(model)}
  out = {}
  for layer, path in norms.items():
    mean, var, scale, bias = _norm_values(nodes[path])
    out[layer] = folding.norm_fold(path, mean, var, nodes[path].epsilon, scale, bias)
  return out


def sparsify(model, exported: Optional[_export.Exported] = None, **export_kwargs):
  """A copy of the pruned ``model`` whose exported Linear/Conv layers run sparsely.

  Args:
    model: an ``nnx.Module`` (after ``nnx.update(model, pcs.prune(...)[0])``).
    exported: from :func:`pcs.export` (or :func:`pcs.sparse.load`); if None, it is made
      with ``pcs.export(model, **export_kwargs)`` (e.g. ``inputs=x`` to measure each
      layer and fold its batch norms).

  Returns:
    The sparse copy; ``model`` is unchanged.

  Raises:
    ValueError: if ``exported`` names a layer the model lacks or of another shape, or
      one whose kernel in ``model`` is not the one exported, nor the bias and batch norm
      folded into it (the weights changed after the export:
      :func:`pcs.sparse._export.check_kernels`).

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
    exported = export_module(model, **export_kwargs)
  elif export_kwargs:
    raise ValueError(f'pcs.sparse.nnx.sparsify: give either `exported` or export options, '
                     f'not both; got {sorted(export_kwargs)}.')
  if not isinstance(exported, _export.Exported):
    raise TypeError(f'`exported` must come from pcs.export; got {type(exported).__name__}.')
  nodes = {tuple(path): node for path, node in nnx.iter_graph(model)}

  def fold_at(path, norm):
    held = _norm_values(nodes.get(norm))
    return None if held[0] is None else (_variable(nodes.get(path), 'bias'), *held)
  _export.check_kernels(exported, lambda path: _variable(nodes.get(path), 'kernel'),
                        'pcs.sparse.nnx.sparsify', fold_at)
  return _swapped(model, exported)


def restore(model, variables, exported: _export.Exported):
  """The sparse model of ``model``'s architecture with the saved ``variables`` and
  ``exported`` layers (what :func:`pcs.sparse.load` returns given an ``nnx.Module``), in
  inference mode (``.eval()``: dropout off, batch norms on their statistics), as an
  export is run; ``.train()`` gives training mode back.

  Args:
    model: a newly built instance of the same architecture (e.g. ``Model(rngs=nnx.Rngs(0))``);
      its variables are overwritten with the saved ones.
    variables, exported: as :func:`pcs.sparse.load` reads them.

  Raises:
    ValueError: if a saved variable is missing from ``model`` or has another shape, or
      the file holds no statistics for a batch norm of ``model`` that is not folded (it
      would run on the new model's initial ones).
  """
  saved = {tuple(paths.key_name(k) for k in path): value
           for path, value in jax.tree_util.tree_flatten_with_path(variables)[0]}
  nodes = [(tuple(path), node) for path, node in nnx.iter_graph(model)]
  found = {path: node for path, node in nodes if isinstance(node, nnx.Variable)}
  norms = {path for path, node in nodes if isinstance(node, nnx.BatchNorm)}
  unsaved = sorted(paths.path_name(path) for path, node in found.items()
                   if isinstance(node, nnx.BatchStat) and path not in saved
                   and path[:-1] in norms and path[:-1] not in exported.folded_norms)
  if unsaved:
    raise ValueError(f'pcs.sparse.load: the file holds no value for the batch statistics '
                     f'{unsaved} of `model`, whose batch norms are not folded into the export; '
                     'save nnx.state(model, nnx.Param, nnx.BatchStat).')
  for path, value in saved.items():
    name = paths.path_name(path)
    if path not in found or tuple(found[path].get_value().shape) != value.shape:
      raise ValueError(f'pcs.sparse.load: the saved variable {name} {value.shape} has no '
                       'counterpart of that shape in `model`; the file belongs to another '
                       'model.')
    found[path].set_value(jax.numpy.asarray(value))
  sparse = _swapped(model, exported)  # the template's own kernels are not the export's
  sparse.eval()
  return sparse


def dense_kernels(model) -> Dict[Tuple, np.ndarray]:
  """``{module path: dense kernel}`` of every sparse layer of ``model`` (for checks)."""
  return {tuple(path): node.layer.todense() for path, node in nnx.iter_graph(model)
          if isinstance(node, _SparseLayer)}
