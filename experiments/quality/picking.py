"""The pick rule of the quality benchmark, and the tuning runs it needs.

Each recipe is tuned on the validation split: the shared grid times its own values on
seed 0 (:func:`experiments.quality.protocol.tuning_rows`), then the leading settings on
more validation seeds, and a rule over all of them picks (CONFIRM_ROUNDS:
:func:`choose`). IMP recipes then tune their cycle warmup at that pick, and the long
stage tunes its own values at LONG_EPOCHS. :func:`recipe_pick` is the setting every
final, study and defaults run takes.
"""

from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from experiments.common import failures
from experiments.quality import protocol


def validation_accuracy(row: dict) -> float:
  """A tuning run's validation accuracy; -1 for a diverged run."""
  return row['results'].get('validation_accuracy', -1.0)


def _setting(row: dict) -> dict:
  """A tuning run's overrides less the keys of the tuning itself."""
  drop = ('seed', 'sparsity', 'validation_fraction', 'finetune_epochs')
  return {k: v for k, v in row['overrides'].items() if k not in drop}


def _best_setting(recorded: Dict[str, dict], planned: List[dict]) -> Optional[dict]:
  """The overrides of the best of the ``planned`` tuning runs by validation accuracy
  (ties go to the first), less the keys of the tuning itself; None until all finished."""
  rows = [recorded.get(r['id']) for r in planned]
  if not rows or any(r is None for r in rows):
    return None
  return _setting(max(rows, key=validation_accuracy))


def tuning_round(recorded: Dict[str, dict], model: str, recipe: str) -> Optional[tuple]:
  """The learning rates of the latest of LEARNING_RATE_ROUNDS whose tuning runs of
  ``recipe`` on ``model`` are all ``recorded``; None if none is."""
  for learning_rates in reversed(protocol.LEARNING_RATE_ROUNDS):
    if all(r['id'] in recorded for r in protocol.tuning_rows(model, recipe, learning_rates)):
      return learning_rates
  return None


def _leaders(recorded: Dict[str, dict], model: str, recipe: str) -> List[dict]:
  """The CONFIRM_TOP best seed-0 tuning runs of the recipe's :func:`tuning_round`, best
  first (ties in grid order); empty before a round has finished."""
  learning_rates = tuning_round(recorded, model, recipe)
  if learning_rates is None:
    return []
  planned = protocol.tuning_rows(model, recipe, learning_rates)
  return sorted(planned, key=lambda r: -validation_accuracy(recorded[r['id']]))[
    : protocol.CONFIRM_TOP
  ]


def _confirming(model: str, recipe: str, leader: dict, seeds=protocol.CONFIRM_SEEDS) -> List[dict]:
  """The validation runs of the seed-0 tuning run ``leader``'s setting on ``seeds``."""
  return [
    protocol.row(
      'tune', model, recipe, {**leader['overrides'], 'seed': seed}, f'{recipe} confirmation'
    )
    for seed in seeds
  ]


def confirmation_rows(recorded: Dict[str, dict], model: str, recipe: str) -> List[dict]:
  """The leading settings of the seed-0 tuning (:func:`_leaders`), each on
  CONFIRM_SEEDS (the latest round's), in order of the leaders and then the seeds."""
  return [
    r for leader in _leaders(recorded, model, recipe) for r in _confirming(model, recipe, leader)
  ]


def confirmed(
  recorded: Dict[str, dict], model: str, recipe: str, seeds=protocol.CONFIRM_SEEDS
) -> Optional[List[Tuple[dict, List[dict]]]]:
  """``[(leader, its runs on seed 0 and seeds)]`` once every one of those runs of the
  recipe is recorded; None before."""
  groups = [
    (leader, [recorded.get(r['id']) for r in [leader, *_confirming(model, recipe, leader, seeds)]])
    for leader in _leaders(recorded, model, recipe)
  ]
  if not groups or any(run is None for _, runs in groups for run in runs):
    return None
  return groups


