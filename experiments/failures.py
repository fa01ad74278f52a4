"""What a failed run is: the one definition the quality benchmark's pick, report and
recommendation use, and whose chance level the training binary's collapse check uses.

A run of a cell (the same recipe, setting and sparsity over seeds) has failed if it

- **diverged**: it stopped without an accuracy (a non-finite loss, or a collapse the
  binary stopped; recorded as None),
- is **at chance**: its accuracy is at most 1 / num_classes + CHANCE_MARGIN, what a
  model that predicts one class gets, or
- is **under the median**: more than UNDER_MEDIAN below the median of the cell's runs
  that have an accuracy.

Accuracies are fractions in [0, 1].
"""

from typing import Dict, Mapping, Optional

import numpy as np

CHANCE_MARGIN = 0.02
UNDER_MEDIAN = 0.10
DIVERGED, AT_CHANCE, UNDER = 'diverged', 'at chance', 'under the median'


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
