"""Export: every pruned Dense/Conv kernel in a compressed layout, kept sparse only where the
sparse product is faster than the dense one for that shape, sparsity and batch.

With ``format='auto'`` (the default) each layer's dense product and its sparse product
are compiled and timed in pairs at the layer's input shape (the batch the user
names; for a convolution its real spatial size; ``pcs/sparse/_timing.py``), and the layer
goes sparse only when the median paired speed-up exceeds ``1 / (1 - margin)``. Given the
model, the whole model is then timed the way it will be called (:meth:`Exported.bind`)
against dense, and layers go back to dense until it is faster. :meth:`Exported.summary`
says which layers went sparse, what was measured and its spread.

Epilogues (:class:`Epilogue`): the adapters can fold an inference batch norm into the
layer before it (``pcs/sparse/_folding.py``) and fuse a ReLU into the product's store (the
layers whose output only a ReLU reads, found in a trace, or named by the user;
``pcs/sparse/_relu.py``); the exported layer then holds the folded kernel and bias. A
residual add is not fused into the product: it stays an XLA op, which XLA fuses into the
op that pads the next convolution's input or splits it into stride phases (the profile
of ResNet-20's call in BENCHMARKS.md).

The compressed arrays are placed on the default device once, when they are made (here
and in :func:`pcs.sparse.load`): a jitted call then takes them as they are, where numpy
arrays would be copied into new device buffers on every call.
"""

import dataclasses
import functools
import hashlib
import math
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional, Set, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pcs.core import _boundary as boundary
from pcs.core import _layout as layout_lib
from pcs.core import _paths as paths
from pcs.core import _selection as selection
from pcs.sparse import _folding as folding
from pcs.sparse import _formats as formats
from pcs.sparse import _layers as layers
from pcs.sparse import _relu as relu_lib
from pcs.sparse import _timing as timing

FORMATS = ('auto',) + tuple(formats.FORMATS)
# A Dense layer at batch 1 (the matrix-vector product) runs on the calling thread alone
# where, timed in a loop of its own, that takes under this share of the pool's time,
# t_caller < POOL_KEPT_UNTIL * t_pool; other products take the faster. Elsewhere the two
# are timed again right after the dense product, as a layer of a model runs after other
# ops, and the calling thread takes the layer if it is faster there; a tie keeps the pool.
# (A convolution with one output position at batch 1, a one-column product too, is left
# to the faster: ResNet-20's small convolutions, most of them faster on the calling
# thread, ran 1.2x slower as a model kept on the pool.)
#
# The loop of its own misleads at batch 1, both ways:
# - The hand-off differs. On the Zen 4, handing rows to XLA's pool took 2.4 us (median;
#   90th percentile 12 us) in a loop of its own and 13 us (90th percentile 226 us) right
#   after XLA's dense product. So a small layer (4096 x 4096 at 99%: 0.09 ms alone) ran
#   1.5x faster on the pool in its own loop and slower than the calling thread after other
#   work, in every benchmark run. In runs 64, 65 and 68 its own loop read 1.09, 1.28 and
#   0.97, the pool was kept without a second timing, and in the benchmark's rounds it took
#   1.30x, 1.65x and 1.20x the calling thread's time.
# - Spells of seconds came and went within one process in which the helper started too
#   late to help: the 4096 x 4096 layers at 80-95% read 0.83-0.94 alone in 7 of their 15
#   timings in runs 67-71, where the pool was 1.4-2.0x faster in the rounds. The bar keeps
#   such a layer off the calling thread unless that is clearly faster alone, and the
#   second timing decides.
POOL_KEPT_UNTIL = 0.75
ACCEPTED = ('linen params (a dict such as variables["params"]), an nnx.State from '
            'nnx.state(model, nnx.Param), or an nnx.Module')
Path = Tuple[Any, ...]


class LayerInput(NamedTuple):
  """What a layer is called with: its input's shape and, for a Conv, strides and padding."""
  shape: Tuple[int, ...]
  conv_options: Optional[Dict[str, Any]] = None


