"""The Flax linen adapter: export a pruned linen model and run it with its sparse layers.

``pcs.export(variables, model=model, inputs=x)`` reads the model once (:func:`probe`:
``jax.eval_shape`` of ``model.init`` with ``flax.linen.intercept_methods``, so nothing
is computed): each ``nn.Dense`` / ``nn.Conv`` / ``nn.DenseGeneral`` input, where the
layers are measured, and each ``nn.BatchNorm`` in inference mode whose input is the very
array a Dense or Conv returned, which is folded into it (``_folding.py``).
``pcs.sparse_apply(model, variables, exported, x)`` runs the unchanged model with
``flax.linen.intercept_methods``, computing each exported layer with its sparse kernel
(bias fused) and running each folded batch norm as the identity on that layer's output;
:func:`bind` compiles that with the arrays placed on device once. Needs flax
(``pip install 'pcs[export]'``).
"""

from collections.abc import Mapping
from typing import Any, Dict, NamedTuple, Optional, Tuple

import jax
import numpy as np

from pcs.core import _extras as extras
from pcs.core import _layout as layout_lib
from pcs.core import _paths as paths
from pcs.core import _selection as selection
from pcs.sparse import _bound as bound
from pcs.sparse import _export
from pcs.sparse import _folding as folding
from pcs.sparse import _layers as layers
from pcs.sparse import _relu as relu_lib
from pcs.sparse import _timing as timing


def _general(module, x) -> Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
  """``(contracted dims, feature dims)`` of a ``DenseGeneral`` call on ``x`` that is one
  product over ``x``'s trailing axes (as attention's projections are), else None."""
  axis = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
  axis = tuple(a % x.ndim for a in axis)
  if module.batch_dims or axis != tuple(range(x.ndim - len(axis), x.ndim)):
    return None
  features = module.features if isinstance(module.features, (tuple, list)) else (
      module.features,)
  return tuple(x.shape[x.ndim - len(axis):]), tuple(features)


def _window(conv) -> Tuple[int, ...]:
  """A Conv's window as a tuple (Flax takes an int for a 1-D one)."""
  return ((conv.kernel_size,) if isinstance(conv.kernel_size, int)
          else tuple(conv.kernel_size))


def _layer_input(nn, module, x) -> Optional[_export.LayerInput]:
  """The input a Dense/Conv/DenseGeneral layer's product sees: a DenseGeneral's with its
  contracted axes flattened into one; None for another layer, or a DenseGeneral that is
  not one product."""
  if isinstance(module, nn.Conv):
    if layers.conv_unsupported(module) is not None:  # it stays dense (probe: unsupported)
      return None
    return _export.LayerInput(tuple(x.shape),
                              layers.conv_options(module, paths.layer_name(module.path)))
  if isinstance(module, nn.Dense):
    return _export.LayerInput(tuple(x.shape))
  general = _general(module, x) if isinstance(module, nn.DenseGeneral) else None
  if general is not None:
    contracted = general[0]
    lead = x.shape[:x.ndim - len(contracted)]
    return _export.LayerInput(tuple(lead) + (int(np.prod(contracted)),))
  return None


class NormAfter(NamedTuple):
  """An inference batch norm whose input is a layer's output: its path and attributes."""
  path: Tuple
  epsilon: float
  use_scale: bool
  use_bias: bool


class Probe(NamedTuple):
  """What one trace of the model finds: ``inputs``, ``{layer path: LayerInput}``;
  ``norms``, ``{Dense/Conv path: NormAfter}`` of the batch norms that fold;
  ``unsupported``, ``{layer path: why}`` of the layers with a kernel that run dense (an
  ``nn.Einsum``, a DenseGeneral that is not one product)."""
  inputs: Dict[Tuple, _export.LayerInput]
  norms: Dict[Tuple, NormAfter]
  unsupported: Dict[Tuple, str]


