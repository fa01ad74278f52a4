r"""The quality protocol on the character LM: pilot, pilot+gmp and dense+gmp at 90, 95 and
98% sparsity, 5 seeds, tuned on validation (:mod:`experiments.quality.charlm_protocol`).
Resumable.

  python -m experiments.quality.charlm --workdir=runs/charlm/quality \
      --record=quality/charlm [--stages=tune,final] [--recipes=pilot+gmp]

Every run is the binary's (:func:`experiments.charlm.train.train_and_evaluate`) with
``configs/default.py`` and the command line's ``--config.*`` overrides (e.g. a shorter
smoke run) under it; their hash is part of each run's id, so runs of another base
config are never mixed in. Each finished run is appended to ``<record>/runs.jsonl``
(:class:`experiments.quality.run_record.Record`) and a rerun skips those found there.
After each run the runner rewrites QUALITY.md, whose section on the protocol
(:func:`experiments.quality.charlm_protocol.markdown`) is drawn from that record."""

from experiments.common import quiet  # first: it quiets TensorFlow before TensorFlow loads

import os

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from experiments.charlm import train
from experiments.common import collapse
from experiments.common import config_checks
from experiments.quality import charlm_protocol
from experiments.quality import protocol
from experiments.quality import report as quality_report
from experiments.quality import run_record

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'charlm', 'configs',
                              'default.py')
FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line; defined by the entry point only, so that importing the module
  (tests, other binaries) defines no flags."""
  flags.DEFINE_string('workdir', 'runs/charlm/quality', 'Scratch folder of the runs.')
  flags.DEFINE_string('record', 'quality/charlm', 'Folder of runs.jsonl.')
  flags.DEFINE_list('stages', list(charlm_protocol.STAGES), 'Stages to run, in order.')
  flags.DEFINE_list('recipes', list(charlm_protocol.RECIPES), 'Recipes to run.')
  flags.DEFINE_integer('max_runs', 0, 'Stop after this many new runs (0: no limit).')
  config_flags.DEFINE_config_file('config', DEFAULT_CONFIG,
                                  'The base config every run overrides.', lock_config=False)


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet.apply()
  recipes, stages = list(charlm_protocol.RECIPES), list(charlm_protocol.STAGES)
  unknown = sorted(set(FLAGS.recipes) - set(recipes)) + sorted(set(FLAGS.stages) - set(stages))
  if unknown:
    raise app.UsageError(f'Unknown recipes or stages {unknown}; recipes: {recipes}, '
                         f'stages: {stages}.')
  base = protocol.run_id(config_checks.flat_dict(FLAGS.config.to_dict()))
  record = run_record.Record(FLAGS.record)
  done = 0
  while not FLAGS.max_runs or done < FLAGS.max_runs:
    row = next(charlm_protocol.plan(record.rows, FLAGS.stages, FLAGS.recipes, base), None)
    if row is None:
      break
    print(f"{row['stage']} {row['recipe']} {row['overrides']}", flush=True)
    record.add({**row, 'results': run(row, FLAGS.config, FLAGS.workdir)})
    done += 1
    if os.path.basename(os.path.normpath(FLAGS.record)) == charlm_protocol.RECORD:
      folder = os.path.dirname(os.path.abspath(FLAGS.record))  # the quality record's
      quality_report.write(quality_report.current(run_record.Record(folder).rows.values()),
                           folder)
  print(charlm_protocol.markdown(record.rows, base))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