class LayerChoice(NamedTuple):
  """One layer's export decision (``format``: ``'csr'``, ``'n_m'`` or ``'dense'``), the
  digest of the kernel it was made from (:func:`kernel_digest`) and, where a batch norm
  was folded into it, of the other values the fold read
  (:func:`pcs.sparse._folding.fold_digest`); None in files saved before each was kept."""
  path: Path
  kernel_shape: Tuple[int, ...]
  sparsity: float
  format: str
  dense_ms: Optional[float]
  sparse_ms: Optional[float]
  reason: str
  kernel_digest: Optional[str] = None
  fold_digest: Optional[str] = None


@functools.partial(jax.tree_util.register_dataclass, data_fields=['bias'],
                   meta_fields=['norm', 'activation'])
@dataclasses.dataclass(frozen=True)
class Epilogue:
  """What an exported layer computes after its product W^T x^T, besides its own bias.

  Attributes:
    bias: with a folded batch norm, the folded bias b' (float32, (features,)), which
      replaces the layer's own; else None.
    norm: the module path of the inference batch norm folded into the layer (it runs
      as the identity on this layer's output), or None.
    activation: ``'relu'`` fused into the product's store, or None.
  """
  bias: Optional[Any] = None
  norm: Optional[Path] = None
  activation: Optional[str] = None


@functools.partial(jax.tree_util.register_dataclass, data_fields=['weights', 'epilogues'],
                   meta_fields=['choices', 'model'])
