"""The 'clipping' stage: each pick without and with gradient clipping, and at half its
learning rate where clipping does not remove its failures cheaply; and what the binary's
picked config for a recipe takes.

Each of DEFAULTS_RECIPES runs at its pick, unclipped and clipped at CLIP_NORM, on the
validation split and on DEFAULTS_SEEDS, which nobody tuned on (a default is chosen on
validation, never on test). A recipe's picked config (``picked.py``, and so the defaults
stage, which runs it on test) keeps its pick where the pick fails on no seed
(:func:`experiments.common.failures.failed`: diverged, at chance, or more than 10 pp under
the cell's median). Where it fails:

- it clips, if clipping removes every failure and costs at most MEDIAN_COST pp of median
  validation accuracy (clipping is not free: it lowers PILoT's medians by 1-2 pp on the
  CNN, so it goes only where it buys training on every seed);
- otherwise the pick also runs at half its learning rate (a step too large for some
  initializations is what diverges), and the config takes whichever of the two remedies
  fails on no seed with the higher median; where both fail, the pick stays and fails.
"""

from typing import Dict, Iterable, Iterator, Optional, Tuple

import numpy as np

from experiments.common import failures
from experiments.quality import picking
from experiments.quality import protocol

MEDIAN_COST = 1.0  # pp of median validation accuracy clipping may cost where it is adopted
ADOPTED = 'clipping removes the failures'
HALVED_ADOPTED = 'half the learning rate removes the failures'
UNCLIPPED, CLIPPED, HALVED = 'unclipped', 'clipped', 'halved'
ARMS = (UNCLIPPED, CLIPPED, HALVED)  # the stage's arms, in the order its tables show them

Cells = Dict[Tuple[str, str, str], Dict[int, Optional[float]]]


def name(recipe: str, arm: str) -> str:
  """The study name of a 'clipping' stage run: the recipe and its arm."""
  return {UNCLIPPED: f'{recipe} unclipped',
          CLIPPED: f'{recipe} clipped at {protocol.CLIP_NORM:g}',
          HALVED: f'{recipe} at half the learning rate'}[arm]


def rows(recorded: Dict[str, dict], models) -> Iterator[dict]:
  """Each of DEFAULTS_RECIPES at its pick (once tuned), without and with gradient
  clipping at CLIP_NORM, on the validation split and DEFAULTS_SEEDS, at CLIPPING_SPARSITY,
  without fine-tuning, seed by seed so that a partial stage compares both arms; then at
  half its learning rate where the pick fails and clipping does not remove its failures
  within MEDIAN_COST (:func:`_needs_halved`)."""
  for model in models:
    for recipe in protocol.DEFAULTS_RECIPES:
      pick = picking.recipe_pick(recorded, model, recipe)
      if pick is None:
        continue
      yield from _rows_at(model, recipe, pick, (UNCLIPPED, CLIPPED))
      if _needs_halved(_found_at(recorded, model, recipe, pick), model, recipe):
        yield from _rows_at(model, recipe, pick, (HALVED,))


def _rows_at(model: str, recipe: str, pick: dict, arms) -> Iterator[dict]:
  """The stage's runs of ``recipe`` at ``pick`` in ``arms``, seed by seed."""
  for seed in protocol.DEFAULTS_SEEDS:
    for arm in arms:
      setting = {**pick, 'clip_grad_norm': protocol.CLIP_NORM if arm == CLIPPED else 0.0}
      if arm == HALVED:
        setting['learning_rate'] = pick['learning_rate'] / 2
      yield protocol.row('clipping', model, recipe, {
          **setting, 'sparsity': protocol.CLIPPING_SPARSITY, 'seed': seed,
          'validation_fraction': protocol.VALIDATION_FRACTION, 'finetune_epochs': 0},
          name(recipe, arm))


def _found_at(recorded: Dict[str, dict], model: str, recipe: str, pick: dict) -> Cells:
  """The cells of the stage's recorded runs of ``recipe`` at ``pick`` (every arm)."""
  planned = _rows_at(model, recipe, pick, ARMS)
  return cells(run for run in (recorded.get(row['id']) for row in planned) if run)


