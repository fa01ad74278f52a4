"""The Flax linen adapter: export a pruned linen model and run it with its sparse layers.

``pcs.export(params, model=model, inputs=x)`` records each ``nn.Dense`` / ``nn.Conv``
input (``jax.eval_shape`` of ``model.init``, so nothing is computed) and measures the
layers there; ``pcs.sparse_apply(model, variables, exported, x)`` runs the unchanged
model with ``flax.linen.intercept_methods``, computing each exported layer with its
sparse kernel (bias fused) and every other layer as usual; :func:`bind` compiles that
with the arrays placed on device once. Needs flax (``pip install 'pcs[export]'``).
"""

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np

from pcs.core import _extras as extras
from pcs.core import _layout as layout_lib
from pcs.core import _selection as selection
from pcs.sparse import _export
from pcs.sparse import _layers as layers
from pcs.sparse import _timing as timing


def _conv_options(module) -> Dict[str, Any]:
  if module.feature_group_count != 1:
    raise ValueError(f'{"/".join(module.path)}: sparse convolutions take '
                     'feature_group_count=1 only.')
  spatial = len(module.kernel_size)
  for name in ('input_dilation', 'kernel_dilation'):
    dilation = getattr(module, name)
    if dilation not in (None, 1) and tuple(dilation) != (1,) * spatial:
      raise ValueError(f'{"/".join(module.path)}: sparse convolutions take no {name}.')
  if isinstance(module.padding, str) and module.padding.upper() not in ('SAME', 'VALID'):
    raise ValueError(f'{"/".join(module.path)}: sparse convolutions take SAME, VALID or '
                     f'explicit padding; got {module.padding!r}.')
  return {'strides': module.strides or 1, 'padding': module.padding}


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


def _layer_input(nn, module, x) -> Optional[_export.LayerInput]:
  """The input a Dense/Conv/DenseGeneral layer's product sees: a DenseGeneral's with its
  contracted axes flattened into one; None for another layer, or a DenseGeneral that is
  not one product."""
  if isinstance(module, nn.Conv):
    return _export.LayerInput(tuple(x.shape), _conv_options(module))
  if isinstance(module, nn.Dense):
    return _export.LayerInput(tuple(x.shape))
  general = _general(module, x) if isinstance(module, nn.DenseGeneral) else None
  if general is not None:
    contracted = general[0]
    lead = x.shape[:x.ndim - len(contracted)]
    return _export.LayerInput(tuple(lead) + (int(np.prod(contracted)),))
  return None


def layer_inputs(model: Any, inputs: Any, **apply_kwargs) -> Dict[Tuple, _export.LayerInput]:
  """``{module path: LayerInput}`` of every Dense/Conv/DenseGeneral call of ``model`` on
  ``inputs``."""
  nn = extras.require('flax.linen', 'pcs.export(model=...)')
  seen: Dict[Tuple, _export.LayerInput] = {}

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      layer_input = _layer_input(nn, context.module, args[0])
      if layer_input is not None:
        seen[tuple(context.module.path)] = layer_input
    return next_fun(*args, **kwargs)

  def init(x):
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), x, **apply_kwargs)
  jax.eval_shape(init, inputs)
  return seen


def export(params: Any, *, model: Any = None, inputs: Any = None,
           apply_kwargs: Optional[Dict[str, Any]] = None, format: str = 'auto',  # pylint: disable=redefined-builtin
           n_m: Optional[Tuple[int, int]] = None, where: selection.Where = None,
           batch_size: int = 1, margin: float = 0.05) -> _export.Exported:
  """The pruned kernels of a linen model (or an NNX state) in their fastest layout.

  Every leaf named ``kernel`` (Dense/Conv) is stored in CSR (or N:M with ``n_m``); with
  ``format='auto'`` a layer stays sparse only where its sparse product, timed at the
  layer's input, beats the dense one (see :func:`pcs.sparse.export_layers`).

  Args:
    params: the model's params after :func:`pcs.prune` (or an NNX state).
    model: the linen module; with ``inputs``, each layer is measured at its real input
      (required for Conv layers under ``format='auto'``).
    inputs: an example input of the batch size served (only its shape is used).
    apply_kwargs: keyword arguments of the model's ``__call__`` (e.g. ``train=False``).
    format, n_m, where, batch_size, margin: as in :func:`pcs.sparse.export_layers`.

  Returns:
    :class:`pcs.sparse.Exported`; ``print(exported.summary())`` shows the choices.

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> exported = pcs.export({'Dense_0': {'kernel': jnp.array([[0.0, 1.0], [2.0, 0.0]])}},
    ...                       format='csr')
    >>> exported[('Dense_0',)].nnz
    2
  """
  recorded, layouts = None, None
  if model is not None or inputs is not None:
    if model is None or inputs is None:
      raise ValueError('pcs.export: `model` and `inputs` go together (the layers are '
                       'measured at the inputs the model gives them).')
    recorded = layer_inputs(model, inputs, **(apply_kwargs or {}))
    layouts = layout_lib.kernel_layouts(model, inputs, **(apply_kwargs or {}))
  compare_model = None
  if model is not None:
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x,
                                                    **(apply_kwargs or {})), inputs)
    variables = {**jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), variables),
                 'params': params}

    def compare_model(layers):
      dense, sparse = (bind(model, variables, _export.Exported(chosen, ()),
                            **(apply_kwargs or {})) for chosen in ({}, layers))
      return timing.compare_calls(dense, sparse, inputs, threshold=1.0 / (1.0 - margin))
  return _export.export(params, format=format, n_m=n_m, where=where, batch_size=batch_size,
                        layer_inputs=recorded, margin=margin, compare_model=compare_model,
                        layouts=layouts)



