r"""The quality benchmark: every method x schedule tuned alike on a validation split, then
compared on test over seeds (``make quality``; hours on 2 CPU cores, resumable).

  python -m experiments.quality.main --workdir=runs/quality --record=quality \
      [--num_workers=2 --worker=0] [--recipes=dense+imp,pilot+imp] [--stages=tune,final]

Protocol (written out in QUALITY.md by :mod:`experiments.quality.report`):

1. **Tune** each recipe (a method under a schedule) on each model at 98% sparsity,
   seed 0, on a validation split (the last 20% of mnist1d's training split; the test
   split is not read): learning rate {0.1, 0.2, 0.4} x weight decay {1e-4, 3e-4, 1e-3,
   3e-3} x the recipe's own 1-4 values. The best validation accuracy picks the setting.
   The learning rates came in two rounds ({0.1, 0.2}, then 0.4 added); a recipe keeps
   its first-round pick until its second round has finished.
2. **Final** runs train on the whole training split with the picked setting, at 90, 95,
   98 and 99% sparsity, seeds 0-4, then fine-tune 5 epochs with the masks fixed; the
   test accuracy is recorded before and after fine-tuning.
3. **Studies** of the paper's claims and of where PILoT's bias could help (beta, coupled
   decay, alpha switched off late, longer training, ERK scopes, sparsifying a trained
   model), each at its recipe's picked setting with 5 seeds.
4. **Robustness**: the recommended recipe and its equal-epoch baseline on seeds 5-24.
   **Cycle warmup**: the warmup of each IMP cycle tuned on validation (seeds 0-2) for both,
   and seeds 5-24 again for a recipe whose pick changed.
5. **Long**: the main recipes on the CNN, and GMP and the target-aware PILoT on the MLP
   (``protocol.LONG_RECIPES``), at the paper's 150 epochs, re-tuned at that length (their
   own values, at their 30-epoch learning rate and weight decay), 5 seeds.

Every finished run is appended to ``<record>/runs.jsonl`` (committed with the repo), and
a rerun skips the runs found there, so the benchmark carries on across sessions. The
work is ordered so that the headline (GMP against PILoT inside GMP) finishes first.
"""

from experiments.common import quiet  # first: it quiets TensorFlow before TensorFlow loads

import collections
import json
import os
import shutil
import time
from typing import Optional

from absl import app
from absl import flags

from experiments.common import collapse
from experiments.common import config_checks
from experiments.quality import protocol
from experiments.quality import report as quality_report
from experiments.quality import run_record
from experiments.quality import stages
from experiments.vision import train
from experiments.vision.configs import default

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/quality', 'Scratch folder of the runs (not committed).')
flags.DEFINE_string('record', 'quality', 'Folder of runs.jsonl, the plot and the tables; '
                    'QUALITY.md is written next to it.')
flags.DEFINE_list('models', list(protocol.MODELS), 'Models on mnist1d.')
flags.DEFINE_list('stages', list(protocol.STAGES), 'Stages to run, in order of work.')
flags.DEFINE_list('recipes', [], 'Only the runs of these recipes (names as in '
                  'experiments.quality.protocol.RECIPES, the first word of a study row); all '
                  'if empty.')
flags.DEFINE_float('max_hours', 0.0, 'Stop starting runs after this long (0: no limit).')
flags.DEFINE_integer('num_workers', 1, 'Processes sharing the work (one per core).')
flags.DEFINE_integer('worker', 0, 'This process: 0 .. num_workers - 1.')
flags.DEFINE_bool('dry_run', False, 'Print the runs the plan has left now, by stage and '
                  'study, and run none (final runs of a pick a confirmation moves come after).')

def _summary(results: dict) -> dict:
  keep = ('achieved_sparsity', 'eval_split', 'validation_accuracy', 'test_accuracy',
          'validation_accuracy_before_finetune', 'test_accuracy_before_finetune',
          'validation_accuracy_before_first_prune', 'test_accuracy_before_first_prune',
          'validation_accuracy_before_final_prune', 'test_accuracy_before_final_prune',
          'train_accuracy', 'wall_time_s', 'collapsed')
  return {k: results[k] for k in keep if k in results}


