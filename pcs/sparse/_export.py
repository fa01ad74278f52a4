"""Export: every pruned Dense/Conv kernel in a compressed layout, kept sparse only where the
sparse product is faster than the dense one for that shape, sparsity and batch.

With ``format='auto'`` (the default) each layer's dense product and its sparse product
are compiled and timed at the layer's input shape (the batch the user names; for a
convolution its real spatial size), and the layer goes sparse only when the sparse
product takes at most ``1 - margin`` of the dense time. So an exported model is never
slower than dense by more than timing noise. :meth:`Exported.summary` says which layers
went sparse and why.
"""

import dataclasses
import functools
import time
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pcs.core import _boundary as boundary
from pcs.core import _selection as selection
from pcs.sparse import _formats as formats
from pcs.sparse import _layers as layers

FORMATS = ('auto', 'csr', 'n_m')
ACCEPTED = ('linen params (a dict such as variables["params"]), an nnx.State from '
            'nnx.state(model, nnx.Param), or an nnx.Module')
Path = Tuple[Any, ...]


class LayerInput(NamedTuple):
  """What a layer is called with: its input's shape and, for a Conv, strides and padding."""
  shape: Tuple[int, ...]
  conv_options: Optional[Dict[str, Any]] = None


class LayerChoice(NamedTuple):
  """One layer's export decision (``format``: ``'csr'``, ``'n_m'`` or ``'dense'``)."""
  path: Path
  kernel_shape: Tuple[int, ...]
  sparsity: float
  format: str
  dense_ms: Optional[float]
  sparse_ms: Optional[float]
  reason: str


@functools.partial(jax.tree_util.register_dataclass, data_fields=['layers'],
                   meta_fields=['choices', 'model_ms'])
@dataclasses.dataclass(frozen=True)
class Exported(Mapping):
  """The layers that run sparsely, ``{module path: CSR or NM}``, and every layer's choice.

  A mapping (``exported[('Dense_0',)]``) and a pytree (it passes through ``jax.jit``).
  ``model_ms``: the whole model's measured (dense, exported) time, when it was measured.
  """
  layers: Dict[Path, Any]
  choices: Tuple[LayerChoice, ...]
  model_ms: Optional[Tuple[float, float]] = None

  def __getitem__(self, path: Path):
    return self.layers[path]

  def __iter__(self) -> Iterator[Path]:
    return iter(self.layers)

  def __len__(self) -> int:
    return len(self.layers)

  def summary(self) -> str:
    """A table: each layer, its shape and sparsity, the format kept and why."""
    lines = [f'{"layer":<28} {"kernel":<18} {"sparsity":>8}  {"kept as":<7} reason']
    for c in self.choices:
      name = '/'.join(str(p) for p in c.path)
      lines.append(f'{name:<28} {"x".join(map(str, c.kernel_shape)):<18} '
                   f'{100 * c.sparsity:7.1f}%  {c.format:<7} {c.reason}')
    if self.model_ms is not None:
      dense_ms, sparse_ms = self.model_ms
      lines.append(f'whole model: {sparse_ms:.3f} ms exported vs {dense_ms:.3f} ms dense '
                   f'({dense_ms / sparse_ms:.2f}x)')
    return '\n'.join(lines)


def key_name(key) -> Any:
  """A key of a jax key path as the dict key, attribute name or index it stands for."""
  return getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key)))


def kernels_of(params: Any, where: selection.Where = None) -> Dict[Path, np.ndarray]:
  """``{module path: kernel}`` for the selected leaves named ``kernel`` with ndim >= 2."""
  params = boundary.plain(params)
  mask = selection.select(params, where)
  out = {}
  for path, leaf in selection.selected_leaves(params, mask):
    names = tuple(key_name(k) for k in path)
    if names and names[-1] == 'kernel' and np.ndim(leaf) >= 2:
      out[names[:-1]] = np.asarray(leaf)
  return out


