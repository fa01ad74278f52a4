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

Ten seeds miss a rare failure. Where the config chosen on DEFAULTS_SEEDS fails on a test
seed of the defaults stage, the stage widens that recipe: its pick runs unclipped on
WIDE_SEEDS too, and the same rule decides again on DEFAULTS_SEEDS + WIDE_SEEDS. The
clipped arm runs on WIDE_SEEDS where the pick fails on any of those 50 seeds; half the
learning rate then runs, where the rule needs it, on whichever of them it has not run
on. Until the widened decision is in, the config keeps the first one. The test failure
only asks for more validation seeds; what the config takes is chosen on those.
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
PENDING = 'pending'  # what :func:`_decide` returns while the runs that decide are not all in

Cells = Dict[Tuple[str, str, str], Dict[int, Optional[float]]]
Seeds = Tuple[int, ...]
WIDE = protocol.DEFAULTS_SEEDS + protocol.WIDE_SEEDS


def name(recipe: str, arm: str) -> str:
  """The study name of a 'clipping' stage run: the recipe and its arm."""
  return {UNCLIPPED: f'{recipe} unclipped',
          CLIPPED: f'{recipe} clipped at {protocol.CLIP_NORM:g}',
          HALVED: f'{recipe} at half the learning rate'}[arm]


def defaults_row(model: str, recipe: str, setting: dict, sparsity: float, seed: int) -> dict:
  """The 'defaults' stage's run of ``recipe`` at its picked config ``setting``: test split,
  no fine-tuning, as the binary runs ``picked.py``."""
  return protocol.row('defaults', model, recipe, {**setting, 'sparsity': sparsity, 'seed': seed},
                      f'{recipe} as the binary runs it')


def rows(recorded: Dict[str, dict], models) -> Iterator[dict]:
  """Each of DEFAULTS_RECIPES at its pick (once tuned), without and with gradient
  clipping at CLIP_NORM, on the validation split and DEFAULTS_SEEDS, at CLIPPING_SPARSITY,
  without fine-tuning, seed by seed so that a partial stage compares both arms; then at
  half its learning rate where the pick fails and clipping does not remove its failures
  within MEDIAN_COST (:func:`_needs_halved`). Where the config so chosen failed in the
  defaults stage, the pick runs unclipped on WIDE_SEEDS, then the other arms on them as
  the rule needs them (module docstring)."""
  for model in models:
    for recipe in protocol.DEFAULTS_RECIPES:
      pick = picking.recipe_pick(recorded, model, recipe)
      if pick is None:
        continue
      found = _found_at(recorded, model, recipe, pick)
      yield from _rows_at(model, recipe, pick, (UNCLIPPED, CLIPPED), protocol.DEFAULTS_SEEDS)
      halved = _needs_halved(found, model, recipe, protocol.DEFAULTS_SEEDS)
      if halved:
        yield from _rows_at(model, recipe, pick, (HALVED,), protocol.DEFAULTS_SEEDS)
      if not _widens(recorded, found, model, recipe, pick):
        continue
      yield from _rows_at(model, recipe, pick, (UNCLIPPED,), protocol.WIDE_SEEDS)
      plain = _arm(found, model, recipe, UNCLIPPED, WIDE)
      if not (_complete(plain, WIDE) and _failed(plain)):
        continue
      yield from _rows_at(model, recipe, pick, (CLIPPED,), protocol.WIDE_SEEDS)
      if _needs_halved(found, model, recipe, WIDE):
        yield from _rows_at(model, recipe, pick, (HALVED,),
                            protocol.WIDE_SEEDS if halved else WIDE)


def _rows_at(model: str, recipe: str, pick: dict, arms, seeds: Seeds) -> Iterator[dict]:
  """The stage's runs of ``recipe`` at ``pick`` in ``arms`` on ``seeds``, seed by seed."""
  for seed in seeds:
    for arm in arms:
      setting = {**pick, 'clip_grad_norm': protocol.CLIP_NORM if arm == CLIPPED else 0.0}
      if arm == HALVED:
        setting['learning_rate'] = pick['learning_rate'] / 2
      yield protocol.row('clipping', model, recipe, {
          **setting, 'sparsity': protocol.CLIPPING_SPARSITY, 'seed': seed,
          'validation_fraction': protocol.VALIDATION_FRACTION, 'finetune_epochs': 0},
          name(recipe, arm))


