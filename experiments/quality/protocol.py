"""The quality benchmark's protocol: what is tuned, on what, and which runs it takes.

Shared by the runner (:mod:`experiments.quality.main`) and the report
(:mod:`experiments.quality.report`). A run is a dict ``{'id', 'stage', 'model',
'recipe', 'study', 'overrides'}``; its id is a hash of its config overrides.
"""

import hashlib
import itertools
import json
import os
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from experiments.common import failures

MODELS = ('cnn1d', 'mlp')
NUM_CLASSES = 10  # mnist1d's: chance accuracy, for experiments.common.failures
# One seed is not enough to pick on: the second round picked, on validation seed 0, a
# learning rate at which other seeds of four CNN recipes fail. So the CONFIRM_TOP best
# settings of each recipe's seed-0 tuning run again on more validation seeds, and a rule
# over all of them picks, in rounds of (seeds besides 0, rule). The first round took the
# best mean over seeds 0-2 (a diverged run counts -1); that still chose learning rates at
# the edge of stability (issue 32), so the second takes the best median over seeds 0-4
# among the settings with no failed seed (experiments.common.failures; if every leader failed
# somewhere, the best worst seed). A recipe keeps its previous round's pick until its new
# round has finished, and its seed-0 pick until the first has.
CONFIRM_TOP = 3
CONFIRM_ROUNDS = (((1, 2), 'mean'), ((1, 2, 3, 4), 'median'))
CONFIRM_SEEDS = CONFIRM_ROUNDS[-1][0]
STAGES = ('tune', 'final', 'study', 'robustness', 'long', 'defaults')
TUNING_SPARSITY = 0.98
SPARSITIES = (0.9, 0.95, 0.98, 0.99)
SEEDS = (0, 1, 2, 3, 4)
VALIDATION_FRACTION = 0.2
FINETUNE_EPOCHS = 5
# The learning rates tuned, round by round. The first round's {0.1, 0.2} left nearly every
# recipe at its top, so the second adds 0.4 (a probe at 0.8, IMP alone on validation seed
# 0, did not train the CNN and lost 19 pp on the MLP). A recipe's pick comes from the
# latest round whose tuning runs have all finished, so the tables stay whole while a round
# is under way, and a recipe whose pick holds needs no new final runs.
LEARNING_RATE_ROUNDS = ((0.1, 0.2), (0.1, 0.2, 0.4))
WEIGHT_DECAYS = (1e-4, 3e-4, 1e-3, 3e-3)


def shared_grid(learning_rates=LEARNING_RATE_ROUNDS[-1]) -> List[dict]:
  """The learning rate x weight decay grid every recipe is tuned on."""
  return [{'learning_rate': lr, 'weight_decay': wd}
          for lr in learning_rates for wd in WEIGHT_DECAYS]


CONSTANT_ALPHA = {'pilot.delta': 1.0}