def median_ms(fn, *args) -> float:
  """Median wall time of ``fn(*args)`` (jitted, compiled first) in ms over >= 5 runs."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times: list = []
  spent = 0.0
  while len(times) < 5 or (spent < 0.05 and len(times) < 200):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
    spent += times[-1]
  return 1e3 * float(np.median(times))


def _dense_product(kernel, conv_options):
  if kernel.ndim == 2:
    return lambda x, k: x @ k
  spatial = kernel.ndim - 2
  strides = conv_options.get('strides', 1)
  strides = (strides,) * spatial if isinstance(strides, int) else tuple(strides)
  letters = 'DHW'[-spatial:] if spatial <= 3 else None
  numbers = ('N' + letters + 'C', letters + 'IO', 'N' + letters + 'C')

  def product(x, k):
    pads = layers.conv_pads(conv_options.get('padding', 'SAME'), x.shape[1:-1],
                            k.shape[:-2], strides)
    return jax.lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=numbers)
  return product


def _conv(x, layer, options):
  return layers.conv(x, layer, **options)


def _measure(kernel: np.ndarray, layer, layer_input: LayerInput) -> Tuple[float, float]:
  x = jnp.asarray(np.random.default_rng(0).normal(size=layer_input.shape), jnp.float32)
  options = layer_input.conv_options or {}
  dense_ms = median_ms(_dense_product(kernel, options), x, jnp.asarray(kernel))
  if kernel.ndim == 2:
    sparse_ms = median_ms(layers.dense, x, layer)
  else:
    sparse_ms = median_ms(functools.partial(_conv, options=options), x, layer)
  return dense_ms, sparse_ms


def export(params: Any, *, format: str = 'auto',  # pylint: disable=redefined-builtin
           n_m: Optional[Tuple[int, int]] = None, where: selection.Where = None,
           batch_size: int = 1, layer_inputs: Optional[Dict[Path, LayerInput]] = None,
           margin: float = 0.05,
           time_model: Optional[Callable[[Dict[Path, Any]], float]] = None) -> Exported:
  """The pruned kernels of ``params`` in a compressed layout, where that is faster.

  Args:
    params: linen params, or an NNX ``State`` (as :func:`pcs.core.plain` reads it).
    format: ``'auto'`` keeps each layer in CSR (or N:M when ``n_m`` is given) if its
      measured sparse product is faster than dense, else dense; ``'csr'`` or ``'n_m'``
      export every selected layer in that layout without measuring.
    n_m: ``(N, M)``: the pattern the kernels hold (``pcs.prune(params, n_m=(N, M))``),
      required with ``format='n_m'``; a kernel without it is refused.
    where: which leaves to export (default: every leaf named ``kernel`` with ndim >= 2).
    batch_size: the batch to measure Dense layers at when ``layer_inputs`` lacks them.
    layer_inputs: ``{module path: LayerInput}`` as the adapters record them; needed to
      measure a Conv layer (its spatial size).
    margin: a layer goes sparse only if its sparse time is below (1 - margin) x dense.
    time_model: ``layers -> ms``, the whole model's time with ``layers`` sparse (the
      adapters pass it when they have the model). A layer faster alone can make the
      model slower (a custom call ends XLA's fusions around it), so the layers chosen
      are checked together: while the model is not faster than dense, the weaker half
      of them goes back to dense, down to none, so the model is never slower than dense
      by more than timing noise.

  Returns:
    :class:`Exported`.

  Raises:
    ValueError: for a tree with no exportable kernel (naming the accepted kinds), an
      unknown ``format``, or a kernel without the ``n_m`` pattern.
  """
  if format not in FORMATS:
    raise ValueError(f'`format` must be one of {FORMATS}; got {format!r}.')
  if format == 'n_m' and n_m is None:
    raise ValueError("`format`='n_m' needs `n_m`=(N, M), the pattern the kernels were "
                     'pruned to, e.g. n_m=(2, 4).')
  if n_m is not None and (not isinstance(n_m, (tuple, list)) or len(n_m) != 2):
    raise ValueError(f'`n_m` must be a pair (N, M); got {n_m!r}.')
  if not (isinstance(batch_size, int) and batch_size >= 1):
    raise ValueError(f'`batch_size` must be an integer >= 1; got {batch_size!r}.')
  kernels = kernels_of(params, where)
  if not kernels:
    raise ValueError(f'pcs.export found no Dense/Conv kernel (a leaf named "kernel" with '
                     f'ndim >= 2) in the tree it was given; it accepts {ACCEPTED}.')
  exported, choices = {}, []
  for path, kernel in kernels.items():
    name = '/'.join(map(str, path))
    if kernel.dtype != np.float32:
      raise TypeError(f'pcs.export: the kernel of {name} is {kernel.dtype}; the sparse '
                      'kernels compute in float32.')
    layer = (formats.nm(kernel, *n_m, name=name) if n_m is not None else formats.csr(kernel))
    kind = 'n_m' if n_m is not None else 'csr'
    sparsity = 1.0 - np.count_nonzero(kernel) / kernel.size
    if format != 'auto':
      exported[path] = layer
      choices.append(LayerChoice(path, kernel.shape, sparsity, kind, None, None,
                                 f'format={format!r}'))
      continue
    layer_input = (layer_inputs or {}).get(path)
    if layer_input is None:
      if kernel.ndim > 2:
        raise ValueError(f'pcs.export: measuring the Conv layer {name} needs its input '
                         'shape; pass the model and an example input (inputs=...), or '
                         "format='csr' to export without measuring.")
      layer_input = LayerInput((batch_size, kernel.shape[0]))
    dense_ms, sparse_ms = _measure(kernel, layer, layer_input)
    faster = sparse_ms < (1.0 - margin) * dense_ms
    speed = f'{dense_ms / sparse_ms:.2f}x dense' if sparse_ms > 0 else ''
    reason = (f'sparse {sparse_ms:.3f} ms vs dense {dense_ms:.3f} ms ({speed}) at input '
              f'{"x".join(map(str, layer_input.shape))}')
    if faster:
      exported[path] = layer
    choices.append(LayerChoice(path, kernel.shape, sparsity, kind if faster else 'dense',
                               dense_ms, sparse_ms, reason))
  if format != 'auto' or time_model is None:
    return Exported(exported, tuple(choices))
  return _checked_together(exported, choices, time_model, margin)


def _checked_together(exported, choices, time_model, margin) -> Exported:
  """Drops the weaker half of the sparse layers until the whole model beats dense."""
  dense_ms = time_model({})
  gain = {c.path: c.dense_ms / c.sparse_ms for c in choices if c.path in exported}
  while True:
    model_ms = time_model(exported) if exported else dense_ms
    if not exported or model_ms < (1.0 - margin) * dense_ms:
      break
    weakest = sorted(exported, key=lambda p: gain[p])[:max(1, len(exported) // 2)]
    exported = {p: layer for p, layer in exported.items() if p not in weakest}
    choices = [c._replace(format='dense', reason=c.reason + '; but the whole model with it '
                          f'was not faster than dense ({model_ms:.3f} vs {dense_ms:.3f} ms)')
               if c.path in weakest else c for c in choices]
  return Exported(exported, tuple(choices), (dense_ms, model_ms))