def bind(model: Any, variables: Any, exported: _export.Exported,
         **apply_kwargs) -> Callable:
  """``x -> model.apply(variables, x, **apply_kwargs)`` with ``exported``'s layers sparse.

  The variables and the compressed arrays are placed on the default device once and
  bound to one jitted :func:`sparse_apply`, so a call is one dispatch (compiled once per
  input shape). Same as ``exported.bind(model, variables, **apply_kwargs)``.

  Example:
    >>> import jax.numpy as jnp, flax.linen as nn, pcs
    >>> params = {'kernel': jnp.array([[0.0, 1.0], [2.0, 0.0]]), 'bias': jnp.zeros(2)}
    >>> run = pcs.export(params, format='csr').bind(nn.Dense(2), {'params': params})
    >>> run(jnp.ones((1, 2)))
    Array([[2., 1.]], dtype=float32)
  """
  run = jax.jit(lambda v, e, *args: sparse_apply(model, v, e, *args, **apply_kwargs))
  return functools.partial(run, jax.device_put(variables), jax.device_put(exported))


def sparse_apply(model: Any, variables: Any, exported: _export.Exported, *args, **kwargs):
  """``model.apply(variables, *args, **kwargs)`` with the exported layers computed sparsely.

  Every ``nn.Dense`` or ``nn.Conv`` whose module path is in ``exported`` uses its sparse
  kernel (with its bias fused into the product); all other layers run as usual.
  Jittable: ``exported`` is a pytree.

  Raises:
    ValueError: if an exported kernel's shape differs from the layer's, or an exported
      layer is not a Dense/Conv call of ``model`` (a mismatched model/export pair).

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
  params = variables['params']
  used = set()

  def interceptor(next_fun, call_args, call_kwargs, context):
    module = context.module
    path = tuple(module.path)
    if (context.method_name != '__call__' or path not in exported
        or not isinstance(module, (nn.Dense, nn.Conv, nn.DenseGeneral))):
      return next_fun(*call_args, **call_kwargs)
    layer, x = exported[path], call_args[0]
    name = '/'.join(path)
    general = _general(module, x) if isinstance(module, nn.DenseGeneral) else None
    if isinstance(module, nn.Dense):
      expected = (x.shape[-1], module.features)
    elif isinstance(module, nn.Conv):
      expected = tuple(module.kernel_size) + (x.shape[-1], module.features)
    elif general is not None:
      expected = (int(np.prod(general[0])), int(np.prod(general[1])))
    else:
      raise ValueError(f'pcs.sparse_apply: the exported layer {name} is a DenseGeneral '
                       'with batch dims or contracted axes that are not its input\'s last; '
                       'it cannot run sparse (export it with a `where` that leaves it out).')
    if tuple(layer.kernel_shape) != expected:
      raise ValueError(f'pcs.sparse_apply: the exported kernel of {name} has shape '
                       f'{layer.kernel_shape} but the model\'s layer takes {expected}; '
                       'the export belongs to another model.')
    used.add(path)
    bias = None
    if module.use_bias:
      bias = params
      for key in path + ('bias',):
        bias = bias[key]
    # The dense layer's output dtype: its `dtype`, else the inputs' and float32 kernel's.
    # (The kernels compute in float32 and return x's dtype.)
    x = x.astype(module.dtype or jax.numpy.promote_types(x.dtype, jax.numpy.float32))
    if isinstance(module, nn.Dense):
      return layers.dense(x, layer, bias)
    if isinstance(module, nn.Conv):
      return layers.conv(x, layer, bias, **_conv_options(module))
    lead = x.shape[:x.ndim - len(general[0])]
    y = layers.dense(x.reshape(lead + (expected[0],)), layer,
                     None if bias is None else bias.reshape(-1))
    return y.reshape(lead + general[1])

  with nn.intercept_methods(interceptor):
    out = model.apply(variables, *args, **kwargs)
  missing = [p for p in exported if p not in used]
  if missing:
    raise ValueError(f'pcs.sparse_apply: exported layers {["/".join(p) for p in missing]} '
                     'are not Dense/Conv/DenseGeneral layers this model calls; the export '
                     'belongs to another model.')
  return out