# name -> (what defines the recipe, its own values to tune), in order of work.
RECIPES: Dict[str, Tuple[dict, List[dict]]] = {
    'dense+gmp': ({'method': 'dense', 'schedule': 'gmp'},
                  [{'gmp.end_fraction': f} for f in (0.5, 0.7, 0.9)]),
    'pilot+gmp': ({'method': 'pilot', 'schedule': 'gmp', **CONSTANT_ALPHA},
                  [{'pilot.alpha': a} for a in (1e-4, 3e-4, 1e-3)]),
    'pilot': ({'method': 'pilot', 'schedule': 'one_shot'},
              [{**CONSTANT_ALPHA, 'pilot.alpha': a} for a in (1e-4, 3e-4, 1e-3)]
              + [{'pilot.delta': 1.3, 'pilot.alpha': 1e-3}]),  # Algorithm 1's controller
    # Standalone PILoT that aims at the target (pcs.target_alpha_controller): alpha goes
    # to 0 once the weights are as sparse as the run's target, where Algorithm 1 (above)
    # drives past any target. Tuned like 'pilot'.
    'pilot target': ({'method': 'pilot', 'schedule': 'one_shot',
                      'pilot.alpha_control': 'target'},
                     [{**CONSTANT_ALPHA, 'pilot.alpha': a} for a in (1e-4, 3e-4, 1e-3)]
                     + [{'pilot.delta': 1.3, 'pilot.alpha': 1e-3}]),
    'dense': ({'method': 'dense', 'schedule': 'one_shot'}, [{}]),
    'l1': ({'method': 'l1', 'schedule': 'one_shot'},
           [{'l1.strength': v} for v in (1e-3, 3e-3, 1e-2)]),
    'str': ({'method': 'str', 'schedule': 'one_shot'},
            [{'str.weight_decay': v} for v in (3e-3, 1e-2, 3e-2)]),
    'spred': ({'method': 'spred', 'schedule': 'one_shot'},
              [{'spred.weight_decay': v} for v in (3e-4, 1e-3, 3e-3)]),
    'dense+imp': ({'method': 'dense', 'schedule': 'imp', 'imp.cycles': 3},
                  [{'imp.rewind': r} for r in ('weights', 'learning_rate')]),
    'pilot+imp': ({'method': 'pilot', 'schedule': 'imp', 'imp.cycles': 3, **CONSTANT_ALPHA},
                  [{'imp.rewind': r, 'pilot.alpha': a}
                   for r in ('weights', 'learning_rate') for a in (1e-4, 3e-4)]),
    'mirror': ({'method': 'mirror', 'schedule': 'one_shot', **CONSTANT_ALPHA},
               [{'pilot.alpha': a} for a in (1e-4, 3e-4, 1e-3)]),
    'cs': ({'method': 'cs', 'schedule': 'one_shot'},
           [{'cs.l1_strength': v} for v in (1e-5, 1e-4, 1e-3)]),
    'powerprop': ({'method': 'powerprop', 'schedule': 'one_shot'},
                  [{'powerprop.power': v} for v in (1.5, 2.0, 3.0)]),
}

# Baselines that answer a side question (how the paper's other competitors fare); the
# studies, which ask where PILoT's bias helps, run before them.
SIDE_BASELINES = ('mirror', 'cs', 'powerprop')

# name -> (recipe whose picked setting it starts from, changes, sparsities, what it is
# compared with: a recipe's final runs or another study, paired by sparsity and seed).
STUDIES: Dict[str, Tuple[str, dict, Tuple[float, ...], str]] = {
    'pilot beta=0': ('pilot', {'pilot.beta': 0.0}, (0.95, 0.98), 'pilot'),
    'pilot decoupled': ('pilot', {'pilot.decoupled': True}, (0.95, 0.98), 'pilot'),
    'pilot+gmp beta=0': ('pilot+gmp', {'pilot.beta': 0.0}, (0.98, 0.99), 'pilot+gmp'),
    'pilot+gmp alpha off at 50%': ('pilot+gmp', {'pilot.alpha_until': 0.5}, (0.98, 0.99),
                                   'pilot+gmp'),
    'dense+gmp 60 epochs': ('dense+gmp', {'num_epochs': 60}, (0.98, 0.99), 'dense+gmp'),
    'pilot+gmp 60 epochs': ('pilot+gmp', {'num_epochs': 60}, (0.98, 0.99),
                            'dense+gmp 60 epochs'),
    'dense+gmp erk': ('dense+gmp', {'prune_scope': 'erk'}, (0.98, 0.99), 'dense+gmp'),
    'pilot+gmp erk': ('pilot+gmp', {'prune_scope': 'erk'}, (0.98, 0.99), 'dense+gmp erk'),
    'dense+gmp 99.5%': ('dense+gmp', {}, (0.995,), 'dense+gmp'),
    'pilot+gmp 99.5%': ('pilot+gmp', {}, (0.995,), 'dense+gmp 99.5%'),
}
# Sparsifying a trained model: each recipe starts from the dense run of the same seed
# (recipe 'dense' at sparsity 0, 30 epochs) and trains SPARSIFY_EPOCHS more.
SPARSIFY_RECIPES = ('dense+gmp', 'pilot+gmp', 'pilot', 'dense', 'l1')
SPARSIFY_EPOCHS = 5
# The 'robustness' stage (issue: the recommended recipe collapsed on one of five fresh
# seeds). First the warmup of each IMP cycle's restarted learning-rate schedule (the
# collapse: pilot+imp diverged two epochs after the third rewind) is tuned for the
# recommended recipe and its equal-epoch baseline at their picked settings, on the
# validation split and CYCLE_WARMUP_SEEDS, since a failure on one seed in five cannot
# show on one; the best mean validation accuracy picks (a diverged run counts -1). 1 is
# the config default, so its seed-0 run is the tuning run. Then both run at their picks
# on ROBUSTNESS_SEEDS, which nobody tuned on or reported before: how often do they fail?
ROBUSTNESS_RECIPES = ('pilot+imp', 'dense+imp')
ROBUSTNESS_SEEDS = tuple(range(5, 25))
ROBUSTNESS_SPARSITY = 0.98
# The 'defaults' stage (issue 32): what a user gets from the binary on seeds nobody ran.
# Each recipe as the binary runs it with ``--config=experiments/vision/configs/picked.py:
# <model>,<recipe>`` (its pick, ``recipe_pick``; no fine-tuning, as default.py), at 90% and
# 98%, on DEFAULTS_SEEDS: no run may fail (experiments/common/failures.py).
DEFAULTS_RECIPES = ('dense', 'dense+gmp', 'dense+imp', 'pilot', 'pilot+gmp', 'pilot+imp', 'l1',
                    'str', 'spred', 'cs')
