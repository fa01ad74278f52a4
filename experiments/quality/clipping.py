"""The 'clipping' stage: each pick without and with gradient clipping, and whether the
binary's picked config for a recipe clips.

Each of DEFAULTS_RECIPES runs at its pick, unclipped and clipped at CLIP_NORM, on the
validation split and on DEFAULTS_SEEDS, which nobody tuned on (a default is chosen on
validation, never on test). A recipe's picked config (``picked.py``, and so the defaults
stage, which runs it on test) clips where clipping removes every failed run
(:func:`experiments.common.failures.failed`: diverged, at chance, or more than 10 pp under
the cell's median) and costs at most MEDIAN_COST pp of median validation accuracy:
clipping is not free (it lowers PILoT's medians by 1-2 pp on the CNN), so it goes only
where it buys training on every seed.
"""

from typing import Dict, Iterable, Iterator, Optional, Tuple

import numpy as np

from experiments.common import failures
from experiments.quality import picking
from experiments.quality import protocol

MEDIAN_COST = 1.0  # pp of median validation accuracy clipping may cost where it is adopted
ADOPTED = 'clipping removes the failures'

Cells = Dict[Tuple[str, str, float], Dict[int, Optional[float]]]


def name(recipe: str, clip: float) -> str:
  """The study name of a 'clipping' stage run: the recipe, and its clipping or none."""
  return f'{recipe} clipped at {clip:g}' if clip else f'{recipe} unclipped'


def rows(recorded: Dict[str, dict], models) -> Iterator[dict]:
  """Each of DEFAULTS_RECIPES at its pick (once tuned), without and with gradient
  clipping at CLIP_NORM, on the validation split and DEFAULTS_SEEDS, at CLIPPING_SPARSITY,
  without fine-tuning, seed by seed so that a partial stage compares both arms."""
  for model in models:
    for recipe in protocol.DEFAULTS_RECIPES:
      pick = picking.recipe_pick(recorded, model, recipe)
      if pick is not None:
        yield from _rows_at(model, recipe, pick)


def _rows_at(model: str, recipe: str, pick: dict) -> Iterator[dict]:
  """The stage's runs of ``recipe`` at ``pick``: each seed unclipped, then clipped."""
  for seed in protocol.DEFAULTS_SEEDS:
    for clip in (0.0, protocol.CLIP_NORM):
      yield protocol.row('clipping', model, recipe, {
          **pick, 'clip_grad_norm': clip, 'sparsity': protocol.CLIPPING_SPARSITY,
          'seed': seed, 'validation_fraction': protocol.VALIDATION_FRACTION,
          'finetune_epochs': 0}, name(recipe, clip))


def cells(runs: Iterable[dict]) -> Cells:
  """``{(model, recipe, clip): {seed: validation accuracy, None if it diverged}}`` of the
  'clipping' runs among ``runs``."""
  out: Cells = {}
  for run in runs:
    if run['stage'] == 'clipping':
      key = (run['model'], run['recipe'], run['overrides']['clip_grad_norm'])
      out.setdefault(key, {})[run['overrides']['seed']] = run['results'].get(
          'validation_accuracy')
  return out


def _median(values: Dict[int, Optional[float]]) -> float:
  return float(np.median([v for v in values.values() if v is not None]))


def verdict(found: Cells, model: str, recipe: str) -> str:
  """What the stage says of ``recipe`` on ``model``: 'clipped fails too', 'pending', 'no
  failure either way', ADOPTED, or that clipping removes the failures at a larger cost
  than MEDIAN_COST."""
  plain = found.get((model, recipe, 0.0), {})
  clipped = found.get((model, recipe, protocol.CLIP_NORM), {})
  if failures.failed(clipped, protocol.NUM_CLASSES):
    return 'clipped fails too'
  if not all(len(c) == len(protocol.DEFAULTS_SEEDS) for c in (plain, clipped)):
    return 'pending'
  if not failures.failed(plain, protocol.NUM_CLASSES):
    return 'no failure either way'
  cost = 100 * (_median(plain) - _median(clipped))
  if cost > MEDIAN_COST:
    return f'clipping removes the failures but costs {cost:.1f} pp of median: not adopted'
  return ADOPTED


def default_setting(recorded: Dict[str, dict], model: str, recipe: str) -> Optional[dict]:
  """The binary's picked config for ``recipe``: its pick (:func:`picking.recipe_pick`),
  clipped at CLIP_NORM where the stage's runs at that pick adopt clipping."""
  pick = picking.recipe_pick(recorded, model, recipe)
  if pick is None or recipe not in protocol.DEFAULTS_RECIPES:
    return pick
  planned = (recorded.get(row['id']) for row in _rows_at(model, recipe, pick))
  if verdict(cells(run for run in planned if run), model, recipe) == ADOPTED:
    return {**pick, 'clip_grad_norm': protocol.CLIP_NORM}
  return pick
