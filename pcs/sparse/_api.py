"""One ``export`` and one ``load`` for linen and NNX models: each reads what it is given and
hands it to the adapter (:mod:`pcs.sparse.linen`, :mod:`pcs.sparse.nnx`)."""

from typing import Any, Dict, Optional, Tuple

from pcs.core import _boundary as boundary
from pcs.core import _selection as selection
from pcs.sparse import _artifact
from pcs.sparse import _export
from pcs.sparse import linen


def export(target: Any, *, model: Any = None, inputs: Any = None,
           call_kwargs: Optional[Dict[str, Any]] = None,
           format: str = 'auto',  # pylint: disable=redefined-builtin
           n_m: Optional[Tuple[int, int]] = None, where: selection.Where = None,
           batch_size: int = 1, margin: float = 0.05, fold_batch_norm: bool = True,
           fuse_relu: Any = 'auto') -> _export.Exported:
  """The pruned Dense/Conv kernels of a model in their fastest layout.

  Every leaf named ``kernel`` (Dense/Conv, and the 2-D product of a ``DenseGeneral`` /
  ``LinearGeneral``) is stored in CSR (or N:M with ``n_m``). With ``format='auto'``,
  given the model and ``inputs``, each layer's sparse product is timed against the dense
  one at the input the model gives it, in pairs, and kept only where faster
  (by more than ``margin``); then the whole model, called as :meth:`Exported.bind` calls
  it, is timed against dense and layers go back to dense until it is faster.

  Given the model and ``inputs``, an inference batch norm whose input is a Dense or Conv
  layer's output is folded into that layer (with s = gamma / sqrt(var + eps), W' = W s
  and b' = (b - mean) s + beta per output feature; ``fold_batch_norm=False`` keeps it),
  and the batch norm then runs as the identity. A residual add is not fused.

  Args:
    target: an ``nnx.Module`` (the pruned model itself); or a linen model's variables
      (``{'params': ..., 'batch_stats': ...}``: batch norms fold only when their
      statistics are given) or params; or a params tree / ``nnx.State`` alone (without
      ``model``, a dict whose ``'params'`` entry is a dict is read as variables: the
      layers are named by their paths in it).
    model: the linen module of ``target`` (None for NNX: the module is the target).
    inputs: an example of the model's first argument, at the batch size served (an array
      or a pytree of arrays): the model is called on it, so each layer is measured at its
      real input (required for Conv layers under ``format='auto'``), batch norms are
      found, and the export is checked against the dense model.
    call_kwargs: the model call's other arguments, by name (e.g. ``{'train': False}``,
      or ``{'positions': p}`` for a second input).
    format: ``'auto'`` (measured, as above), or ``'csr'`` / ``'n_m'``: every selected
      layer in that layout, without measuring.
    n_m: ``(N, M)``, the pattern the kernels were pruned to
      (``pcs.prune(params, n_m=(N, M))``); required with ``format='n_m'``.
    where: which leaves to export (default: every leaf named ``kernel`` with ndim >= 2).
    batch_size: the batch to measure Dense layers at without ``inputs``.
    margin: a layer goes sparse only if its median paired speed-up over dense exceeds
      1 / (1 - margin); the whole model stays sparse only if the lower quartile of its
      paired speed-ups does.
    fold_batch_norm: fold inference batch norms into the layers before them.
    fuse_relu: the layers whose ReLU the product applies in its store. ``'auto'``
      (given the model and ``inputs``): every exported layer whose output (after a folded
      batch norm) the model passes to a ReLU, ``max(y, 0)``, and to nothing else, found
      in a trace of the model (``pcs/sparse/_relu.py``; Flax applies activations outside
      its layers). Or a list of module paths (``[('block', 'Conv_0')]`` or
      ``['block/Conv_0']``) whose output always goes through a ReLU, checked against
      the dense model on ``inputs`` (so it needs the model and ``inputs``); ``[]`` for
      none.
      The model's own ReLU is then a no-op on a non-negative array.

  Returns:
    :class:`pcs.sparse.Exported`, its arrays on the default device;
    ``print(exported.summary())`` shows the choices, what was measured and what was
    folded.

  Raises:
    ValueError: for a tree with no exportable kernel, an unknown ``format``, a kernel
      without the ``n_m`` pattern, ``model`` without ``inputs`` (or the reverse), a
      ``model`` given with an ``nnx.Module``, ``inputs`` with an ``nnx.State`` (the
      module goes there), a ``fuse_relu`` path that is no layer, a
      ``fuse_relu`` list without the model and ``inputs``, a ``fuse_relu`` string
      other than ``'auto'``, or an NNX model whose call on ``inputs`` updates its state
      (training mode, a decoding cache: the message says how to export it).
    TypeError: for ``inputs`` that are not arrays (a shape, a ``jax.ShapeDtypeStruct``),
      or a linen module or NNX ``GraphDef`` given as ``target``.

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> exported = pcs.export({'Dense_0': {'kernel': jnp.array([[0.0, 1.0], [2.0, 0.0]])}},
    ...                       format='csr')
    >>> exported[('Dense_0',)].nnz
    2
  """
  options: Dict[str, Any] = dict(call_kwargs=call_kwargs, format=format, n_m=n_m, where=where,
                 batch_size=batch_size, margin=margin, fold_batch_norm=fold_batch_norm,
                 fuse_relu=fuse_relu)
  if boundary.is_linen_module(target) or boundary.is_nnx_graphdef(target):
    raise TypeError(f'pcs.export: the first argument is a {type(target).__name__}; it must be '
                    f'the pruned weights or the model holding them ({_export.ACCEPTED}). A '
                    'linen module goes in `model=`, with its variables first.')
  if inputs is not None:
    _export.check_inputs(inputs)
  if boundary.is_nnx_state(target) and model is None and inputs is not None:
    raise ValueError('pcs.export: an nnx.State holds no model to run on `inputs`; pass the '
                     'nnx.Module itself, pcs.export(model, inputs=x).')
  if boundary.is_nnx_module(target):
    if model is not None:
      raise ValueError('pcs.export: an nnx.Module is its own model; pass `model` only with '
                       'linen variables or params.')
    from pcs.sparse import nnx as sparse_nnx  # pylint: disable=g-import-not-at-top
    return sparse_nnx.export_module(target, inputs=inputs, **options)
  return linen.export_model(target, model=model, inputs=inputs, **options)


