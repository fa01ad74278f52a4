"""The quality protocol on the character LM (:mod:`experiments.quality.charlm` runs it):
its recipes and grids, the runs each stage plans, the pick, and QUALITY.md's section.

1. **Tune** each recipe at TUNING_SPARSITY and TUNING_SEED on the validation split:
   LEARNING_RATES x the recipe's own values (RECIPES). The lowest validation loss picks the
   setting (a run that diverged or collapsed counts as +inf).
2. **Final** runs with the picked setting at SPARSITIES and SEEDS on the test split (read
   only here).

A run's id hashes its overrides and the hash of the base config they override
(``base_config``), so runs of another base config are never mixed in.
"""

import math
from typing import Dict, Iterator, List, Optional

import numpy as np

from experiments.charlm.configs import default
from experiments.common import config_checks
from experiments.common import failures
from experiments.quality import protocol

RECORD = 'charlm'  # the record's folder, in the quality record's
STAGES = ('tune', 'final')
TUNING_SPARSITY = 0.95
TUNING_SEED = 0
SPARSITIES = (0.9, 0.95, 0.98)
SEEDS = (0, 1, 2, 3, 4)
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
CONSTANT_ALPHA = {'pilot.delta': 1.0}
# name -> (what defines the recipe, its own values to tune).
RECIPES = {
    'pilot+gmp': ({'method': 'pilot', 'schedule': 'gmp', **CONSTANT_ALPHA},
                  [{'pilot.alpha': a} for a in (1e-5, 1e-4, 1e-3, 1e-2)]),
    'dense+gmp': ({'method': 'dense', 'schedule': 'gmp'},
                  [{'gmp.end_fraction': f} for f in (0.5, 0.7)]),
    'pilot': ({'method': 'pilot', 'schedule': 'one_shot', **CONSTANT_ALPHA},
              [{'pilot.alpha': a} for a in (1e-3, 1e-2, 1e-1)]),
}


def _row(stage: str, recipe: str, overrides: dict, base: str) -> dict:
  overrides = {**overrides, 'base_config': base}
  return {'id': protocol.run_id(overrides), 'stage': stage, 'recipe': recipe,
          'overrides': overrides}


def tuning_rows(recipe: str, base: str) -> List[dict]:
  """The recipe's tuning runs: LEARNING_RATES x its own values, at TUNING_SPARSITY and
  TUNING_SEED on the validation split."""
  defining, values = RECIPES[recipe]
  return [_row('tune', recipe, {**defining, **value, 'learning_rate': lr, 'seed': TUNING_SEED,
                                'sparsity': TUNING_SPARSITY, 'eval_split': 'validation'}, base)
          for lr in LEARNING_RATES for value in values]


def validation_loss(row: dict) -> float:
  """A tuning run's validation loss; +inf if it diverged or collapsed."""
  return row['results'].get('validation_loss', math.inf)


def _best_tuning_row(recorded: Dict[str, dict], recipe: str, base: str) -> Optional[dict]:
  """The recipe's tuning run of lowest validation loss, once all of them have finished."""
  rows = tuning_rows(recipe, base)
  if any(row['id'] not in recorded for row in rows):
    return None
  return min(rows, key=lambda row: validation_loss(recorded[row['id']]))


def picked(recorded: Dict[str, dict], recipe: str, base: str) -> Optional[dict]:
  """The overrides of the recipe's best tuning run, once all of them have finished."""
  best = _best_tuning_row(recorded, recipe, base)
  if best is None:
    return None
  return {k: v for k, v in best['overrides'].items()
          if k not in ('seed', 'sparsity', 'eval_split', 'base_config')}


def plan(recorded: Dict[str, dict], stages, recipes, base: str) -> Iterator[dict]:
  """The runs still to do, in order of work."""
  if 'tune' in stages:
    for recipe in recipes:
      yield from (row for row in tuning_rows(recipe, base) if row['id'] not in recorded)
  if 'final' in stages:
    for recipe in recipes:
      yield from (row for row in final_rows(recorded, recipe, base) if row['id'] not in recorded)


def default_base() -> str:
  """The base-config hash of runs over ``configs/default.py`` as written."""
  return protocol.run_id(config_checks.flat_dict(default.get_config().to_dict()))


def final_rows(recorded: Dict[str, dict], recipe: str, base: str) -> List[dict]:
  """The final runs of ``recipe`` at its current pick (none before the pick), so that a
  widened grid that moves the pick leaves the earlier pick's runs out of every table."""
  setting = picked(recorded, recipe, base)
  if setting is None:
    return []
  return [_row('final', recipe, {**setting, 'sparsity': sparsity, 'seed': seed,
                                 'eval_split': 'test'}, base)
          for sparsity in SPARSITIES for seed in SEEDS]