def _found_at(recorded: Dict[str, dict], model: str, recipe: str, pick: dict) -> Cells:
  """The cells of the stage's recorded runs of ``recipe`` at ``pick`` (every arm and seed)."""
  planned = _rows_at(model, recipe, pick, ARMS, WIDE)
  return cells(run for run in (recorded.get(row['id']) for row in planned) if run)


def _widens(recorded: Dict[str, dict], found: Cells, model: str, recipe: str,
            pick: dict) -> bool:
  """Whether the config chosen on DEFAULTS_SEEDS failed in the defaults stage: a run at
  chance, diverged, or more than 10 pp under its cell's median, at any of
  DEFAULTS_SPARSITIES once that cell has every seed. False while that choice is pending:
  the defaults stage may have run the pick before it, and a pick that a remedy then
  replaces says nothing of the config."""
  taken = _decide(found, model, recipe, protocol.DEFAULTS_SEEDS)
  if taken == PENDING:
    return False
  setting = _setting(pick, taken)
  for sparsity in protocol.DEFAULTS_SPARSITIES:
    runs = [recorded.get(defaults_row(model, recipe, setting, sparsity, seed)['id'])
            for seed in protocol.DEFAULTS_SEEDS]
    if all(runs) and _failed({run['overrides']['seed']: run['results'].get('test_accuracy')
                              for run in runs if run}):
      return True
  return False


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


def seeds(found: Cells, model: str, recipe: str) -> Seeds:
  """The seeds the stage decides ``recipe`` on: DEFAULTS_SEEDS, and WIDE_SEEDS after them
  once the stage has widened it (a run on one of them is recorded)."""
  widened = any(seed in protocol.WIDE_SEEDS for arm in ARMS
                for seed in found.get((model, recipe, arm), {}))
  return WIDE if widened else protocol.DEFAULTS_SEEDS


def _arm(found: Cells, model: str, recipe: str, arm: str,
         on: Seeds) -> Dict[int, Optional[float]]:
  """The runs of ``recipe``'s ``arm`` on the seeds ``on``."""
  return {s: v for s, v in found.get((model, recipe, arm), {}).items() if s in on}


def _median(values: Dict[int, Optional[float]]) -> float:
  return float(np.median([v for v in values.values() if v is not None]))


def _complete(values: Dict[int, Optional[float]], on: Seeds) -> bool:
  return set(on) <= set(values)


def _failed(values: Dict[int, Optional[float]]) -> bool:
  return bool(failures.failed(values, protocol.NUM_CLASSES))


def _needs_halved(found: Cells, model: str, recipe: str, on: Seeds) -> bool:
  """Whether the pick fails on the seeds ``on`` and clipping does not remove its failures
  there within MEDIAN_COST."""
  plain, clipped = (_arm(found, model, recipe, arm, on) for arm in (UNCLIPPED, CLIPPED))
  if not (_complete(plain, on) and _complete(clipped, on)) or not _failed(plain):
    return False
  return _failed(clipped) or 100 * (_median(plain) - _median(clipped)) > MEDIAN_COST


def _decide(found: Cells, model: str, recipe: str, on: Seeds) -> Optional[str]:
  """The rule (module docstring) on the seeds ``on``: CLIPPED or HALVED where the pick
  fails and that remedy is adopted, None where the pick stays (it fails on no seed, or
  every remedy fails), PENDING where the runs that decide are not all in."""
  plain, clipped, halved = (_arm(found, model, recipe, arm, on) for arm in ARMS)
  if not _complete(plain, on):
    return PENDING
  if not _failed(plain):
    return None
  if not _complete(clipped, on):
    return PENDING
  if not _needs_halved(found, model, recipe, on):
    return CLIPPED
  if not _complete(halved, on):
    return PENDING
  if not _failed(halved) and (_failed(clipped) or _median(halved) >= _median(clipped)):
    return HALVED
  return None if _failed(clipped) else CLIPPED


