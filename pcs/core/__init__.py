"""The mechanism every method shares: the reparameterization wrapper, alpha and its
controller, leaf selection, argument checks, optional packages, and inspection."""

from pcs.core._alpha import (Alpha, AlphaController, AlphaState, alpha_controller,
                             target_alpha_controller)
from pcs.core._inspection import find_state, find_states, latents, stats, weight_stats
from pcs.core._reparameterize import (Reparameterization, Reparameterized, ReparamState,
                                      is_hole, reparameterize)
from pcs.core._layout import KernelLayout, kernel_layouts
from pcs.core._selection import (Where, kernels, kernels_and_embeddings, l1_norm, select,
                                 sparsity)