def _test_scores(recorded: Dict[str, dict], base: str) -> Dict[tuple, Dict[int, Optional[dict]]]:
  """{(recipe, sparsity): {seed: the recorded final run's test results at the recipe's
  pick, None if it diverged}}."""
  cells: Dict[tuple, Dict[int, Optional[dict]]] = {}
  for recipe in RECIPES:
    for row in final_rows(recorded, recipe, base):
      if row['id'] in recorded:
        results = recorded[row['id']]['results']
        overrides = row['overrides']
        cells.setdefault((recipe, overrides['sparsity']), {})[overrides['seed']] = (
            results if 'test_bits_per_byte' in results else None)
  return cells


def _final_cell(runs: Dict[int, Optional[dict]]) -> str:
  bits = {seed: None if r is None else r['test_bits_per_byte'] for seed, r in runs.items()}
  finished = {seed: v for seed, v in bits.items() if v is not None}
  if not finished:
    return f'diverged ({len(runs)} of {len(runs)})'
  median = float(np.median(list(finished.values())))
  perplexity = float(np.median([runs[seed]['test_perplexity'] for seed in finished]))
  if len(finished) < len(runs):
    worst = f'diverged (s{min(s for s, v in bits.items() if v is None)})'
  else:
    seed = max(finished, key=finished.get)
    worst = f'{finished[seed]:.3f} (s{seed})'
  return (f'{median:.3f} ({perplexity:.2f}) / {worst} / {len(failures.failed_by_loss(bits))}'
          + (f' (n={len(runs)})' if len(runs) < len(SEEDS) else ''))


def markdown(recorded: Dict[str, dict], base: str) -> str:
  """QUALITY.md's section on the protocol: each recipe's tuning runs (validation bits per
  byte, the pick marked), then per recipe and sparsity the test split's median bits per
  byte (and perplexity), worst seed and failed runs
  (:func:`experiments.common.failures.failed_by_loss`), and each PILoT recipe minus
  dense+gmp paired by seed; '' before any run of ``base``."""
  tuned = [row for recipe in RECIPES for row in tuning_rows(recipe, base)
           if row['id'] in recorded]  # a run's id hashes its base config too
  if not tuned:  # finals follow the tuning, so there is nothing to show
    return ''
  lines = [f'Tuning (validation split, seed {TUNING_SEED}, {TUNING_SPARSITY:.0%}): validation bits '
           'per byte of each setting; the lowest is picked (a run that diverged counts as '
           '+inf).', '',
           '| recipe | learning rate | own value | validation bits/byte |',
           '|---|---:|---|---:|']
  for recipe, (_, values) in RECIPES.items():
    best = _best_tuning_row(recorded, recipe, base)
    own_keys = sorted({k for value in values for k in value})
    for row in (row for row in tuned if row['recipe'] == recipe):
      overrides, results = row['overrides'], recorded[row['id']]['results']
      own = ', '.join(f'{k} {overrides[k]:g}' for k in own_keys)
      score = (f"{results['validation_bits_per_byte']:.3f}"
               if 'validation_bits_per_byte' in results else 'diverged')
      chosen = best is not None and row['id'] == best['id']
      lines.append(f"| {recipe} | {overrides['learning_rate']:g} | {own} | "
                   f"{'**' + score + '** (picked)' if chosen else score} |")
  lines += ['', f'Test split, seeds {SEEDS[0]}-{SEEDS[-1]} at the pick. Each cell: median bits '
            'per byte (median perplexity) / worst seed / failed runs (diverged, or more than '
            f'{100 * failures.LOSS_OVER_MEDIAN:.0f}% over the median of the cell). Lower is '
            'better.', '',
            '| recipe | ' + ' | '.join(f'{s:.0%}' for s in SPARSITIES) + ' |',
            '|---|' + '---:|' * len(SPARSITIES)]
  cells = _test_scores(recorded, base)
  for recipe in RECIPES:
    lines.append(f'| {recipe} | ' + ' | '.join(
        _final_cell(cells[(recipe, s)]) if (recipe, s) in cells else '' for s in SPARSITIES)
                 + ' |')
  for recipe in (r for r in RECIPES if r != 'dense+gmp'):
    diffs = []
    for s in SPARSITIES:
      a, b = cells.get((recipe, s), {}), cells.get(('dense+gmp', s), {})
      seeds = [k for k in sorted(set(a) & set(b)) if a[k] is not None and b[k] is not None]
      paired = [a[k]['test_bits_per_byte'] - b[k]['test_bits_per_byte'] for k in seeds]
      diffs.append(f'{np.median(paired):+.3f} (better on {sum(d < 0 for d in paired)} of '
                   f'{len(paired)})' if paired else '')
    lines.append(f'| {recipe} − dense+gmp, paired median | ' + ' | '.join(diffs) + ' |')
  return '\n'.join(lines)