@dataclasses.dataclass(frozen=True)
class Exported(Mapping):
  """The compressed weights, ``{module path: CSR or NM}`` of the layers that run sparsely,
  and every layer's choice.

  A mapping (``exported[('Dense_0',)]``) and a pytree (it passes through ``jax.jit``).
  ``model``: the whole model timed against dense, when it was measured.
  ``epilogues``: ``{module path: Epilogue}`` of the exported layers with a folded batch
  norm or a fused ReLU.
  """
  weights: Dict[Path, Any]
  choices: Tuple[LayerChoice, ...]
  model: Optional[timing.Comparison] = None
  epilogues: Dict[Path, Epilogue] = dataclasses.field(default_factory=dict)

  def epilogue(self, path: Path) -> Epilogue:
    """The layer's :class:`Epilogue` (an empty one where nothing is folded or fused)."""
    return self.epilogues.get(path, Epilogue())

  @property
  def folded_norms(self) -> Dict[Path, Path]:
    """``{batch norm path: the layer folded with it}``."""
    return {e.norm: path for path, e in self.epilogues.items() if e.norm is not None}

  @property
  def model_ms(self) -> Optional[Tuple[float, float]]:
    """The whole model's measured (dense, exported) median time in ms, if measured."""
    return None if self.model is None else (self.model.dense_ms, self.model.sparse_ms)

  def bind(self, model: Any, variables: Any = None, **call_kwargs) -> Callable:
    """``x -> model(x)`` with these layers sparse: compiled, its arrays bound on device.

    The fast way to call an exported model: each call is one dispatch of a compiled
    function whose weights are already device arrays (compiled once per input shape).

    Args:
      model: a linen module (then ``variables`` is required: ``{'params': ..., ...}``)
        or an ``nnx.Module`` (the pruned dense model, or its sparse copy from
        :func:`pcs.sparse.nnx.sparsify`).
      variables: the linen model's variables; None for NNX.
      **call_kwargs: fixed keyword arguments of the model's call (``train=False``).

    Returns:
      ``f(*inputs)``; the model's variables are read, not updated (for inference).

    Raises:
      ValueError: if a layer exported sparse holds another kernel in ``variables`` (or in
        the NNX model) than the one exported, or another bias or batch norm folded into
        it (:func:`check_kernels`), or (NNX) if the
        call updates the model's state, as in training mode
        (:func:`pcs.sparse.nnx.bind`).
    """
    if boundary.is_nnx_module(model):
      if variables is not None:
        raise ValueError('Exported.bind: an nnx.Module holds its own variables; pass '
                         '`variables` only with a linen model.')
      from pcs.sparse import nnx as sparse_nnx  # pylint: disable=g-import-not-at-top
      if not sparse_nnx.is_sparse(model):
        model = sparse_nnx.sparsify(model, self)
      return sparse_nnx.bind(model, **call_kwargs)
    if variables is None:
      raise ValueError('Exported.bind: a linen model needs its `variables` '
                       "({'params': ..., 'batch_stats': ...}).")
    if isinstance(variables, Mapping) and 'params' in variables:  # else sparse_apply says
      params = boundary.plain(variables['params'])  # plain once: `_at` looks up many
      stats = boundary.plain(variables.get('batch_stats', {}))

      def fold_at(path, norm):
        mean, var = _at(stats, norm + ('mean',)), _at(stats, norm + ('var',))
        return None if mean is None or var is None else (
            _at(params, path + ('bias',)), mean, var, _at(params, norm + ('scale',)),
            _at(params, norm + ('bias',)))
      check_kernels(self, lambda path: _at(params, path + ('kernel',)), 'Exported.bind',
                    fold_at)
    from pcs.sparse import linen  # pylint: disable=g-import-not-at-top
    return linen.bind(model, variables, self, **call_kwargs)

  def __getitem__(self, path: Path):
    return self.weights[path]

  def __iter__(self) -> Iterator[Path]:
    return iter(self.weights)

  def __len__(self) -> int:
    return len(self.weights)

  def astype(self, dtype) -> 'Exported':
    """This export with the values of its CSR layers stored as ``dtype`` (``jnp.bfloat16``:
    2 bytes a value instead of 4, so a batch-1 product, bound by the bytes it reads, moves
    6 -> 4 bytes a nonzero with uint16 indices; the kernels widen them to float32 as they
    read them). The values round to 8 bits of mantissa (a relative error up to 2^-9);
    N:M layers keep float32. ``make bench`` times both."""
    return dataclasses.replace(
        self, weights={path: weight.with_values(dtype) for path, weight in self.weights.items()})

  def __repr__(self) -> str:
    """One line: the layers kept sparse, each with its format and sparsity (the arrays
    themselves are left out; :meth:`summary` says why each layer was kept as it is)."""
    kept = [f'{paths.layer_name(c.path)}: {c.format} {100 * c.sparsity:.1f}%'
            for c in self.choices if c.path in self.weights]
    shown = ', '.join(kept[:8]) + (f', ... ({len(kept) - 8} more)' if len(kept) > 8 else '')
    return (f'Exported({len(self.weights)} of {len(self.choices)} layers sparse'
            f'{": " + shown if kept else ""})')

  def summary(self) -> str:
    """A table: each layer, its shape and sparsity, the format kept and why."""
    rows = [(paths.layer_name(c.path), 'x'.join(map(str, c.kernel_shape)),
             f'{100 * c.sparsity:.1f}%', c.format, c.reason) for c in self.choices]
    head = ('layer', 'kernel', 'sparsity', 'kept as', 'reason')
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    lines = [f'{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  '
             f'{r[3]:<{widths[3]}}  {r[4]}' for r in [head] + rows]
    for path, e in self.epilogues.items():
      name = paths.layer_name(path)
      if e.norm is not None:
        lines.append(f'{name}: batch norm {paths.path_name(e.norm)} folded into it '
                     '(kernel and bias); that norm runs as the identity')
      if e.activation is not None:
        lines.append(f'{name}: {e.activation} fused into the product')
    if self.model is not None:
      lines.append(f'whole model, as bound: {self.model.describe()}')
    return '\n'.join(lines)


def kernel_digest(kernel: Any) -> str:
  """A digest of a kernel's shape and float32 values (BLAKE2b, 128 bits)."""
  values = np.ascontiguousarray(kernel, np.float32)
  digest = hashlib.blake2b(repr(values.shape).encode(), digest_size=16)
  digest.update(values.data)
  return digest.hexdigest()