def load(file, model: Any = None):
  """Reads a file written by :func:`pcs.sparse.save`.

  Args:
    file: the ``.npz`` (a path or a binary file object); the path given to ``save``
      finds the file without its ``.npz``, which ``save`` appends.
    model: None or a linen module: the result is ``(variables, exported)``, both placed
      on the default device (``exported.bind(model, variables)`` runs it). An
      ``nnx.Module`` (a newly built instance of the saved architecture, e.g.
      ``Model(rngs=nnx.Rngs(0))``): the result is the sparse model, its variables
      overwritten with the saved ones (as :func:`pcs.sparse.nnx.sparsify` makes it).

  Raises:
    TypeError: for a class given as ``model`` (an instance is needed).
    ValueError: if the file is truncated, not a pcs export, of another version, or
      altered (an array whose SHA-256 differs from the manifest's, or an invalid layout);
      for an ``nnx.Module``, if a saved variable has no counterpart of its shape.
  """
  if isinstance(model, type):
    raise TypeError(f'pcs.sparse.load: `model` is the class {model.__name__}; pass an instance '
                    '(for NNX a newly built one, e.g. Model(rngs=nnx.Rngs(0))).')
  variables, exported = _artifact.load(file)
  if boundary.is_nnx_module(model):
    from pcs.sparse import nnx as sparse_nnx  # pylint: disable=g-import-not-at-top
    return sparse_nnx.restore(model, variables, exported)
  return variables, exported