def remedy(found: Cells, model: str, recipe: str) -> Optional[str]:
  """The arm the picked config of ``recipe`` takes: CLIPPED or HALVED where the pick fails
  and that remedy is adopted, None where the pick stays as tuned (it fails on no seed,
  every remedy fails, or the runs that decide are not all in). A widened recipe keeps
  the decision on DEFAULTS_SEEDS until the one on every seed is in."""
  for on in dict.fromkeys((seeds(found, model, recipe), protocol.DEFAULTS_SEEDS)):
    taken = _decide(found, model, recipe, on)
    if taken != PENDING:
      return taken
  return None


def verdict(found: Cells, model: str, recipe: str) -> str:
  """What the stage says of ``recipe`` on ``model`` (:func:`_verdict_on`); for a widened
  recipe whose decision on every seed is not in yet, the first decision, which the
  config keeps meanwhile, and that the new seeds are pending."""
  on = seeds(found, model, recipe)
  if on != protocol.DEFAULTS_SEEDS and _decide(found, model, recipe, on) == PENDING:
    wide = protocol.WIDE_SEEDS
    return (f'{_verdict_on(found, model, recipe, protocol.DEFAULTS_SEEDS)}; seeds '
            f'{wide[0]}-{wide[-1]} pending')
  return _verdict_on(found, model, recipe, on)


def _verdict_on(found: Cells, model: str, recipe: str, on: Seeds) -> str:
  """What the stage says of ``recipe`` on the seeds ``on``: 'pending', 'no failure either
  way', 'trains unclipped on every seed' (widened: the clipped arm ran on the first seeds
  only), 'clipped fails too' (the pick itself fails on no seed), ADOPTED, or, where
  clipping costs more than MEDIAN_COST or fails, what half the learning rate did and which
  remedy :func:`_decide` adopts."""
  plain, clipped, halved = (_arm(found, model, recipe, arm, on) for arm in ARMS)
  if _complete(plain, on) and not _failed(plain):
    if _failed(clipped):
      return 'clipped fails too'
    if _complete(clipped, on):
      return 'no failure either way'
    return 'trains unclipped on every seed' if on == WIDE else PENDING
  if not (_complete(plain, on) and _complete(clipped, on)):
    return 'clipped fails too' if _failed(clipped) and not _failed(plain) else PENDING
  if not _needs_halved(found, model, recipe, on):
    return ADOPTED
  cost = (f'clipping costs {100 * (_median(plain) - _median(clipped)):.1f} pp of median'
          if not _failed(clipped) else 'clipped fails too')
  taken = _decide(found, model, recipe, on)
  if taken == PENDING:
    return f'{cost}; half the learning rate pending'
  if taken == HALVED:
    return f'{cost}: {HALVED_ADOPTED}'
  if taken == CLIPPED:
    return (f'{cost}; half the learning rate {"fails" if _failed(halved) else "does worse"}: '
            'clipping adopted')
  return f'{cost}; half the learning rate fails too: the pick stays'


def _setting(pick: dict, taken: Optional[str]) -> dict:
  """``pick`` with the remedy ``taken``."""
  if taken == CLIPPED:
    return {**pick, 'clip_grad_norm': protocol.CLIP_NORM}
  if taken == HALVED:
    return {**pick, 'learning_rate': pick['learning_rate'] / 2}
  return pick


def default_setting(recorded: Dict[str, dict], model: str, recipe: str) -> Optional[dict]:
  """The binary's picked config for ``recipe``: its pick (:func:`picking.recipe_pick`),
  clipped at CLIP_NORM or at half its learning rate where the stage's runs at that pick
  adopt it (:func:`remedy`)."""
  pick = picking.recipe_pick(recorded, model, recipe)
  if pick is None or recipe not in protocol.DEFAULTS_RECIPES:
    return pick
  return _setting(pick, remedy(_found_at(recorded, model, recipe, pick), model, recipe))