DEFAULTS_SEEDS = tuple(range(101, 111))
DEFAULTS_SPARSITIES = (0.9, 0.98)
CYCLE_WARMUPS = (1, 3, 5)
CYCLE_WARMUP_SEEDS = (0, 1, 2)


# The paper's training length (Jacobs & Burkholz train 150 epochs, Algorithm 1 raising
# alpha in the first half): the main recipes on the CNN, each tuned alike at that length
# on the validation split (its own values, with the learning rate and weight decay of its
# 30-epoch pick), then SEEDS at every sparsity. Rows are named '<recipe> 150 epochs'.
# The reference and the equal-budget PILoT recipe run first.
LONG_EPOCHS = 150
# The round whose 30-epoch picks give the long stage its learning rate and weight decay:
# the first, which the stage was run at (seeds 0-4, 7 recipes x 23 runs of 150 epochs).
# Rerunning it at the second round's picks is the next step; until then its tables say
# which round they come from.
LONG_ROUND = LEARNING_RATE_ROUNDS[0]
LONG_RECIPES = ('dense+gmp', 'pilot+gmp', 'pilot', 'l1', 'cs', 'str', 'spred')
LONG_MODELS = ('cnn1d',)


def check_recipes(names) -> None:
  """Raises ValueError naming any of ``names`` that is not in RECIPES, and the allowed."""
  unknown = sorted(set(names) - set(RECIPES))
  if unknown:
    raise ValueError(f'--recipes: unknown {unknown}; allowed: {", ".join(RECIPES)}')


def long_name(recipe: str) -> str:
  return f'{recipe} {LONG_EPOCHS} epochs'


def run_id(overrides: dict) -> str:
  """A stable short name for a set of config overrides."""
  text = json.dumps(overrides, sort_keys=True)
  return hashlib.sha1(text.encode()).hexdigest()[:12]


def row(stage, model, recipe, overrides, study=None) -> dict:
  overrides = {'model': model, 'eval_train': False, **overrides}
  return {'id': run_id(overrides), 'stage': stage, 'model': model, 'recipe': recipe,
          'study': study, 'overrides': overrides}


def validation_accuracy(row: dict) -> float:
  """A tuning run's validation accuracy; -1 for a diverged run."""
  return row['results'].get('validation_accuracy', -1.0)


def tuning_rows(model: str, recipe: str,
                learning_rates=LEARNING_RATE_ROUNDS[-1]) -> List[dict]:
  """The validation runs that tune ``recipe``: :func:`shared_grid` x its own values."""
  base, own = RECIPES[recipe]
  return [row('tune', model, recipe, {**base, **shared, **extra, 'seed': 0,
                                       'sparsity': TUNING_SPARSITY,
                                       'validation_fraction': VALIDATION_FRACTION,
                                       'finetune_epochs': 0})
          for shared, extra in itertools.product(shared_grid(learning_rates), own)]


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
  for learning_rates in reversed(LEARNING_RATE_ROUNDS):
    if all(r['id'] in recorded for r in tuning_rows(model, recipe, learning_rates)):
      return learning_rates
  return None