def probe(model: Any, inputs: Any, **call_kwargs) -> Probe:
  """:class:`Probe` of ``model`` called on ``inputs`` (traced: nothing is computed).

  A batch norm folds into the Dense or Conv before it when its input is the very array
  (``is``) that layer returned, and it runs in inference mode on the last axis; a layer
  whose output reaches two batch norms folds into neither.
  """
  nn = extras.require('flax.linen', 'pcs.export(model=...)')
  seen: Dict[Tuple, _export.LayerInput] = {}
  outputs: list = []  # (array, layer path) of every Dense/Conv call, kept alive for `is`
  norms: Dict[Tuple, list] = {}
  unsupported: Dict[Tuple, str] = {}

  def record(next_fun, args, kwargs, context):
    module, path = context.module, tuple(context.module.path)
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    if isinstance(module, nn.BatchNorm):
      source = next((p for y, p in outputs if y is args[0]), None)
      if source is not None and folding.in_inference(module, args[0], args, kwargs):
        norms.setdefault(source, []).append(
            NormAfter(path, module.epsilon, module.use_scale, module.use_bias))
    layer_input = _layer_input(nn, module, args[0])
    y = next_fun(*args, **kwargs)
    if layer_input is None and module.has_variable('params', 'kernel'):
      why = layers.conv_unsupported(module) if isinstance(module, nn.Conv) else None
      unsupported[path] = (f'{why}: it runs dense' if why else
                           f'{type(module).__name__} layers run dense (pcs runs Dense, Conv '
                           'and DenseGeneral layers that are one product sparse)')
    if layer_input is not None:
      seen[path] = layer_input
      if isinstance(module, (nn.Dense, nn.Conv)):
        outputs.append((y, path))
    return y

  def init(x):
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), x, **call_kwargs)
  jax.eval_shape(init, inputs)
  return Probe(seen, {path: found[0] for path, found in norms.items() if len(found) == 1},
               unsupported)


def layer_inputs(model: Any, inputs: Any, **call_kwargs) -> Dict[Tuple, _export.LayerInput]:
  """``{module path: LayerInput}`` of every Dense/Conv/DenseGeneral call of ``model`` on
  ``inputs``."""
  return probe(model, inputs, **call_kwargs).inputs


def _leaf(tree, path, collection):
  """The leaf at ``path`` of the ``collection`` tree of a model's variables.

  Raises:
    ValueError: naming the path, where the variables hold no such leaf.
  """
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      raise ValueError(f"pcs: the model's variables hold no {collection} entry "
                       f'{paths.path_name(path)}: they are not the variables of the model '
                       'that was exported.')
    tree = tree[key]
  return tree


def _norm_folds(norms: Dict[Tuple, NormAfter], variables) -> Dict[Tuple, folding.NormFold]:
  """The :class:`NormFold` of every batch norm found, from the model's variables."""
  out = {}
  for layer, norm in norms.items():
    stats = _leaf(variables['batch_stats'], norm.path, 'batch_stats')
    # A norm without scale and bias (use_scale=use_bias=False) has no params entry.
    params = (_leaf(variables['params'], norm.path, 'params')
              if norm.use_scale or norm.use_bias else {})
    out[layer] = folding.norm_fold(norm.path, stats['mean'], stats['var'], norm.epsilon,
                                   params['scale'] if norm.use_scale else None,
                                   params['bias'] if norm.use_bias else None)
  return out


def _is_variables(tree, collections) -> bool:
  """Whether ``tree`` is a model's variables (``{'params': ..., 'batch_stats': ...}``)
  rather than its params, judged by the collections ``model.init`` makes."""
  return (isinstance(tree, Mapping) and 'params' in tree and set(tree) <= set(collections))


def export_model(tree: Any, *, model: Any = None, inputs: Any = None,
                 call_kwargs: Optional[Dict[str, Any]] = None, format: str = 'auto',  # pylint: disable=redefined-builtin
                 n_m: Optional[Tuple[int, int]] = None, where: selection.Where = None,
                 batch_size: int = 1, margin: float = 0.05, fold_batch_norm: bool = True,
                 fuse_relu: Any = 'auto') -> _export.Exported:
  """:func:`pcs.export` of a linen model's ``tree`` (its params, or its variables), or of
  a params tree without a model (an NNX state too)."""
  call_kwargs = call_kwargs or {}
  if (model is None) != (inputs is None):
    raise ValueError('pcs.export: `model` and `inputs` go together: on an example input the '
                     'export reads each layer\'s input shape, finds the batch norms to fold '
                     'and the ReLUs to fuse, and checks the result against the dense model. '
                     'Pass both, or neither (the kernels alone, without folding or fusing).')
  if model is None:
    if isinstance(tree, Mapping) and isinstance(tree.get('params'), Mapping):
      tree = tree['params']  # a model's variables: the layers are its params' paths
    return _export.export_kernels(tree, format=format, n_m=n_m, where=where,
                                  batch_size=batch_size, margin=margin, fuse_relu=fuse_relu)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **call_kwargs), inputs)
  given = dict(tree) if _is_variables(tree, shapes) else {'params': tree}
  variables = {**jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), shapes), **given}
  found = probe(model, inputs, **call_kwargs)
  norms = (_norm_folds(found.norms, variables)
           if fold_batch_norm and 'batch_stats' in given else {})

  def calls(candidate):
    return (bind(model, variables, chosen, **call_kwargs)
            for chosen in (_export.Exported({}, ()), candidate))

  def compare_model(candidate):
    dense, sparse = calls(candidate)
    _export.check_against_dense(dense, sparse, inputs)
    return timing.compare_calls(dense, sparse, inputs, threshold=1.0 / (1.0 - margin))
  layouts = layout_lib.kernel_layouts(model, inputs, **call_kwargs)

  def find_relus(trial):  # every candidate layer sparse, its batch norm folded
    return relu_lib.relu_only(
        lambda v, e, x: sparse_apply(model, v, e, x, **call_kwargs), variables, trial, inputs)
  exported = _export.export_kernels(
      given['params'], format=format, n_m=n_m, where=where, batch_size=batch_size,
      layer_inputs=found.inputs, margin=margin, compare_model=compare_model,
      layouts=layouts, norms=norms, fuse_relu=fuse_relu, find_relus=find_relus,
      unsupported=found.unsupported)
  if format != 'auto' and exported.epilogues:
    dense, sparse = calls(exported)
    _export.check_against_dense(dense, sparse, inputs)
  return exported