def check_kernels(exported: 'Exported', kernel_at: Callable[[Path], Any], who: str,
                  fold_at: Optional[Callable[[Path, Path], Optional[Tuple]]] = None) -> None:
  """Checks that each layer ``exported`` runs sparse was exported from the values the
  model now holds: its kernel (``kernel_at(path)``; None where it holds none, as after
  :func:`pcs.sparse.load`) and, where a batch norm was folded into it, the layer's bias
  and that norm's statistics, scale and offset (``fold_at(layer path, norm path)``: the
  arguments of :func:`pcs.sparse._folding.fold_digest`, or None where the model holds no
  such norm). Otherwise the model would compute with the exported copies of those and the
  current values of everything else, as after recalibrating the batch norms. A kernel of
  another shape is left to the checks that the model is the exported one.

  Raises:
    ValueError: naming the layers whose kernels, or folded values, changed after the export.
  """
  changed = []
  for c in exported.choices:
    if c.path not in exported.weights:
      continue
    kernel = kernel_at(c.path) if c.kernel_digest is not None else None
    if (kernel is not None and tuple(np.shape(kernel)) == tuple(c.kernel_shape)
        and kernel_digest(kernel) != c.kernel_digest):
      changed.append(paths.layer_name(c.path))
      continue
    norm = exported.epilogue(c.path).norm
    held = (None if fold_at is None or norm is None or c.fold_digest is None
            else fold_at(c.path, norm))
    if held is not None and folding.fold_digest(*held) != c.fold_digest:
      changed.append(f'{paths.layer_name(c.path)} (the bias or batch norm '
                     f'{paths.layer_name(norm)} folded into it)')
  if changed:
    raise ValueError(f'{who}: the weights of {changed} are not the ones exported (they '
                     'changed after pcs.export, or they are another model\'s); export again '
                     'from these weights.')


def kernels_of(params: Any, where: selection.Where = None) -> Dict[Path, np.ndarray]:
  """``{module path: kernel}`` for the selected leaves named ``kernel`` with ndim >= 2."""
  params = boundary.plain(params)
  mask = selection.select(params, where)
  out = {}
  for path, leaf in selection.selected_leaves(params, mask):
    names = tuple(paths.key_name(k) for k in path)
    if names and names[-1] == 'kernel' and np.ndim(leaf) >= 2:
      out[names[:-1]] = np.asarray(leaf)
  return out


def as_matrix(kernel: np.ndarray, path: Path,
              layouts: Optional[Dict[Path, layout_lib.KernelLayout]]):
  """How ``kernel`` is exported: ``(matrix, None)`` for a kernel whose layer is one 2-D
  product, ``(kernel, None)`` for a convolution, ``(None, why)`` for one it cannot take.

  A ``LinearGeneral`` / ``DenseGeneral`` kernel (*in, *out), as the projections of
  attention are (query (in, heads, head_dim), out (heads, head_dim, out)), is the matrix
  of shape (prod(in), prod(out)) of its in axes then its out axes: its layer is that
  product on the input with its contracted axes flattened. The layout comes from
  ``layouts`` (``pcs.kernel_layouts``), else from the kernel's rank and name
  (:func:`pcs.core._layout.named_layout`); a kernel of ndim >= 3 with neither stays dense
  and says why: it could be a convolution's or a ``DenseGeneral``'s, whose products differ.
  """
  layout = (layouts or {}).get(path + ('kernel',))
  if layout is None and kernel.ndim > 2 and path and 'convtranspose' in str(path[-1]).lower():
    return None, ('a transposed convolution (named so) runs dense: pcs runs Conv, not '
                  'ConvTranspose, layers sparse')
  if layout is None:
    layout = layout_lib.named_layout(path + ('kernel',), kernel.ndim)
  if layout is None:
    return None, (f'the layout of this {kernel.ndim}-D kernel is unknown (not named as a '
                  'Conv or an attention projection): pass `model=` and `inputs=` so that '
                  'the export reads it from the model')
  if layout.window_axes or kernel.ndim == 2:
    return kernel, None
  if layout.batch_axes:
    return None, 'a kernel with batch axes (one product per index) is not exported'
  matrix = np.transpose(kernel, layout.in_axes + layout.out_axes)
  fan_in = int(np.prod([kernel.shape[a] for a in layout.in_axes]))
  return np.ascontiguousarray(matrix.reshape(fan_in, -1)), None


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


