"""What a failed run is: the one definition the quality benchmark's pick, report and
recommendation use, and whose chance level the training binary's collapse check uses.

A run of a cell (the same recipe, setting and sparsity over seeds) has failed if it

- **diverged**: it stopped without an accuracy (a non-finite loss, or a collapse the
  binary stopped; recorded as None),
- is **at chance**: its accuracy is at most 1 / num_classes + CHANCE_MARGIN, what a
  model that predicts one class gets, or
- is **under the median**: more than UNDER_MEDIAN below the median of the cell's runs
  that have an accuracy.

Accuracies are fractions in [0, 1]. A run scored by a loss (the character LM's bits per
byte, lower is better) has failed if it diverged, or is **over the median**: more than
LOSS_OVER_MEDIAN, relative, above the median of the cell's finished runs
(:func:`failed_by_loss`).

Apart from failing, a run can miss its **target sparsity**: it ends more than
SPARSITY_TOLERANCE away from it (STR's learned thresholds can prune past a target, and
one-shot pruning at the end cannot undo that). Its accuracy is then not the target's;
the binary says so and the report marks the cell (:func:`off_target`).
"""

from typing import Dict, Mapping, Optional

import numpy as np

CHANCE_MARGIN = 0.02
UNDER_MEDIAN = 0.10
LOSS_OVER_MEDIAN = 0.10
SPARSITY_TOLERANCE = 0.005
DIVERGED, AT_CHANCE, UNDER, OVER = ('diverged', 'at chance', 'under the median',
                                   'over the median')


def at_chance(accuracy: float, num_classes: int) -> bool:
  """Whether ``accuracy`` is within CHANCE_MARGIN of guessing among ``num_classes``."""
  return accuracy <= 1 / num_classes + CHANCE_MARGIN


def failed(values: Mapping[int, Optional[float]], num_classes: int) -> Dict[int, str]:
  """``{seed: why}`` for the failed runs of one cell ``{seed: accuracy, or None if it
  diverged}``, why being DIVERGED, AT_CHANCE or UNDER (the first that applies)."""
  finished = [v for v in values.values() if v is not None]
  median = float(np.median(finished)) if finished else 0.0
  out = {}
  for seed, value in values.items():
    if value is None:
      out[seed] = DIVERGED
    elif at_chance(value, num_classes):
      out[seed] = AT_CHANCE
    elif value < median - UNDER_MEDIAN:
      out[seed] = UNDER
  return out


def failed_by_loss(values: Mapping[int, Optional[float]]) -> Dict[int, str]:
  """``{seed: why}`` for the failed runs of one cell scored by a loss ``{seed: loss, or
  None if it diverged}``: DIVERGED, or OVER when loss > (1 + LOSS_OVER_MEDIAN) * median."""
  finished = [v for v in values.values() if v is not None]
  median = float(np.median(finished)) if finished else 0.0
  return {seed: DIVERGED if value is None else OVER for seed, value in values.items()
          if value is None or value > (1 + LOSS_OVER_MEDIAN) * median}


def off_target(target: float, achieved: float) -> Optional[str]:
  """What to say when a run's ``achieved`` sparsity is more than SPARSITY_TOLERANCE from
  its ``target``, else None."""
  if abs(achieved - target) <= SPARSITY_TOLERANCE:
    return None
  return (f'achieved sparsity {achieved:.4f} for a target of {target:.4f} (more than '
          f'{100 * SPARSITY_TOLERANCE:.1f}% off): its accuracy is not the target\'s')