def _leaders(recorded: Dict[str, dict], model: str, recipe: str) -> List[dict]:
  """The CONFIRM_TOP best seed-0 tuning runs of the recipe's :func:`tuning_round`, best
  first (ties in grid order); empty before a round has finished."""
  learning_rates = tuning_round(recorded, model, recipe)
  if learning_rates is None:
    return []
  planned = tuning_rows(model, recipe, learning_rates)
  return sorted(planned, key=lambda r: -validation_accuracy(recorded[r['id']]))[:CONFIRM_TOP]


def _confirming(model: str, recipe: str, leader: dict, seeds=CONFIRM_SEEDS) -> List[dict]:
  """The validation runs of the seed-0 tuning run ``leader``'s setting on ``seeds``."""
  return [row('tune', model, recipe, {**leader['overrides'], 'seed': seed},
              f'{recipe} confirmation') for seed in seeds]


def confirmation_rows(recorded: Dict[str, dict], model: str, recipe: str) -> List[dict]:
  """The leading settings of the seed-0 tuning (:func:`_leaders`), each on
  CONFIRM_SEEDS (the latest round's), in order of the leaders and then the seeds."""
  return [r for leader in _leaders(recorded, model, recipe)
          for r in _confirming(model, recipe, leader)]


def confirmed(recorded: Dict[str, dict], model: str, recipe: str,
              seeds=CONFIRM_SEEDS) -> Optional[List[Tuple[dict, List[dict]]]]:
  """``[(leader, its runs on seed 0 and seeds)]`` once every one of those runs of the
  recipe is recorded; None before."""
  groups = [(leader, [recorded.get(r['id'])
                      for r in [leader, *_confirming(model, recipe, leader, seeds)]])
            for leader in _leaders(recorded, model, recipe)]
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
  rule: str          # 'mean' or 'median': the round's rule, and what ``value`` is
  seeds: tuple       # seed 0 and the round's
  value: float
  worst: float       # the worst seed; -1 for a run with no accuracy
  failed: int        # runs failed by experiments.common.failures


def confirmation(runs: List[dict], rule: str) -> Confirmation:
  """The :class:`Confirmation` of one setting's ``runs`` under ``rule``."""
  values = seed_accuracies(runs)
  finished = [v for v in values.values() if v is not None]
  value = (mean_validation_accuracy(runs) if rule == 'mean' else
           float(np.median(finished)) if finished else -1.0)
  return Confirmation(rule, tuple(sorted(values)), value,
                      min(-1.0 if v is None else v for v in values.values()),
                      len(failures.failed(values, NUM_CLASSES)))


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


def picked_run(recorded: Dict[str, dict], model: str,
               recipe: str) -> Optional[Tuple[dict, Optional[Confirmation]]]:
  """The recorded seed-0 tuning run of ``recipe``'s pick on ``model``, and how it did on
  its confirmation (None before the first round of CONFIRM_ROUNDS has finished). Of the
  leading settings of its :func:`tuning_round`, the latest finished round's rule picks
  (:func:`choose`); before any, the best on seed 0 (ties go to the first in grid order).
  None until a tuning round has finished."""
  for seeds, rule in reversed(CONFIRM_ROUNDS):
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


def long_tuning_rows(recorded: Dict[str, dict], model: str, recipe: str) -> List[dict]:
  """The tuning runs of ``recipe`` at LONG_EPOCHS: its own values at the learning rate
  and weight decay its 30-epoch tuning picked over LONG_ROUND's grid (none until that
  tuning has finished)."""
  setting = _best_setting(recorded, tuning_rows(model, recipe, LONG_ROUND))
  if setting is None:
    return []
  base, own = RECIPES[recipe]
  shared = {k: setting[k] for k in ('learning_rate', 'weight_decay')}
  return [row('tune', model, recipe, {**base, **shared, **extra, 'num_epochs': LONG_EPOCHS,
                                       'seed': 0, 'sparsity': TUNING_SPARSITY,
                                       'validation_fraction': VALIDATION_FRACTION,
                                       'finetune_epochs': 0}, long_name(recipe))
          for extra in own]


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
  return [row('tune', model, recipe, {**_with_cycle_warmup(setting, epochs), 'seed': seed,
                                       'sparsity': TUNING_SPARSITY,
                                       'validation_fraction': VALIDATION_FRACTION,
                                       'finetune_epochs': 0}, f'{recipe} cycle warmup')
          for epochs in CYCLE_WARMUPS for seed in CYCLE_WARMUP_SEEDS]