def pool_bar(one_column: bool) -> float:
  """The ratio t_caller / t_pool under which a layer runs on the calling thread alone:
  :data:`POOL_KEPT_UNTIL` for the one-column product, 1 (the faster) for any other."""
  return POOL_KEPT_UNTIL if one_column else 1.0


def timed_after_other_work(one_column: bool, alone: float) -> bool:
  """Whether a layer's threads are timed again right after other work: a one-column
  product whose t_caller / t_pool timed in a loop of its own (``alone``) is not under
  :func:`pool_bar` (the comment on :data:`POOL_KEPT_UNTIL`)."""
  return one_column and alone >= pool_bar(one_column)


def on_the_calling_thread(one_column: bool, alone: float,
                          after_other_work: Optional[float] = None) -> bool:
  """Whether a layer runs on the calling thread alone, from t_caller / t_pool timed in a
  loop of its own (``alone``) and, where :func:`timed_after_other_work`, right after
  other work (``after_other_work``): below :func:`pool_bar` alone, or faster after other
  work."""
  if alone < pool_bar(one_column):
    return True
  return (timed_after_other_work(one_column, alone) and after_other_work is not None
          and after_other_work < 1.0)


def _measure(kernel: np.ndarray, layer, layer_input: LayerInput,
             threshold: float) -> Tuple[Any, timing.Comparison]:
  """``layer`` on the faster of the thread pool and the calling thread alone (at batch 1,
  a Dense layer stays on the pool unless the calling thread is clearly faster, or faster
  after other work: :data:`POOL_KEPT_UNTIL`, :func:`on_the_calling_thread`), and that
  product timed against the dense one at ``layer_input``."""
  shape = layer_input.shape
  if kernel.ndim > 2:  # a convolution's batch axes, however many (none too), as one
    cut = len(shape) - kernel.ndim + 1
    shape = (math.prod(shape[:cut]),) + tuple(shape[cut:])
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  options = layer_input.conv_options or {}
  product = layers.dense if kernel.ndim == 2 else functools.partial(_conv, options=options)
  serial = dataclasses.replace(layer, threads=formats.THREADS_CALLER)
  pool = dataclasses.replace(layer, threads=formats.THREADS_POOL)
  one_column = kernel.ndim == 2 and math.prod(layer_input.shape[:-1]) == 1
  on_caller, on_pool = timing.compiled(product, x, serial), timing.compiled(product, x, pool)
  dense = timing.compiled(_dense_product(kernel, options), x, jnp.asarray(kernel))
  alone = timing.compare(on_caller, on_pool, threshold=pool_bar(one_column)).speedup
  after = (timing.compare(on_caller, on_pool, before=dense).speedup  # t_caller / t_pool
           if timed_after_other_work(one_column, alone) else None)
  if on_the_calling_thread(one_column, alone, after):
    layer = serial
  return layer, timing.compare(dense, timing.compiled(product, x, layer), threshold=threshold)


def _at(tree: Any, path: Path) -> Any:
  """The leaf of nested mappings ``tree`` (plain: :func:`pcs.core._boundary.plain`) at
  ``path``; None where there is none."""
  node = tree
  for key in path:
    if not isinstance(node, Mapping) or key not in node:
      return None
    node = node[key]
  return node


def _bias(params: Any, path: Path) -> Optional[np.ndarray]:
  bias = _at(params, path + ('bias',))
  return None if bias is None else np.asarray(bias)