def mean_validation_accuracy(runs: List[dict]) -> float:
  """The mean of :func:`validation_accuracy` over ``runs`` (a diverged run counts -1)."""
  return sum(validation_accuracy(r) for r in runs) / len(runs)


def seed_accuracies(runs: List[dict]) -> Dict[int, Optional[float]]:
  """``{seed: validation accuracy}`` of ``runs``, None for a run that diverged or
  collapsed (it has no accuracy)."""
  return {r['overrides']['seed']: r['results'].get('validation_accuracy') for r in runs}


class Confirmation(NamedTuple):
  """How a confirmed setting did on its validation seeds (accuracies as fractions)."""

  rule: str  # 'mean' or 'median': the round's rule, and what ``value`` is
  seeds: tuple  # seed 0 and the round's
  value: float
  worst: float  # the worst seed; -1 for a run with no accuracy
  failed: int  # runs failed by experiments.common.failures


def confirmation(runs: List[dict], rule: str) -> Confirmation:
  """The :class:`Confirmation` of one setting's ``runs`` under ``rule``."""
  values = seed_accuracies(runs)
  finished = [v for v in values.values() if v is not None]
  value = (
    mean_validation_accuracy(runs)
    if rule == 'mean'
    else float(np.median(finished))
    if finished
    else -1.0
  )
  return Confirmation(
    rule,
    tuple(sorted(values)),
    value,
    min(-1.0 if v is None else v for v in values.values()),
    len(failures.failed(values, protocol.NUM_CLASSES)),
  )


def choose(groups: List[Tuple[dict, List[dict]]], rule: str) -> Tuple[dict, Confirmation]:
  """The leader ``rule`` picks among ``groups`` (``[(leader, runs)]``, best seed 0 first;
  ties go to the earlier): 'mean', the best mean; 'median', the best median of the
  leaders with no failed run, or the best worst seed if each failed somewhere."""
  scored = [(leader, confirmation(runs, rule)) for leader, runs in groups]
  if rule == 'median':
    clean = [group for group in scored if not group[1].failed]
    if not clean:
      return max(scored, key=lambda group: group[1].worst)
    scored = clean
  return max(scored, key=lambda group: group[1].value)


def picked_run(
  recorded: Dict[str, dict], model: str, recipe: str
) -> Optional[Tuple[dict, Optional[Confirmation]]]:
  """The recorded seed-0 tuning run of ``recipe``'s pick on ``model``, and how it did on
  its confirmation (None before the first round of CONFIRM_ROUNDS has finished). Of the
  leading settings of its :func:`tuning_round`, the latest finished round's rule picks
  (:func:`choose`); before any, the best on seed 0 (ties go to the first in grid order).
  None until a tuning round has finished."""
  for seeds, rule in reversed(protocol.CONFIRM_ROUNDS):
    groups = confirmed(recorded, model, recipe, seeds)
    if groups is not None:
      leader, result = choose(groups, rule)
      return recorded[leader['id']], result
  leaders = _leaders(recorded, model, recipe)
  return (recorded[leaders[0]['id']], None) if leaders else None


def picked(recorded: Dict[str, dict], model: str, recipe: str) -> Optional[dict]:
  """The tuned overrides of ``recipe`` on ``model`` from the ``recorded`` runs by id: the
  setting of :func:`picked_run`; None until a tuning round has finished."""
  found = picked_run(recorded, model, recipe)
  return None if found is None else _setting(found[0])


def _aim_rows(model: str, recipe: str, setting: dict, sparsity: float,
              long: bool) -> List[dict]:
  """The validation runs of ``recipe`` at ``setting`` and ``sparsity`` on
  AIM_TUNING_SEEDS."""
  return [protocol.row('tune', model, recipe, {
      **setting, 'seed': seed, 'sparsity': sparsity,
      'validation_fraction': protocol.VALIDATION_FRACTION, 'finetune_epochs': 0},
      protocol.aim_tuning_name(sparsity, long, recipe)) for seed in protocol.AIM_TUNING_SEEDS]


