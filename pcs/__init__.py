"""pcs: sparsify JAX models by controlling the implicit bias of continuous sparsification.

``tx = pcs.pilot(optax.sgd(0.1, momentum=0.9), alpha=1e-4)`` wraps any optax optimizer;
see Jacobs & Burkholz, "Mask in the Mirror: Implicit Sparsification", ICLR 2025.
"""

from pcs import theory
from pcs.alpha import AlphaController, AlphaState, alpha_controller
from pcs.continuous_sparsification import MaskLatent, continuous_sparsification
from pcs.export import NMKernel, export, sparse_apply
from pcs.gmp import PruningState, gmp, magnitude
from pcs.imp import PruningResult, iterative_pruning
from pcs.inspection import find_state, find_states, latents, stats
from pcs.l1 import L1State, l1
from pcs.masked import KeepMaskedState, keep_masked
from pcs.mirror import MirrorState, mirror
from pcs.pilot import Factors, Scale, pilot, product_init, spred
from pcs.powerprop import PowerLatent, powerprop
from pcs.pruning import SparsitySummary, apply_masks, prune, summary
from pcs.reparam import Reparameterization, ReparamState, reparameterize
from pcs.selection import select, sparsity
from pcs.soft_threshold import ThresholdLatent, soft_threshold

__version__ = '0.1.0'

__all__ = [
    'AlphaController', 'AlphaState', 'Factors', 'KeepMaskedState', 'L1State', 'MaskLatent',
    'MirrorState', 'NMKernel', 'PowerLatent', 'PruningResult', 'PruningState', 'ReparamState', 'Reparameterization', 'Scale',
    'SparsitySummary', 'ThresholdLatent', 'alpha_controller', 'apply_masks',
    'continuous_sparsification', 'export', 'find_state', 'find_states', 'gmp', 'iterative_pruning', 'keep_masked', 'l1', 'latents',
    'magnitude', 'mirror', 'pilot', 'powerprop', 'product_init', 'prune', 'reparameterize',
    'select', 'soft_threshold', 'sparse_apply', 'sparsity', 'spred', 'stats', 'summary', 'theory',
]