def export_kernels(params: Any, *, format: str = 'auto',  # pylint: disable=redefined-builtin
                   n_m: Optional[Tuple[int, int]] = None, where: selection.Where = None,
                   batch_size: int = 1,
                   layer_inputs: Optional[Dict[Path, LayerInput]] = None,
                   margin: float = 0.05,
                   compare_model: Optional[Callable[['Exported'], timing.Comparison]] = None,
                   layouts: Optional[Dict[Path, layout_lib.KernelLayout]] = None,
                   unsupported: Optional[Dict[Path, str]] = None,
                   norms: Optional[Dict[Path, folding.NormFold]] = None,
                   fuse_relu: Any = (),
                   find_relus: Optional[Callable[['Exported'], Set[Path]]] = None
                   ) -> Exported:
  """The pruned kernels of ``params`` in a compressed layout, where that is faster (what
  ``pcs.export`` runs once the adapter has read the model).

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
    margin: a layer goes sparse only if its median paired speed-up over dense exceeds
      1 / (1 - margin); the whole model stays sparse only if the lower quartile of its
      paired speed-ups does.
    compare_model: ``Exported -> Comparison``, the whole model with those layers sparse
      timed against dense, called as :meth:`Exported.bind` calls it (the adapters pass
      it when they have the model). A layer faster alone can make the model slower (a
      custom call ends XLA's fusions around it), so the layers chosen are checked
      together: while the model is not faster than dense (the lower quartile of its
      paired speed-ups over dense at most 1 / (1 - margin)), the weaker half of them
      goes back to dense, down to none.
    layouts: ``{parameter path: KernelLayout}`` (``pcs.kernel_layouts(model)``; the
      adapters pass it): a kernel of a ``LinearGeneral`` layer is exported as the matrix
      of its in axes by its out axes (:func:`as_matrix`).
    unsupported: ``{module path: why}`` of layers the adapter cannot run sparse (an
      ``Einsum``, a ``LinearGeneral`` with batch axes): they stay dense, and the summary
      says why.
    norms: ``{module path: NormFold}``: the inference batch norm after that layer, folded
      into its kernel and bias where the layer is exported (``_folding.py``).
    fuse_relu: module paths (tuples, or strings joined by ``/``) of layers whose output
      always goes through a ReLU: their product applies it in its store. The model's own
      ReLU then changes nothing, and :meth:`Exported.bind` leaves it out. ``'auto'``:
      the layers ``find_relus`` finds (none without it; :func:`pcs.sparse._relu.resolve`).
    find_relus: ``Exported -> paths`` (the adapters pass it when they have the model): the
      layers whose every output goes to a ReLU, found in a trace of the model with every
      layer that can be exported sparse (the export's own compressed layers) and its
      batch norm folded (:func:`pcs.sparse._relu.relu_only`).

  Returns:
    :class:`Exported`, its arrays on the default device.

  Raises:
    ValueError: for a tree with no exportable kernel (naming the accepted kinds), an
      unknown ``format``, a kernel without the ``n_m`` pattern, or a ``fuse_relu`` that
      is neither ``'auto'`` nor a list of the layers the export takes, or that names
      layers without ``find_relus`` (no model to check them on).
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
  if not 0.0 <= margin < 1.0:
    raise ValueError(f'`margin` must lie in [0, 1); got {margin!r}.')
  params = boundary.plain(params)  # once: each layer's bias is looked up in it
  kernels = kernels_of(params, where)
  if not kernels:
    raise ValueError(f'pcs.export found no Dense/Conv kernel (a leaf named "kernel" with '
                     f'ndim >= 2) in the tree it was given; it accepts {ACCEPTED}.')
  relu = _relu_paths(fuse_relu, kernels)  # 'auto': none yet; a wrong name fails first
  if relu and find_relus is None:
    raise ValueError(f'`fuse_relu` names {sorted(paths.layer_name(p) for p in relu)}, but '
                     'without the model and an example input (`inputs=`) the export cannot '
                     'check that their outputs only go through a ReLU (a layer whose output '
                     'is read otherwise would compute wrong values). Pass them, or leave '
                     "fuse_relu='auto'.")
  threshold = 1.0 / (1.0 - margin)
  compressed: Dict[Path, _Compressed] = {}
  chosen: Dict[Path, LayerChoice] = {}
  for path, kernel in kernels.items():
    name = paths.layer_name(path)
    if kernel.dtype != np.float32:
      raise TypeError(f'pcs.export: the kernel of {name} is {kernel.dtype}; the sparse '
                      'kernels compute in float32. Export a float32 copy of the weights; '
                      '`exported.astype(jnp.bfloat16)` then stores the values in bfloat16.')
    shape, sparsity = tuple(kernel.shape), float(1.0 - np.count_nonzero(kernel) / kernel.size)
    digests: Tuple[str, ...] = (kernel_digest(kernel),)
    matrix, why = as_matrix(kernel, path, layouts)
    if unsupported and path in unsupported:
      matrix, why = None, unsupported[path]
    if matrix is None:
      chosen[path] = LayerChoice(path, shape, sparsity, 'dense', None, None, why, *digests)
      continue
    norm = (norms or {}).get(path)
    folded = Epilogue()
    if norm is not None:
      own_bias = _bias(params, path)
      matrix, bias = folding.fold(matrix, own_bias, norm)
      folded = jax.device_put(Epilogue(bias, norm.norm))
      digests += (folding.fold_digest(own_bias, *norm.source),)
    name = f'{name} (kernel {shape}' + (  # an error names the kernel the user knows
        f', as its {matrix.shape[0]} x {matrix.shape[1]} matrix)'
        if matrix.shape != kernel.shape else ')')
    compressed[path] = _Compressed(matrix, jax.device_put(formats.compress(matrix, n_m, name)),
                                   folded, shape, sparsity, digests)
  if find_relus is not None and fuse_relu == 'auto':  # traced with every layer it can
    trial = Exported(                                   # take sparse, folded
        weights={p: c.layer for p, c in compressed.items()}, choices=(),
        epilogues={p: c.folded for p, c in compressed.items() if c.folded.norm is not None})
    relu = _relu_paths(relu_lib.resolve(fuse_relu, functools.partial(find_relus, trial)),
                       kernels)
  exported, epilogues = {}, {}
  for path, (kernel, layer, folded, shape, sparsity, digests) in compressed.items():
    if folded.norm is not None or path in relu:
      epilogues[path] = dataclasses.replace(folded, activation='relu' if path in relu else None)
    kind = layer.name
    if format != 'auto':
      exported[path] = layer
      chosen[path] = LayerChoice(path, shape, sparsity, kind, None, None, f'format={format!r}',
                                 *digests)
      continue
    layer_input = (layer_inputs or {}).get(path)
    if layer_input is None:
      if kernel.ndim > 2:
        raise ValueError(f'pcs.export: measuring the Conv layer {paths.layer_name(path)} '
                         'needs its input shape; pass the model and an example input '
                         "(inputs=...), or format='csr' to export without measuring.")
      layer_input = LayerInput((batch_size, kernel.shape[0]))
    layer, measured = _measure(kernel, layer, layer_input, threshold)
    faster = measured.speedup > threshold
    if faster:
      exported[path] = layer
    chosen[path] = LayerChoice(
        path, shape, sparsity, kind if faster else 'dense', measured.dense_ms,
        measured.sparse_ms,
        f'{measured.describe()} at input {"x".join(map(str, layer_input.shape))}, on '
        f'{"the calling thread" if layer.threads == formats.THREADS_CALLER else "the pool"}',
        *digests)
  choices = [chosen[path] for path in kernels]
  if format != 'auto' or compare_model is None:
    return _exported(exported, epilogues, choices)
  return _checked_together(exported, epilogues, choices, compare_model, threshold)


class _Compressed(NamedTuple):
  """A kernel the export can run sparse: its matrix (batch norm folded in), that matrix
  compressed, the fold's :class:`Epilogue` (empty without one), the kernel's shape, its
  sparsity and its digests (:func:`kernel_digest`, and with a fold
  :func:`pcs.sparse._folding.fold_digest`)."""
  matrix: np.ndarray
  layer: Any
  folded: Epilogue
  shape: Tuple[int, ...]
  sparsity: float
  digests: Tuple[str, ...]


def _relu_paths(fuse_relu: Any, kernels: Dict[Path, np.ndarray]) -> Set[Path]:
  """The paths of the layers whose product applies a ReLU: ``fuse_relu`` (a list of
  paths, strings read as paths; as :func:`pcs.sparse._relu.resolve` takes it).

  Raises:
    ValueError: for a value that is not a list, or a name that is not a layer the export
      takes.
  """
  names = {paths.path_name(path): path for path in kernels}
  named = {paths.path_name(p) for p in relu_lib.resolve(fuse_relu, None)}
  if named - set(names):
    raise ValueError(f'`fuse_relu` names {sorted(named - set(names))}, which are not layers '
                     f'the export takes; those are {sorted(names)}.')
  return {names[p] for p in named}


def check_inputs(inputs: Any) -> None:
  """Checks that ``inputs`` is an example input: an array, or a pytree of arrays.

  Raises:
    TypeError: naming what was given instead (a shape, a ``jax.ShapeDtypeStruct``): the
      export calls the model on the example to check and time it.
  """
  for leaf in jax.tree.leaves(inputs):
    if not isinstance(leaf, (np.ndarray, jax.Array)):
      raise TypeError(f'pcs.export: `inputs` must be an example input, an array (or a pytree '
                      f'of arrays) of the batch served, e.g. jnp.zeros((1, 784)); it holds a '
                      f'{type(leaf).__name__} ({leaf!r}). The export calls the model on it '
                      'to time and check it, so a shape or a ShapeDtypeStruct will not do.')


def check_against_dense(dense: Callable, sparse: Callable, inputs: Any) -> None:
  """Checks the exported model ``sparse(inputs)`` against the model ``dense(inputs)``:
  every output within 1e-3 of the largest output's magnitude (float32 sums in another
  order differ by far less).

  Raises:
    ValueError: where they differ, as they do when a layer named in ``fuse_relu`` has an
      output that is not always passed to a ReLU, or a folded batch norm's layer output is
      also read by something other than that batch norm (a structure the export cannot
      see; export with ``fold_batch_norm=False`` then).
  """
  for want, got in zip(jax.tree.leaves(dense(inputs)), jax.tree.leaves(sparse(inputs))):
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    error = float(np.max(np.abs(got - want), initial=0.0))
    if not error <= 1e-3 * scale:
      raise ValueError(f'pcs.export: the exported model differs from the model on `inputs` '
                       f'(largest difference {error:.3g}, outputs up to {scale:.3g}). A '
                       'layer named in `fuse_relu` whose output does not always go through a '
                       'ReLU makes them differ (leave it out, or use fuse_relu=\'auto\'); so '
                       'does a folded batch norm\'s layer output read elsewhere (export with '
                       'fold_batch_norm=False).')


def _exported(layers, epilogues, choices, model=None) -> Exported:
  return Exported(layers, tuple(choices), model,
                  {p: e for p, e in epilogues.items() if p in layers})


def _checked_together(exported, epilogues, choices, compare_model, threshold) -> Exported:
  """Drops the weaker half of the sparse layers until the whole model beats dense: until
  the lower quartile of its paired speed-ups, not only their median, exceeds
  ``threshold``. A model whose gain is inside the machine's noise goes back to dense (the
  4-layer mnist1d CNN at batch 16, kept sparse by its median, then ran at 0.92x dense in
  the benchmark's own timing on the Zen 4)."""
  gain = {c.path: c.dense_ms / c.sparse_ms for c in choices if c.path in exported}
  measured = None
  while exported:
    measured = compare_model(_exported(exported, epilogues, choices))
    if measured.speedup_low > threshold:
      break
    weakest = sorted(exported, key=lambda p: gain[p])[:max(1, len(exported) // 2)]
    exported = {p: layer for p, layer in exported.items() if p not in weakest}
    choices = [c._replace(format='dense', reason=c.reason + '; but the whole model with it '
                          f'was not faster than dense by its lower quartile '
                          f'({measured.describe()})')
               if c.path in weakest else c for c in choices]
  # With every layer back to dense, no measured configuration is the one returned.
  return _exported(exported, epilogues, choices, measured if exported else None)
