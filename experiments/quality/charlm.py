r"""The quality protocol on the character LM: pilot, pilot+gmp and dense+gmp at 90, 95 and
98% sparsity, 5 seeds, tuned on validation. Resumable.

  python -m experiments.quality.charlm --workdir=runs/charlm/quality \
      --record=quality/charlm [--stages=tune,final] [--recipes=pilot+gmp]

1. **Tune** each recipe at 95%, seed 0, on the validation split: learning rate {1e-3,
   3e-3} x the recipe's own values. The lowest validation loss picks the setting (a run
   that diverged or collapsed counts as +inf).
2. **Final** runs with the picked setting at 90, 95 and 98%, seeds 0-4, report the test
   split's loss, bits per byte and perplexity (the test split is read only here).

Every run is the binary's (:func:`experiments.charlm.train.train_and_evaluate`) with
``configs/default.py`` and the command line's ``--config.*`` overrides (e.g. a shorter
smoke run) under it; their hash is part of each run's id, so runs of another base
config are never mixed in. Each finished run is appended to ``<record>/runs.jsonl``
(:class:`experiments.quality.run_record.Record`) and a rerun skips those found there.
"""

from experiments.common import quiet  # first: it quiets TensorFlow before TensorFlow loads

import math
import os
from typing import Dict, Iterator, List, Optional

from absl import app
from absl import flags
import ml_collections
import numpy as np
from ml_collections import config_flags

from experiments.charlm import train
from experiments.common import collapse
from experiments.common import config_checks
from experiments.quality import protocol
from experiments.quality import run_record

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'charlm', 'configs',
                              'default.py')
STAGES = ('tune', 'final')
TUNING_SPARSITY = 0.95
SPARSITIES = (0.9, 0.95, 0.98)
SEEDS = (0, 1, 2, 3, 4)
LEARNING_RATES = (1e-3, 3e-3)
CONSTANT_ALPHA = {'pilot.delta': 1.0}
# name -> (what defines the recipe, its own values to tune).
RECIPES = {
    'pilot+gmp': ({'method': 'pilot', 'schedule': 'gmp', **CONSTANT_ALPHA},
                  [{'pilot.alpha': a} for a in (1e-4, 1e-3, 1e-2)]),
    'dense+gmp': ({'method': 'dense', 'schedule': 'gmp'},
                  [{'gmp.end_fraction': f} for f in (0.5, 0.7)]),
    'pilot': ({'method': 'pilot', 'schedule': 'one_shot', **CONSTANT_ALPHA},
              [{'pilot.alpha': a} for a in (1e-3, 1e-2, 1e-1)]),
}

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line; defined by the entry point only, so that importing the module
  (tests, other binaries) defines no flags."""
  flags.DEFINE_string('workdir', 'runs/charlm/quality', 'Scratch folder of the runs.')
  flags.DEFINE_string('record', 'quality/charlm', 'Folder of runs.jsonl.')
  flags.DEFINE_list('stages', list(STAGES), 'Stages to run, in order.')
  flags.DEFINE_list('recipes', list(RECIPES), 'Recipes to run.')
  flags.DEFINE_integer('max_runs', 0, 'Stop after this many new runs (0: no limit).')
  config_flags.DEFINE_config_file('config', DEFAULT_CONFIG,
                                  'The base config every run overrides.', lock_config=False)


def _row(stage: str, recipe: str, overrides: dict, base: str) -> dict:
  overrides = {**overrides, 'base_config': base}
  return {'id': protocol.run_id(overrides), 'stage': stage, 'recipe': recipe,
          'overrides': overrides}


def tuning_rows(recipe: str, base: str) -> List[dict]:
  defining, values = RECIPES[recipe]
  return [_row('tune', recipe, {**defining, **value, 'learning_rate': lr, 'seed': 0,
                                'sparsity': TUNING_SPARSITY, 'eval_split': 'validation'}, base)
          for lr in LEARNING_RATES for value in values]


def validation_loss(row: dict) -> float:
  """A tuning run's validation loss; +inf if it diverged or collapsed."""
  return row['results'].get('validation_loss', math.inf)


def picked(recorded: Dict[str, dict], recipe: str, base: str) -> Optional[dict]:
  """The overrides of the recipe's best tuning run, once all of them have finished."""
  rows = tuning_rows(recipe, base)
  if any(row['id'] not in recorded for row in rows):
    return None
  best = min(rows, key=lambda row: validation_loss(recorded[row['id']]))
  return {k: v for k, v in best['overrides'].items()
          if k not in ('seed', 'sparsity', 'eval_split', 'base_config')}


def plan(recorded: Dict[str, dict], stages, recipes, base: str) -> Iterator[dict]:
  """The runs still to do, in order of work."""
  if 'tune' in stages:
    for recipe in recipes:
      yield from (row for row in tuning_rows(recipe, base) if row['id'] not in recorded)
  if 'final' in stages:
    for recipe in recipes:
      setting = picked(recorded, recipe, base)
      if setting is None:
        continue
      for sparsity in SPARSITIES:
        for seed in SEEDS:
          row = _row('final', recipe, {**setting, 'sparsity': sparsity, 'seed': seed,
                                       'eval_split': 'test'}, base)
          if row['id'] not in recorded:
            yield row


def run(row: dict, base_config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The row's run; its results, or ``{'error': ...}`` if it diverged or collapsed."""
  config = ml_collections.ConfigDict(base_config.to_dict())
  config_checks.override(config, {k: v for k, v in row['overrides'].items() if k != 'base_config'})
  folder = os.path.join(workdir, row['id'])
  config_checks.drop_stale_workdir(config, folder)
  try:
    results = train.train_and_evaluate(config, folder)
  except (collapse.NonFiniteError, collapse.CollapseError) as error:
    return {'error': str(error)}
  return {k: v for k, v in results.items() if k != 'config'}


def summary(recorded: Dict[str, dict]) -> str:
  """Final runs: mean ± std of the test bits per byte over seeds, by recipe and sparsity."""
  cells: Dict[tuple, list] = {}
  for row in recorded.values():
    if row['stage'] == 'final':
      value = row['results'].get('test_bits_per_byte')
      cells.setdefault((row['recipe'], row['overrides']['sparsity']), []).append(value)
  lines = ['recipe       sparsity  test bits/byte (mean ± std)  seeds  failed']
  for (recipe, sparsity), values in sorted(cells.items()):
    done = [v for v in values if v is not None]
    mean = f'{np.mean(done):.4f} ± {np.std(done):.4f}' if done else '-'
    lines.append(f'{recipe:<12} {sparsity:<9} {mean:<28} {len(values):<6} '
                 f'{len(values) - len(done)}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet.apply()
  unknown = sorted(set(FLAGS.recipes) - set(RECIPES)) + sorted(set(FLAGS.stages) - set(STAGES))
  if unknown:
    raise app.UsageError(f'Unknown recipes or stages {unknown}; recipes: {list(RECIPES)}, '
                         f'stages: {list(STAGES)}.')
  base = protocol.run_id(config_checks.flat_dict(FLAGS.config.to_dict()))
  record = run_record.Record(FLAGS.record)
  done = 0
  while not FLAGS.max_runs or done < FLAGS.max_runs:
    row = next(plan(record.rows, FLAGS.stages, FLAGS.recipes, base), None)
    if row is None:
      break
    print(f"{row['stage']} {row['recipe']} {row['overrides']}", flush=True)
    record.add({**row, 'results': run(row, FLAGS.config, FLAGS.workdir)})
    done += 1
  print(summary(record.rows))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
