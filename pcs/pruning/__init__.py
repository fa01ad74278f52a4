"""Masks and pruning: exact-sparsity masks, pruning on a schedule during training,
fine-tuning with fixed masks, and iterative pruning (WR / LRR)."""

from pcs.pruning._iterative import (REWINDS, IterativePruningResult, cycle_sparsity,
                                    iterative_pruning)
from pcs.pruning._keep_masked import KeepMaskedState, keep_masked
from pcs.pruning._masks import (SCOPES, SparsitySummary, all_kept, apply_masks, prune,
                                summary)
from pcs.pruning._scheduled import ScheduledPruningState, gmp, one_shot_pruning
