"""Which axes of a kernel meet the layer's input: the layout N:M groups along.

A layer with kernel K computes ``y = sum over the in axes of x * K``. Each axis of K is
one of four kinds (a :class:`KernelLayout`):

* ``in_axes``: contracted with the input's features (the fan-in);
* ``out_axes``: the output's features;
* ``window_axes``: a convolution's window offsets, contracted with neighbouring input
  positions;
* ``batch_axes``: axes the input and the output carry too (``LinearGeneral``'s
  ``batch_axis``, an einsum index in all three operands): one product per index.

Transposed to ``window + batch + in + out`` and reshaped, every kernel is a stack of
matrices of shape ``(prod(in), prod(out))``: a Dense (in, out) kernel is one; an
attention query kernel (in, heads, head_dim) is (in, heads * head_dim); its out
kernel (heads, head_dim, out) is (heads * head_dim, out); a Conv (*window, in, out)
kernel is one matrix per window offset. N:M groups M consecutive weights of the
flattened in axes (:func:`pcs.prune`).

The layout is the module's, not the shape's: a 1-D conv kernel (k, in, out) and a
query kernel (in, heads, head_dim) look alike. :func:`kernel_layouts` reads it from
a Flax model; :func:`named_layout` recognises a kernel by its name alone.
"""

from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import jax

from pcs.core import _boundary as boundary
from pcs.core import _extras as extras
from pcs.core import _paths as paths

Path = Tuple[Any, ...]

ATTENTION_INPUTS = ('query', 'key', 'value')


class KernelLayout(NamedTuple):
  """The kinds of a kernel's axes (see the module docstring); together they are each axis
  exactly once.

  Example:
    >>> import pcs
    >>> pcs.KernelLayout(in_axes=(0, 1), out_axes=(2,))  # attention out: (heads, head_dim, out)
    KernelLayout(in_axes=(0, 1), out_axes=(2,), window_axes=(), batch_axes=())
  """
  in_axes: Tuple[int, ...]
  out_axes: Tuple[int, ...]
  window_axes: Tuple[int, ...] = ()
  batch_axes: Tuple[int, ...] = ()

  def check(self, shape: Tuple[int, ...], name: str) -> None:
    """Raises ValueError unless the four kinds name each axis of ``shape`` exactly once."""
    axes = sorted(self.in_axes + self.out_axes + self.window_axes + self.batch_axes)
    if axes != list(range(len(shape))) or not self.in_axes:
      raise ValueError(
          f'The layout of {name} must name each of its {len(shape)} axes (shape {shape}) '
          f'exactly once, with at least one in axis; got {self}.')


def dense_layout() -> KernelLayout:
  """(in, out): Dense, Linear, Embed (a lookup is the product of a one-hot and the table)."""
  return KernelLayout(in_axes=(0,), out_axes=(1,))


def conv_layout(ndim: int) -> KernelLayout:
  """(*window, in, out): Conv."""
  return KernelLayout(in_axes=(ndim - 2,), out_axes=(ndim - 1,),
                      window_axes=tuple(range(ndim - 2)))


def general_layout(num_batch: int, num_in: int, num_out: int) -> KernelLayout:
  """(*batch, *in, *out): LinearGeneral / DenseGeneral (and the attention projections)."""
  return KernelLayout(in_axes=tuple(range(num_batch, num_batch + num_in)),
                      out_axes=tuple(range(num_batch + num_in, num_batch + num_in + num_out)),
                      batch_axes=tuple(range(num_batch)))


def einsum_layout(einsum_str: str) -> Optional[KernelLayout]:
  """The layout of an einsum ``'input,kernel->output'`` (``...`` allowed in input and
  output): a kernel index in the input only is an in axis, in the output only an out
  axis, in both a batch axis. None for a kernel index in neither operand.

  Example:
    >>> einsum_layout('btd,dnh->btnh')  # a query projection
    KernelLayout(in_axes=(0,), out_axes=(1, 2), window_axes=(), batch_axes=())
  """
  operands, output = einsum_str.replace(' ', '').replace('...', '').split('->')
  inputs, kernel = operands.split(',')
  kinds: Dict[str, list] = {'in': [], 'out': [], 'batch': []}
  for axis, index in enumerate(kernel):
    if index in inputs and index in output:
      kinds['batch'].append(axis)
    elif index in inputs:
      kinds['in'].append(axis)
    elif index in output:
      kinds['out'].append(axis)
    else:
      return None
  if not kinds['in']:
    return None
  return KernelLayout(tuple(kinds['in']), tuple(kinds['out']), (), tuple(kinds['batch']))


