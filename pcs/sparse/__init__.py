"""Sparse inference: pruned Dense/Conv layers stored compressed and run by compiled kernels.

* formats: :class:`CSR` (uint16 column indices where fan-in allows) and :class:`NM`
  (N:M, uint8 positions), built from a pruned kernel (``pcs/sparse/_formats.py``);
* kernels: C++ XLA FFI handlers for CPU (``csrc/sparse_kernels.cc``), registered when pcs
  is imported, with a pure-JAX reference where they are absent (``_kernels.py``);
* layers: :func:`dense` and :func:`conv` (direct on the stride phases, or im2col);
* export: :func:`export_layers`, each layer kept sparse only where measured faster
  (timed against dense in alternation, ``_timing.py``); :meth:`Exported.bind` gives
  the compiled call with the arrays bound on device;
* adapters: :mod:`pcs.sparse.linen` (``pcs.export``, ``pcs.sparse_apply``) and
  :mod:`pcs.sparse.nnx` (``sparsify``; import it explicitly, it needs flax);
* artifacts: :func:`save` / :func:`load`, a plain ``.npz`` that never unpickles.
"""

from pcs.sparse._artifact import load, save
from pcs.sparse._export import Exported, LayerChoice, LayerInput
from pcs.sparse._export import export as export_layers
from pcs.sparse._formats import CSR, NM, csr, nm
from pcs.sparse._kernels import kernels_available, matmul_t, reference_matmul_t
from pcs.sparse._layers import conv, dense
from pcs.sparse._timing import Comparison
from pcs.sparse.linen import export, sparse_apply