def _aim_choice(recorded: Dict[str, dict], groups: List[List[dict]]) -> Optional[dict]:
  """Of ``groups`` (each one setting's planned runs), the setting with the best median
  and no failed seed (:func:`choose`); None until every run is recorded."""
  found = [[recorded.get(r['id']) for r in runs] for runs in groups]
  if not found or any(run is None for runs in found for run in runs):
    return None
  return _setting(choose([(runs[0], runs) for runs in found], 'median')[0])


class AimTuning(NamedTuple):
  """The tuning of a recipe at one sparsity (AIM_SPARSITIES), as planned runs grouped by
  setting, each group on AIM_TUNING_SEEDS."""

  first: List[List[dict]]  # its own values at the learning rate and weight decay of its pick
  second: List[List[dict]]  # the first step's choice at each of WEIGHT_DECAYS
  third: List[List[dict]]  # its own values again at the second step's weight decay, if moved
  picked: Optional[dict]  # the last step's choice: the setting of its finals


def aim_tuning(recorded: Dict[str, dict], model: str, sparsity: float,
               long: bool = False, recipe: str = protocol.AIMED) -> AimTuning:
  """The steps of tuning ``recipe`` (the target-aware PILoT, or at LONG_EPOCHS its
  reference AIM_REFERENCE, tuned alike) at ``sparsity``, each choosing the best
  median among its settings with no failed seed (:func:`choose`), one coordinate at a
  time: first its own values at the learning rate and weight decay of its pick (its
  30-epoch pick; where ``long``, its pick at LONG_EPOCHS, :func:`long_picked`, and at
  that length; empty until the recipe is picked); then that choice at each of
  WEIGHT_DECAYS (on a product x = m * w, weight decay on m and w is itself an L1 bias on
  x, so its strength depends on the target as alpha's does; empty until the first step
  has finished, and its runs at the pick's own weight decay are the first step's); then,
  where the second step moved the weight decay, its own values again at the new one (a
  choice made at a weight decay where every value underfits, or where none is sparse
  enough for the prune, cannot tell the values apart; the second step's choice is among
  these runs already). ``picked`` is None until every run of the last step is recorded."""
  setting = (long_picked if long else picked)(recorded, model, recipe)
  if setting is None:
    return AimTuning([], [], [], None)
  base, own = protocol.RECIPES[recipe]
  shared = {k: setting[k] for k in ('learning_rate', 'weight_decay', 'num_epochs')
            if k in setting}
  def own_values(fixed):
    return [_aim_rows(model, recipe, {**base, **fixed, **extra}, sparsity, long)
            for extra in own]

  first = own_values(shared)
  value = _aim_choice(recorded, first)
  second = [] if value is None else [
      _aim_rows(model, recipe, {**value, 'weight_decay': wd}, sparsity, long)
      for wd in protocol.WEIGHT_DECAYS]
  decay = _aim_choice(recorded, second)
  if decay is None or decay['weight_decay'] == value['weight_decay']:
    return AimTuning(first, second, [], decay)
  third = own_values({**shared, 'weight_decay': decay['weight_decay']})
  return AimTuning(first, second, third, _aim_choice(recorded, third))


def long_tuning_rows(recorded: Dict[str, dict], model: str, recipe: str) -> List[dict]:
  """The tuning runs of ``recipe`` at LONG_EPOCHS: its own values at the learning rate
  and weight decay its 30-epoch tuning picked over LONG_ROUND's grid (none until that
  tuning has finished)."""
  setting = _best_setting(recorded, protocol.tuning_rows(model, recipe, protocol.LONG_ROUND))
  if setting is None:
    return []
  base, own = protocol.RECIPES[recipe]
  shared = {k: setting[k] for k in ('learning_rate', 'weight_decay')}
  return [
    protocol.row(
      'tune',
      model,
      recipe,
      {
        **base,
        **shared,
        **extra,
        'num_epochs': protocol.LONG_EPOCHS,
        'seed': 0,
        'sparsity': protocol.TUNING_SPARSITY,
        'validation_fraction': protocol.VALIDATION_FRACTION,
        'finetune_epochs': 0,
      },
      protocol.long_name(recipe),
    )
    for extra in own
  ]