def _rank(kernel_size) -> int:
  """The spatial rank of a Conv's window (Flax takes an int for a 1-D one)."""
  return 1 if isinstance(kernel_size, int) else len(kernel_size)


def _module_name(path: Path) -> str:
  """The name of the layer a leaf belongs to: the last key of its path that is neither
  the leaf name ``kernel`` nor a list index (``convs/0/kernel`` -> ``convs``)."""
  names = [str(k) for k in path if not isinstance(k, int) and not str(k).isdigit()]
  if names and names[-1] == 'kernel':
    names.pop()
  return names[-1] if names else ''


def named_layout(path: Path, ndim: int) -> Optional[KernelLayout]:
  """The layout of a kernel known by its rank and name alone, else None.

  * ``ndim == 2``: (in, out), whatever the name.
  * a layer name containing ``conv`` (linen's ``Conv_0``, NNX attributes ``conv1``,
    ``convs``): (*window, in, out).
  * a ``query`` / ``key`` / ``value`` kernel of ndim 3: (in, heads, head_dim); an ``out``
    kernel of ndim 3: (heads, head_dim, out). These are the projections of Flax's
    ``nnx.MultiHeadAttention`` and linen ``MultiHeadDotProductAttention``.

  ``path`` holds the keys of the leaf's path (dict keys, attribute names, indices).
  """
  if ndim == 2:
    return dense_layout()
  name = _module_name(path)
  if ndim >= 3 and 'conv' in name.lower():
    return conv_layout(ndim)
  if ndim == 3 and name in ATTENTION_INPUTS:
    return general_layout(0, 1, 2)
  if ndim == 3 and name == 'out':
    return general_layout(0, 2, 1)
  return None


def resolve(layouts: Optional[Mapping]) -> Dict[str, KernelLayout]:
  """``layouts`` (as :func:`kernel_layouts` returns them, or keyed ``'a/0/kernel'``) keyed
  by :func:`pcs.core._paths.path_name`; raises ValueError for a value that is not a
  :class:`KernelLayout`."""
  resolved = {}
  for path, layout in (layouts or {}).items():
    if not isinstance(layout, KernelLayout):
      raise ValueError(f'`layouts` must map parameter paths to pcs.KernelLayout; got '
                       f'{type(layout).__name__} for {paths.path_name(path)!r}.')
    resolved[paths.path_name(path)] = layout
  return resolved


def layout_for(name: str, shape: Tuple[int, ...],
               layouts: Dict[str, KernelLayout]) -> Optional[KernelLayout]:
  """The layout of the leaf ``name`` (``'a/0/kernel'``) of ``shape``: ``layouts``' (checked
  against the shape), else :func:`named_layout`'s, else None."""
  if name in layouts:
    layouts[name].check(tuple(shape), name)
    return layouts[name]
  return named_layout(tuple(name.split('/')), len(shape))


def _nnx_layouts(model) -> Dict[Path, KernelLayout]:
  nnx = extras.require('flax.nnx', 'pcs.kernel_layouts')
  found: Dict[Path, KernelLayout] = {}
  for path, node in nnx.iter_graph(model):
    path = tuple(path)
    if isinstance(node, nnx.Embed):
      found[path + ('embedding',)] = dense_layout()
    elif isinstance(node, nnx.Conv):
      found[path + ('kernel',)] = conv_layout(_rank(node.kernel_size) + 2)
    elif isinstance(node, nnx.Linear):
      found[path + ('kernel',)] = dense_layout()
    elif isinstance(node, nnx.LinearGeneral):
      found[path + ('kernel',)] = general_layout(len(node.batch_axis), len(node.in_features),
                                                 len(node.out_features))
    elif isinstance(node, nnx.Einsum) and node.einsum_str is not None:
      layout = einsum_layout(node.einsum_str)
      if layout is not None:
        found[path + ('kernel',)] = layout
  return found