def cycle_warmup_groups(recorded: Dict[str, dict], model: str,
                        recipe: str) -> List[Tuple[int, List[dict]]]:
  """``(warmup epochs, its planned runs on CYCLE_WARMUP_SEEDS)`` for each of
  CYCLE_WARMUPS, from :func:`cycle_warmup_rows` (empty until the recipe is tuned)."""
  planned = cycle_warmup_rows(recorded, model, recipe)
  size = len(CYCLE_WARMUP_SEEDS)
  return [(epochs, planned[i * size:(i + 1) * size])
          for i, epochs in enumerate(CYCLE_WARMUPS)] if planned else []


def cycle_warmup_picked(recorded: Dict[str, dict], model: str, recipe: str) -> Optional[dict]:
  """``recipe``'s picked setting with the ``imp.warmup_epochs`` of the best mean
  validation accuracy over CYCLE_WARMUP_SEEDS (ties go to the shorter; the key is left
  out at the default, 1, as in the tuning runs); None until all finished."""
  groups = cycle_warmup_groups(recorded, model, recipe)
  if not groups or any(r['id'] not in recorded for _, runs in groups for r in runs):
    return None
  means = [mean_validation_accuracy([recorded[r['id']] for r in runs]) for _, runs in groups]
  return _with_cycle_warmup(picked(recorded, model, recipe),
                            CYCLE_WARMUPS[means.index(max(means))])


def recipe_pick(recorded: Dict[str, dict], model: str, recipe: str) -> Optional[dict]:
  """The setting the benchmark recommends for ``recipe``, which its finals run at:
  :func:`picked`, with the tuned cycle warmup for an IMP recipe once that tuning has
  finished."""
  if recipe in ROBUSTNESS_RECIPES:
    return cycle_warmup_picked(recorded, model, recipe) or picked(recorded, model, recipe)
  return picked(recorded, model, recipe)


def final_rows(model: str, recipe: str, setting: dict, sparsities=SPARSITIES,
               changes: Optional[dict] = None, study: Optional[str] = None) -> List[dict]:
  return [row('study' if study else 'final', model, recipe,
               {**setting, **(changes or {}), 'sparsity': s, 'seed': seed,
                'finetune_epochs': FINETUNE_EPOCHS}, study)
          for s in sparsities for seed in SEEDS]


def dense_start(model: str, seed: int, setting: dict) -> dict:
  """The trained dense model that sparsification studies start from."""
  return row('study', model, 'dense', {**setting, 'sparsity': 0.0, 'seed': seed,
                                        'finetune_epochs': 0}, 'dense start')


def sparsify_row(model: str, recipe: str, setting: dict, sparsity: float, start: dict,
                 workdir: str) -> dict:
  """Sparsifying the trained dense model ``start`` with ``recipe`` in SPARSIFY_EPOCHS."""
  out = row('study', model, recipe, {
      **setting, 'sparsity': sparsity, 'seed': start['overrides']['seed'],
      'finetune_epochs': FINETUNE_EPOCHS, 'num_epochs': SPARSIFY_EPOCHS, 'warmup_epochs': 0,
      'init_checkpoint': os.path.abspath(os.path.join(workdir, start['id']))},
      f'sparsify trained: {recipe}')
  # The id names the start by its id, not by the scratch folder's path.
  out['id'] = run_id({**out['overrides'], 'init_checkpoint': start['id']})
  return {**out, 'start': start}


def _recipe_rows(recorded: Dict[str, dict], models, stages, recipes) -> Iterator[dict]:
  for recipe in recipes:
    for model in models:
      if 'tune' in stages:
        yield from tuning_rows(model, recipe)
        yield from confirmation_rows(recorded, model, recipe)
      setting = recipe_pick(recorded, model, recipe)
      if 'final' in stages and setting is not None:
        yield from final_rows(model, recipe, setting)


def plan(recorded: Dict[str, dict], models, stages, workdir: str) -> Iterator[dict]:
  """Every run in order of work, given the ``recorded`` runs by id: final and study runs
  appear once their tuning is done. The recipes in SIDE_BASELINES come after the studies."""
  yield from _recipe_rows(recorded, models, stages,
                          [r for r in RECIPES if r not in SIDE_BASELINES])
  if 'study' in stages:
    yield from _study_rows(recorded, models, workdir)
  if 'robustness' in stages:
    yield from _robustness_rows(recorded, models)
  if 'long' in stages:
    yield from _long_rows(recorded, models)
  if 'defaults' in stages:
    yield from defaults_rows(recorded, models)
  yield from _recipe_rows(recorded, models, stages,
                          [r for r in RECIPES if r in SIDE_BASELINES])


