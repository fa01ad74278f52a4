"""Sparse inference: pruned Dense/Conv layers stored compressed and run by compiled products.

Words: a *kernel* is the Flax weight; its compressed copy is a *compressed weight* (a
:class:`Format`); the code that multiplies by it is *compiled* (C++ through XLA's FFI).

* formats: :class:`Format`, with :class:`CSR` (uint16 column indices where fan-in
  allows) and :class:`NM` (N:M, uint8 positions), compressed weights built from a pruned
  kernel (``pcs/sparse/_formats.py``);
* compiled: C++ XLA FFI handlers for CPU (``csrc/sparse_kernels.cc``), registered when pcs
  is imported, chosen per platform when a call is lowered, with pure-JAX stand-ins and
  the reference's gradient on every path (``_compiled.py``);
* layers: :func:`dense` and :func:`conv` (direct on the stride phases, or im2col);
* export: :func:`export` (``pcs.export``) takes a linen model's variables or an NNX
  module, keeps each layer sparse only where measured faster (timed against dense in
  pairs, ``_timing.py``) and folds inference batch norms into the layers before
  them (``_folding.py``); :meth:`Exported.bind` gives the compiled call with the arrays
  bound on device;
* adapters: :mod:`pcs.sparse.linen` (``pcs.sparse_apply``) and :mod:`pcs.sparse.nnx`
  (``sparsify``; import it explicitly, it needs flax);
* artifacts: :func:`save` / :func:`load`, a plain ``.npz`` that never unpickles.
"""

from pcs.sparse._api import export, load
from pcs.sparse._artifact import save
from pcs.sparse._export import Epilogue, Exported, LayerChoice, LayerInput
from pcs.sparse._formats import CSR, FORMATS, NM, Format, csr, nm
from pcs.sparse._compiled import compiled_available, matmul_t, reference_matmul_t
from pcs.sparse._layers import conv, dense
from pcs.sparse._timing import Comparison
from pcs.sparse.linen import sparse_apply