def cells(runs: Iterable[dict]) -> Cells:
  """``{(model, recipe, arm): {seed: validation accuracy, None if it diverged}}`` of the
  'clipping' runs among ``runs``."""
  out: Cells = {}
  for run in runs:
    if run['stage'] == 'clipping':
      arm = {name(run['recipe'], a): a for a in ARMS}[run['study']]
      out.setdefault((run['model'], run['recipe'], arm), {})[run['overrides']['seed']] = (
          run['results'].get('validation_accuracy'))
  return out


def _median(values: Dict[int, Optional[float]]) -> float:
  return float(np.median([v for v in values.values() if v is not None]))


def _complete(values: Dict[int, Optional[float]]) -> bool:
  return len(values) == len(protocol.DEFAULTS_SEEDS)


def _failed(values: Dict[int, Optional[float]]) -> bool:
  return bool(failures.failed(values, protocol.NUM_CLASSES))


def _needs_halved(found: Cells, model: str, recipe: str) -> bool:
  """Whether the pick fails and clipping does not remove its failures within MEDIAN_COST."""
  plain, clipped = (found.get((model, recipe, arm), {}) for arm in (UNCLIPPED, CLIPPED))
  if not (_complete(plain) and _complete(clipped)) or not _failed(plain):
    return False
  return _failed(clipped) or 100 * (_median(plain) - _median(clipped)) > MEDIAN_COST


def remedy(found: Cells, model: str, recipe: str) -> Optional[str]:
  """The arm the picked config of ``recipe`` takes: CLIPPED or HALVED where the pick fails
  and that remedy is adopted (module docstring), None where the pick stays as tuned (it
  fails on no seed, every remedy fails, or the runs that decide are not all in)."""
  plain, clipped, halved = (found.get((model, recipe, arm), {})
                            for arm in ARMS)
  if not (_complete(plain) and _complete(clipped)) or not _failed(plain):
    return None
  if not _needs_halved(found, model, recipe):
    return CLIPPED
  if not _complete(halved):
    return None
  if not _failed(halved) and (_failed(clipped) or _median(halved) >= _median(clipped)):
    return HALVED
  return None if _failed(clipped) else CLIPPED


def verdict(found: Cells, model: str, recipe: str) -> str:
  """What the stage says of ``recipe`` on ``model``: 'pending', 'no failure either way',
  'clipped fails too' (the pick itself fails on no seed), ADOPTED, or, where clipping
  costs more than MEDIAN_COST or fails, what half the learning rate did and which remedy
  :func:`remedy` adopts."""
  plain, clipped, halved = (found.get((model, recipe, arm), {})
                            for arm in ARMS)
  if not (_complete(plain) and _complete(clipped)):
    return 'clipped fails too' if _failed(clipped) and not _failed(plain) else 'pending'
  if not _failed(plain):
    return 'clipped fails too' if _failed(clipped) else 'no failure either way'
  if not _needs_halved(found, model, recipe):
    return ADOPTED
  cost = (f'clipping costs {100 * (_median(plain) - _median(clipped)):.1f} pp of median'
          if not _failed(clipped) else 'clipped fails too')
  if not _complete(halved):
    return f'{cost}; half the learning rate pending'
  taken = remedy(found, model, recipe)
  if taken == HALVED:
    return f'{cost}: {HALVED_ADOPTED}'
  if taken == CLIPPED:
    return (f'{cost}; half the learning rate {"fails" if _failed(halved) else "does worse"}: '
            'clipping adopted')
  return f'{cost}; half the learning rate fails too: the pick stays'


def default_setting(recorded: Dict[str, dict], model: str, recipe: str) -> Optional[dict]:
  """The binary's picked config for ``recipe``: its pick (:func:`picking.recipe_pick`),
  clipped at CLIP_NORM or at half its learning rate where the stage's runs at that pick
  adopt it (:func:`remedy`)."""
  pick = picking.recipe_pick(recorded, model, recipe)
  if pick is None or recipe not in protocol.DEFAULTS_RECIPES:
    return pick
  taken = remedy(_found_at(recorded, model, recipe, pick), model, recipe)
  if taken == CLIPPED:
    return {**pick, 'clip_grad_norm': protocol.CLIP_NORM}
  if taken == HALVED:
    return {**pick, 'learning_rate': pick['learning_rate'] / 2}
  return pick