def execute(record: run_record.Record, workdir: str, row: dict) -> Optional[dict]:
  """Runs one benchmark run unless ``record`` has it; returns its row."""
  start = row.get('start')
  if start is not None and not os.path.isdir(os.path.join(workdir, start['id'], 'checkpoints',
                                                          'final')):
    # The start's weights live in the scratch folder, which another clone lacks.
    shutil.rmtree(os.path.join(workdir, start['id']), ignore_errors=True)
    record.rows.pop(start['id'], None)
    execute(record, workdir, start)
  if row['id'] in record.rows:
    return record.rows[row['id']]
  config = config_checks.override(default.get_config(), row['overrides'])
  path = os.path.join(workdir, row['id'])
  config_checks.drop_stale_workdir(config, path)
  label = f"[{row['stage']}] {row['model']} {row['study'] or row['recipe']} " \
          f"{json.dumps(row['overrides'], sort_keys=True)}"
  print(label, flush=True)
  try:
    results = train.train_and_evaluate(config, path)
  except collapse.NonFiniteError as error:  # a diverged setting is a result, not a crash
    results = {'diverged': str(error)[:200]}
  except collapse.CollapseError as error:  # so is a collapse (experiments/common/collapse.py)
    results = {'collapsed': str(error)[:300]}
  row = {**row, 'results': _summary(results) if 'achieved_sparsity' in results else results}
  record.add(row)
  checkpoints = os.path.join(path, 'checkpoints')
  for phase in os.listdir(checkpoints) if os.path.isdir(checkpoints) else ():
    if phase != 'final':  # only the final weights are read again (init_checkpoint)
      shutil.rmtree(os.path.join(checkpoints, phase), ignore_errors=True)
  return row


def todo(record: run_record.Record) -> list:
  """The planned runs that ``record`` lacks, of FLAGS.recipes if given, in order of work."""
  return [r for r in stages.plan(record.rows, FLAGS.models, FLAGS.stages, FLAGS.workdir)
          if r['id'] not in record.rows and (not FLAGS.recipes or r['recipe'] in FLAGS.recipes)]


def dry_run(runs: list) -> str:
  """How many ``runs`` there are, in all and per (stage, model, study or recipe)."""
  counts = collections.Counter((r['stage'], r['model'], r['study'] or r['recipe'])
                               for r in runs)
  return '\n'.join([f'{len(runs)} runs left to make:'] + [
      f'  {count:4d}  {stage} {model} {name}' for (stage, model, name), count in counts.items()])


def mine(row: dict) -> bool:
  """Whether this worker makes ``row`` (a sparsify run goes with its start)."""
  key = row.get('start', row)['id']
  return int(key, 16) % FLAGS.num_workers == FLAGS.worker


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    protocol.check_recipes(FLAGS.recipes)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  if FLAGS.dry_run:
    print(dry_run(todo(run_record.Record(FLAGS.record))))
    return
  quiet.apply()
  start, done = time.time(), 0
  while True:  # re-plan after each run: finished tuning unlocks final runs
    record = run_record.Record(FLAGS.record)  # re-read: other workers append to it
    left = todo(record)
    if not left:
      break
    if FLAGS.max_hours and time.time() - start > 3600 * FLAGS.max_hours:
      print(f'Stopping after {FLAGS.max_hours} h; rerun to continue.')
      break
    own = next((r for r in left if mine(r)), None)
    if own is None:  # the other workers' runs may finish a tuning and unlock runs of ours
      time.sleep(30)
      continue
    execute(record, FLAGS.workdir, own)
    done += 1
    if done % 10 == 0:
      quality_report.write(quality_report.current(record.rows.values()), FLAGS.record)
  record = run_record.Record(FLAGS.record)
  quality_report.write(quality_report.current(record.rows.values()), FLAGS.record)
  print(f'{done} runs in {time.time() - start:.0f}s; {len(record.rows)} recorded. '
        f'Report: QUALITY.md, {FLAGS.record}/')


if __name__ == '__main__':
  app.run(main)
