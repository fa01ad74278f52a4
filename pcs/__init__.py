"""pcs: sparsify JAX models by controlling the implicit bias of continuous sparsification.

``tx = pcs.pilot(optax.sgd(0.1, momentum=0.9), alpha=1e-4)`` wraps any optax optimizer;
see Jacobs & Burkholz, "Mask in the Mirror: Implicit Sparsification", ICLR 2025.

The names below are re-exported flat from the families they belong to:
``pcs.core`` (the shared mechanism), ``pcs.implicit`` (PILoT), ``pcs.baselines``,
``pcs.pruning``, ``pcs.sparse`` (sparse inference) and ``pcs.theory`` (float64 references).
"""

from pcs import theory
from pcs.baselines import (L1State, MaskLatent, MaskState, PowerLatent, ThresholdLatent,
                           continuous_sparsification, l1, powerprop, soft_threshold)
from pcs.core import target_alpha_controller
from pcs.core import KernelLayout, kernel_layouts, kernels, kernels_and_embeddings
from pcs.core import (AlphaController, AlphaState, Reparameterization, Reparameterized,
                      ReparamState, alpha_controller, find_state, find_states, latents,
                      reparameterize, select, sparsity, stats, weight_stats)
from pcs.implicit import (Balanced, Factors, MirrorState, Scale, mirror, pilot, product_init,
                          spred)
from pcs.pruning import (IterativePruningResult, KeepMaskedState, ScheduledPruningState,
                         SparsitySummary, apply_masks, cycle_sparsity, gmp, iterative_pruning,
                         keep_masked, one_shot_pruning, prune, summary)
from pcs import sparse
from pcs.sparse import export, sparse_apply

__version__ = '0.2.0'

__all__ = [
                           'AlphaController',
                           'AlphaState',
                           'Balanced',
                           'Factors',
                           'IterativePruningResult',
                           'KeepMaskedState',
                           'KernelLayout',
                           'L1State',
                           'MaskLatent',
                           'MaskState',
                           'MirrorState',
                           'PowerLatent',
                           'ReparamState',
                           'Reparameterization',
                           'Reparameterized',
                           'Scale',
                           'ScheduledPruningState',
                           'SparsitySummary',
                           'ThresholdLatent',
                           'alpha_controller',
                           'apply_masks',
                           'continuous_sparsification',
                           'cycle_sparsity',
                           'export',
                           'find_state',
                           'find_states',
                           'gmp',
                           'iterative_pruning',
                           'keep_masked',
                           'kernel_layouts',
                           'kernels',
                           'kernels_and_embeddings',
                           'l1',
                           'latents',
                           'mirror',
                           'one_shot_pruning',
                           'pilot',
                           'powerprop',
                           'product_init',
                           'prune',
                           'reparameterize',
                           'select',
                           'soft_threshold',
                           'sparse',
                           'sparse_apply',
                           'sparsity',
                           'spred',
                           'stats',
                           'summary',
                           'target_alpha_controller',
                           'theory',
                           'weight_stats',
]