def _linen_layout(nn, module, args, kwargs) -> Optional[Tuple[str, KernelLayout]]:
  """(parameter name, layout) of a linen layer called with ``args``, else None."""
  if isinstance(module, nn.Embed):
    return 'embedding', dense_layout()
  if isinstance(module, nn.Conv):
    return 'kernel', conv_layout(_rank(module.kernel_size) + 2)
  if isinstance(module, nn.Dense):
    return 'kernel', dense_layout()
  if isinstance(module, nn.DenseGeneral):
    count = lambda v: len(v) if isinstance(v, (tuple, list)) else 1
    return 'kernel', general_layout(count(module.batch_dims), count(module.axis),
                                    count(module.features))
  if isinstance(module, nn.Einsum):
    einsum_str = kwargs.get('einsum_str', args[1] if len(args) > 1 else module.einsum_str)
    layout = einsum_layout(einsum_str) if einsum_str is not None else None
    return ('kernel', layout) if layout is not None else None
  return None


def _linen_layouts(model, inputs, init_kwargs) -> Dict[Path, KernelLayout]:
  nn = extras.require('flax.linen', 'pcs.kernel_layouts')
  found: Dict[Path, KernelLayout] = {}

  def record(next_fun, args, kwargs, context):
    named = (_linen_layout(nn, context.module, args, kwargs)
             if context.method_name == '__call__' else None)
    if named is not None:
      found[tuple(context.module.path) + (named[0],)] = named[1]
    return next_fun(*args, **kwargs)

  def init(x):
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), x, **init_kwargs)
  jax.eval_shape(init, inputs)
  return found


def kernel_layouts(model: Any, inputs: Any = None, **init_kwargs) -> Dict[Path, KernelLayout]:
  """``{parameter path: KernelLayout}`` of every layer of a Flax model whose layout is known.

  Reads ``nnx.Linear``, ``nnx.LinearGeneral`` (its ``batch_axis``, ``in_features`` and
  ``out_features``), ``nnx.Einsum`` (its einsum string), ``nnx.Conv`` and ``nnx.Embed``,
  so the projections of ``nnx.MultiHeadAttention`` too; for linen, ``nn.Dense``,
  ``nn.DenseGeneral`` (so ``MultiHeadDotProductAttention``'s), ``nn.Conv``, ``nn.Einsum``
  and ``nn.Embed``, recorded while ``model.init`` is traced on ``inputs`` (with
  ``jax.eval_shape``: nothing is computed). Other layers are left out. The paths are
  those of the parameters: ``nnx.state(model, nnx.Param)`` or linen's
  ``variables['params']``, ending in ``kernel`` (``embedding`` for Embed).

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> from flax import nnx
    >>> attention = nnx.MultiHeadAttention(4, 8, decode=False, rngs=nnx.Rngs(0))
    >>> layouts = pcs.kernel_layouts(attention)
    >>> layouts[('query', 'kernel')], layouts[('out', 'kernel')].in_axes
    (KernelLayout(in_axes=(0,), out_axes=(1, 2), window_axes=(), batch_axes=()), (0, 1))
    >>> params = nnx.state(attention, nnx.Param)
    >>> pruned, masks = pcs.prune(params, n_m=(2, 4), layouts=layouts)

  Args:
    model: an ``nnx.Module``, or a linen module with ``inputs``.
    inputs: for linen, an example input of ``model.init`` (only its shape is used).
    **init_kwargs: for linen, keyword arguments of ``model.init`` (e.g. ``train=False``).

  Returns:
    A dict from parameter paths (tuples of keys) to :class:`KernelLayout`, for
    :func:`pcs.prune`'s ``layouts``.
  """
  if boundary.is_nnx_module(model):
    return _nnx_layouts(model)
  if not callable(getattr(model, 'init', None)):
    raise TypeError(f'pcs.kernel_layouts: `model` must be an nnx.Module or a linen module; '
                    f'got {type(model).__name__}.')
  if inputs is None:
    raise ValueError('pcs.kernel_layouts: a linen `model` needs `inputs`, an example input '
                     'of model.init (its layers exist only once it is called).')
  return _linen_layouts(model, inputs, init_kwargs)