def bind(model: Any, variables: Any, exported: _export.Exported,
         **call_kwargs) -> bound.BoundCall:
  """``x -> model.apply(variables, x, **call_kwargs)`` with ``exported``'s layers sparse.

  The variables and the compressed arrays are placed on the default device and
  flattened once, and bound to one jitted :func:`sparse_apply` that is given the arrays
  it reads only (:class:`pcs.sparse._bound.BoundCall`), so a call is one dispatch
  (compiled once per input shape). Same as ``exported.bind(model, variables,
  **call_kwargs)``.

  Example:
    >>> import jax.numpy as jnp, flax.linen as nn, pcs
    >>> params = {'kernel': jnp.array([[0.0, 1.0], [2.0, 0.0]]), 'bias': jnp.zeros(2)}
    >>> run = pcs.export(params, format='csr').bind(nn.Dense(2), {'params': params})
    >>> run(jnp.ones((1, 2)))
    Array([[2., 1.]], dtype=float32)
  """
  return bound.BoundCall(
      lambda v, e, *args: sparse_apply(model, v, e, *args, **call_kwargs), variables, exported)


def _expected_shape(nn, module, x, name):
  """The kernel shape the model's layer takes on ``x`` (a DenseGeneral's as its 2-D
  product) and, for a DenseGeneral, its ``(contracted, features)`` dims."""
  if isinstance(module, nn.Dense):
    return (x.shape[-1], module.features), None
  if isinstance(module, nn.Conv):
    return _window(module) + (x.shape[-1], module.features), None
  general = _general(module, x)
  if general is None:
    raise ValueError(f'pcs: the exported layer {name} is a DenseGeneral with '
                     'batch dims or contracted axes that are not its input\'s last; it '
                     'cannot run sparse (export it with a `where` that leaves it out).')
  return (int(np.prod(general[0])), int(np.prod(general[1]))), general


