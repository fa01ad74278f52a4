"""pcs: sparsify JAX models by controlling the implicit bias of continuous sparsification.

``tx = pcs.pilot(optax.sgd(0.1, momentum=0.9), alpha=1e-4)`` wraps any optax optimizer;
see Jacobs & Burkholz, "Mask in the Mirror: Implicit Sparsification", ICLR 2025.
"""

from pcs import theory
from pcs.alpha import AlphaController, AlphaState, alpha_controller
from pcs.inspection import find_state, latents, stats
from pcs.mirror import MirrorState, mirror
from pcs.pilot import Factors, Scale, pilot, product_init, spred
from pcs.reparam import Reparameterization, ReparamState, reparameterize
from pcs.selection import select, sparsity

__version__ = '0.1.0'

__all__ = [
    'AlphaController', 'AlphaState', 'Factors', 'MirrorState', 'ReparamState', 'Reparameterization', 'Scale',
    'alpha_controller', 'find_state', 'latents', 'mirror', 'pilot', 'product_init',
    'reparameterize', 'select', 'sparsity', 'spred', 'stats', 'theory',
]
