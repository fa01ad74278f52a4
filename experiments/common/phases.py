"""The phases of a training run: training with the method, the IMP cycles, fine-tuning.

Both binaries (:mod:`experiments.vision.train`, :mod:`experiments.charlm.train`) run
these phases in order; IMP's cycles prune on ``pcs.cycle_sparsity``'s schedule, the one
``pcs.iterative_pruning`` uses (Frankle & Carbin, 2019; Renda et al., 2020).
"""

import dataclasses
from typing import List

import ml_collections

import pcs


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stretch of training: ``num_epochs`` epochs with the ``'method'`` optimizer or
  ``'finetune'`` SGD, the masks of ``sparsity`` fixed (0: none), data order seeded
  from ``seed_offset + epoch``."""
  name: str
  num_epochs: int
  sparsity: float
  optimizer: str
  seed_offset: int


def plan(config: ml_collections.ConfigDict) -> List[Phase]:
  """The phases of a run. IMP cycle c of K prunes to ``pcs.cycle_sparsity(c, K,
  sparsity)`` = 1 - (1 - sparsity)^(c/K), as ``pcs.iterative_pruning`` does; the last
  reaches ``sparsity``."""
  phases = [Phase('train', config.num_epochs, 0.0, 'method', 0)]
  if config.schedule == 'imp':
    cycles = config.imp.cycles
    phases += [Phase(f'cycle{c}', config.num_epochs,
                     pcs.cycle_sparsity(c, cycles, config.sparsity), 'method', 1000 * c)
               for c in range(1, cycles + 1)]
  if config.finetune_epochs:
    phases.append(Phase('finetune', config.finetune_epochs, config.sparsity, 'finetune',
                        10_000))
  return phases