def long_picked(recorded: Dict[str, dict], model: str, recipe: str) -> Optional[dict]:
  """The setting LONG_EPOCHS tuning picked for ``recipe``, as :func:`picked` does."""
  return _best_setting(recorded, long_tuning_rows(recorded, model, recipe))


def _with_cycle_warmup(setting: dict, epochs: int) -> dict:
  return {**setting, **({} if epochs == 1 else {'imp.warmup_epochs': epochs})}


def cycle_warmup(setting: dict) -> int:
  """The IMP cycle warmup of ``setting`` in epochs: 1, the config default, where
  :func:`_with_cycle_warmup` left the key out."""
  return setting.get('imp.warmup_epochs', 1)


def cycle_warmup_rows(recorded: Dict[str, dict], model: str, recipe: str) -> List[dict]:
  """The validation runs that tune ``imp.warmup_epochs`` of an IMP recipe at its picked
  setting (none until that tuning has finished)."""
  setting = picked(recorded, model, recipe)
  if setting is None:
    return []
  return [
    protocol.row(
      'tune',
      model,
      recipe,
      {
        **_with_cycle_warmup(setting, epochs),
        'seed': seed,
        'sparsity': protocol.TUNING_SPARSITY,
        'validation_fraction': protocol.VALIDATION_FRACTION,
        'finetune_epochs': 0,
      },
      f'{recipe} cycle warmup',
    )
    for epochs in protocol.CYCLE_WARMUPS
    for seed in protocol.CYCLE_WARMUP_SEEDS
  ]


def cycle_warmup_groups(
  recorded: Dict[str, dict], model: str, recipe: str
) -> List[Tuple[int, List[dict]]]:
  """``(warmup epochs, its planned runs on CYCLE_WARMUP_SEEDS)`` for each of
  CYCLE_WARMUPS, from :func:`cycle_warmup_rows` (empty until the recipe is tuned)."""
  planned = cycle_warmup_rows(recorded, model, recipe)
  size = len(protocol.CYCLE_WARMUP_SEEDS)
  return (
    [
      (epochs, planned[i * size : (i + 1) * size])
      for i, epochs in enumerate(protocol.CYCLE_WARMUPS)
    ]
    if planned
    else []
  )


def cycle_warmup_picked(recorded: Dict[str, dict], model: str, recipe: str) -> Optional[dict]:
  """``recipe``'s picked setting with the ``imp.warmup_epochs`` of the best mean
  validation accuracy over CYCLE_WARMUP_SEEDS (ties go to the shorter; the key is left
  out at the default, 1, as in the tuning runs); None until all finished."""
  groups = cycle_warmup_groups(recorded, model, recipe)
  if not groups or any(r['id'] not in recorded for _, runs in groups for r in runs):
    return None
  means = [mean_validation_accuracy([recorded[r['id']] for r in runs]) for _, runs in groups]
  return _with_cycle_warmup(
    picked(recorded, model, recipe), protocol.CYCLE_WARMUPS[means.index(max(means))]
  )


def recipe_pick(recorded: Dict[str, dict], model: str, recipe: str) -> Optional[dict]:
  """The setting the benchmark recommends for ``recipe``, which its finals run at:
  :func:`picked`, with the tuned cycle warmup for an IMP recipe once that tuning has
  finished."""
  if recipe in protocol.ROBUSTNESS_RECIPES:
    return cycle_warmup_picked(recorded, model, recipe) or picked(recorded, model, recipe)
  return picked(recorded, model, recipe)