def sparse_apply(model: Any, variables: Any, exported: _export.Exported, *args, **kwargs):
  """``model.apply(variables, *args, **kwargs)`` with the exported layers computed sparsely.

  Every ``nn.Dense`` or ``nn.Conv`` whose module path is in ``exported`` uses its sparse
  kernel (with its bias, or the folded bias of a batch norm, and a fused ReLU in the
  product); a folded ``nn.BatchNorm`` returns that layer's output as it is; all other
  layers run as usual. Jittable: ``exported`` is a pytree. For inference: a folded
  batch norm must run with its running statistics. The exported layers compute with the
  kernels (and folded biases) of the export, whatever ``variables`` holds for them: this
  function, which runs under the caller's trace, does not compare them (``exported.bind``
  does, once, when it binds the weights).

  Raises:
    ValueError: if an exported kernel's shape differs from the layer's, an exported
      layer is not a Dense/Conv call of ``model`` (a mismatched model/export pair), a
      folded batch norm is called in training mode, or the call updates an immutable
      collection (training mode).

  Example:
    >>> import jax.numpy as jnp, flax.linen as nn, pcs
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(2, name='Dense_0')(x)
    >>> params = {'Dense_0': {'kernel': jnp.array([[0.0, 1.0], [2.0, 0.0]]), 'bias': jnp.zeros(2)}}
    >>> pcs.sparse_apply(Net(), {'params': params}, pcs.export(params, format='csr'),
    ...                  jnp.ones((1, 2)))
    Array([[2., 1.]], dtype=float32)
  """
  nn = extras.require('flax.linen', 'pcs.sparse_apply')
  if not isinstance(exported, _export.Exported):
    raise TypeError(f'`exported` must come from pcs.export; got {type(exported).__name__}.')
  if not (isinstance(variables, Mapping) and 'params' in variables):
    raise ValueError('pcs: `variables` must be the model\'s variables, '
                     "{'params': params, ...} (as model.apply takes them); got "
                     f'{type(variables).__name__} without a "params" entry.')
  params, folded_norms = variables['params'], exported.folded_norms
  held = {c.path: c.kernel_shape for c in exported.choices}  # each kernel as the model holds it
  used: set = set()
  folded_outputs: list = []

  def interceptor(next_fun, call_args, call_kwargs, context):
    module, path = context.module, tuple(context.module.path)
    if context.method_name != '__call__':
      return next_fun(*call_args, **call_kwargs)
    if path in folded_norms and any(y is call_args[0] for y in folded_outputs):
      if not folding.in_inference(module, call_args[0], call_args, call_kwargs):
        raise ValueError(f'pcs: the batch norm {paths.layer_name(path)} is folded '
                         f'into {paths.layer_name(folded_norms[path])}; it runs in inference '
                         'mode only.')
      return call_args[0]
    if path not in exported or not isinstance(module, (nn.Dense, nn.Conv, nn.DenseGeneral)):
      return next_fun(*call_args, **call_kwargs)
    layer, x, name = exported[path], call_args[0], paths.layer_name(path)
    expected, general = _expected_shape(nn, module, x, name)
    if general is not None and path in held:  # the axes, not only their product
      axes = tuple(held[path][:len(general[0])])
      if general[0] != axes:
        raise ValueError(f'pcs: {name}: the input must end in axes {axes}; got shape '
                         f'{tuple(x.shape)}.')
    if tuple(layer.kernel_shape) != expected:
      raise ValueError(f'pcs: the exported kernel of {name} has shape '
                       f'{layer.kernel_shape} but the model\'s layer takes {expected} on its '
                       f'input of shape {tuple(x.shape)}: the input is not the one the model '
                       'was exported for, or the export belongs to another model.')
    used.add(path)
    epilogue = exported.epilogue(path)
    bias = epilogue.bias
    if epilogue.norm is None and module.use_bias:
      bias = _leaf(params, path + ('bias',), 'params')
    # The dense layer's output dtype: its `dtype`, else the inputs' and float32 kernel's.
    # (The kernels compute in float32 and return x's dtype.)
    x = x.astype(module.dtype or jax.numpy.promote_types(x.dtype, jax.numpy.float32))
    if isinstance(module, nn.Dense):
      y = layers.dense(x, layer, bias, epilogue.activation, name=name)
    elif isinstance(module, nn.Conv):
      y = layers.conv(x, layer, bias, activation=epilogue.activation, name=name,
                      **layers.conv_options(module, name))
    else:
      lead = x.shape[:x.ndim - len(general[0])]
      y = layers.dense(x.reshape(lead + (expected[0],)), layer,
                       None if bias is None else bias.reshape(-1),
                       epilogue.activation, name=name).reshape(lead + general[1])
    y = relu_lib.marked(y, path, epilogue.activation == 'relu')
    if epilogue.norm is not None:
      folded_outputs.append(y)
    return y

  try:
    with nn.intercept_methods(interceptor):
      out = model.apply(variables, *args, **kwargs)
  except extras.require('flax.errors', 'pcs.sparse_apply').ModifyScopeVariableError as error:
    raise ValueError(f'pcs: the model\'s call updates its variables, as in training mode '
                     f'({error}); the exported model runs for inference: call it in inference '
                     "mode (`train=False` to bind or sparse_apply; call_kwargs={'train': False} "
                     'to pcs.export), or pass `mutable=[...]` to sparse_apply for a cache.'
                     ) from error
  missing = [p for p in exported if p not in used]
  if missing:
    raise ValueError(f'pcs: exported layers '
                     f'{[paths.layer_name(p) for p in missing]} '
                     'are not Dense/Conv/DenseGeneral layers this model calls; the export '
                     'belongs to another model.')
  return out