def _study_rows(recorded: Dict[str, dict], models, workdir: str) -> Iterator[dict]:
  for model in models:
    for study, (recipe, changes, sparsities, _) in STUDIES.items():
      setting = picked(recorded, model, recipe)
      if setting is not None:
        yield from final_rows(model, recipe, setting, sparsities, changes, study)
    dense = picked(recorded, model, 'dense')
    for recipe in SPARSIFY_RECIPES if dense is not None else ():
      setting = picked(recorded, model, recipe)
      for seed in SEEDS if setting is not None else ():
        start = dense_start(model, seed, dense)
        yield start
        for sparsity in (0.95, 0.98):
          yield sparsify_row(model, recipe, setting, sparsity, start, workdir)


def defaults_rows(recorded: Dict[str, dict], models) -> Iterator[dict]:
  """Each of DEFAULTS_RECIPES at its pick (once its tuning has finished), at
  DEFAULTS_SPARSITIES on DEFAULTS_SEEDS, without fine-tuning: the binary's picked configs."""
  for model in models:
    for recipe in DEFAULTS_RECIPES:
      pick = recipe_pick(recorded, model, recipe)
      if pick is None:
        continue
      for sparsity in DEFAULTS_SPARSITIES:
        for seed in DEFAULTS_SEEDS:
          yield row('defaults', model, recipe, {**pick, 'sparsity': sparsity, 'seed': seed},
                    f'{recipe} as the binary runs it')


def robustness_name(recipe: str, setting: dict) -> str:
  """The study name of the robustness runs at ``setting``."""
  return f'{recipe}, {cycle_warmup(setting)}-epoch cycle warmup'


def _robustness_rows(recorded: Dict[str, dict], models) -> Iterator[dict]:
  """The cycle-warmup tuning, then ROBUSTNESS_SEEDS for each IMP recipe at its pick,
  and for pilot+imp also at the one-epoch warmup the fix replaces. These carry
  ``imp.warmup_epochs`` explicitly, so they are new runs even where the value is the
  default: the first robustness runs, without it, were recorded on another machine, whose
  floating point took other paths (seed 6 of pilot+imp finished there and diverges
  here), and the fix is compared with what it fixes on one machine."""
  for model in models:
    for recipe in ROBUSTNESS_RECIPES:
      yield from cycle_warmup_rows(recorded, model, recipe)
  for model in models:
    settings = []  # (recipe, setting) in order of work, each pick with its warmup
    for recipe in ROBUSTNESS_RECIPES:
      pick = cycle_warmup_picked(recorded, model, recipe)
      if pick is not None:
        warmups = {cycle_warmup(pick)} | ({1} if recipe == 'pilot+imp' else set())
        settings += [(recipe, {**pick, 'imp.warmup_epochs': epochs})
                     for epochs in sorted(warmups)]
    for seed in ROBUSTNESS_SEEDS:
      for recipe, setting in settings:
        yield row('robustness', model, recipe, {
            **setting, 'sparsity': ROBUSTNESS_SPARSITY, 'seed': seed,
            'finetune_epochs': FINETUNE_EPOCHS}, robustness_name(recipe, setting))


def _long_rows(recorded: Dict[str, dict], models) -> Iterator[dict]:
  for model in (m for m in models if m in LONG_MODELS):
    for recipe in LONG_RECIPES:
      yield from long_tuning_rows(recorded, model, recipe)
    picks = {recipe: long_picked(recorded, model, recipe) for recipe in LONG_RECIPES}
    # Sparsity by sparsity, nearest the tuning sparsity first (98, 99, 95, 90%): a partial
    # stage already ranks every recipe where they differ most.
    for sparsity in sorted(SPARSITIES, key=lambda s: abs(s - TUNING_SPARSITY)):
      for recipe, setting in picks.items():
        if setting is not None:
          yield from final_rows(model, recipe, setting, (sparsity,), study=long_name(recipe))
