r"""The main job: several methods at several sparsities, then the report (``make demo``).

  python -m experiments.vision.sweep --workdir=runs/demo

Runs ``train.train_and_evaluate`` in one process for every (method, sparsity, seed)
of the config plus the dense reference, each in ``<workdir>/<method>_<sparsity>_s<seed>``.
A method is ``--config.method`` alone (under the config's schedule) or
``<method>+<schedule>``: ``dense+gmp`` is GMP, ``pilot+gmp`` PILoT inside GMP; a suffix
``@<sparsity>`` runs it at that sparsity only (``pilot+imp@0.98``). Each recipe runs
with its validation-picked setting on the config's model (learning rate, weight decay,
the method's own values; :mod:`experiments.vision.configs.picked`, from the quality benchmark)
unless ``--picked=false`` (finished runs are skipped, interrupted ones resume), then
writes ``report.md`` and ``accuracy_vs_sparsity.png`` and prints the table.

``make demo`` runs the six 30-epoch recipes at 90% and 98% and, at 98% only, the
recommended recipe (PILoT inside IMP, 120 epochs) beside its equal-epoch baseline (IMP).
The IMP pair takes as long as six 30-epoch runs, so 95% (six runs) went to keep the demo
near 6 minutes on 2 cores; ``--sparsities=0.9,0.95,0.98`` adds it back.
"""

from experiments.common import quiet  # first: it quiets TensorFlow before TensorFlow loads

import os
import time
from typing import Collection, Optional

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from experiments.common import blocks
from experiments.common import collapse
from experiments.common import config_checks
from experiments.vision import report
from experiments.vision import train
from experiments.vision.configs import picked

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')
if __name__ == '__main__':  # before DEFINE_config_file, which applies the overrides at once
  config_checks.exit_on_bad_overrides(DEFAULT_CONFIG)

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory of the sweep; one subfolder per run.')
flags.DEFINE_list('methods', ['pilot', 'spred', 'str', 'l1', 'dense+gmp', 'pilot+gmp',
                             'pilot+imp@0.98', 'dense+imp@0.98'],
                  'Methods to compare: <method> or <method>+<schedule>, optionally '
                  '@<sparsity> for one sparsity only.')
flags.DEFINE_list('sparsities', ['0.9', '0.98'], 'Target sparsities.')
flags.DEFINE_list('seeds', ['0'], 'Seeds.')
flags.DEFINE_bool('dense', True, 'Also train the dense reference (sparsity 0).')
flags.DEFINE_string('readme', None, 'A Markdown file whose <!-- demo --> block gets the table '
                    '(`make demo` passes README.md), so no figure of it is copied by hand.')
flags.DEFINE_bool('picked', True, "Run each recipe at its validation-picked setting "
                  "(experiments.vision.configs.picked); false: the config's values.")
config_flags.DEFINE_config_file(
    'config', DEFAULT_CONFIG,
    'Base configuration shared by all runs.', lock_config=True)
flags.mark_flags_as_required(['workdir'])


def runs(methods, sparsities, seeds, dense):
  """``[(method, sparsity, seed)]``: the dense reference first, then every method at
  its sparsities (``method@s``: at ``s`` only)."""
  out = [('dense', 0.0, seed) for seed in seeds] if dense else []
  for spec in methods:
    method, _, only = spec.partition('@')
    for sparsity in ([float(only)] if only else sparsities):
      out += [(method, sparsity, seed) for seed in seeds]
  return out


def with_picks(config: ml_collections.ConfigDict, overridden: Collection[str]) -> Optional[str]:
  """Sets the picked values of ``config``'s recipe (:mod:`experiments.vision.configs.picked`)
  on every key not in ``overridden`` (the keys the command line set); the line to print
  saying what was used, or None when nothing was recorded for this dataset, model and
  method."""
  if config.dataset != picked.DATASET:
    return None
  found = picked.defaults_for(config.model, config.method, config.schedule)
  if found is None:
    return None
  source, values = found
  used = {k: v for k, v in values.items() if k not in overridden}
  config_checks.override(config, used)
  kept = sorted(set(values) - set(used))
  settings = ' '.join(f'{k}={v}' for k, v in used.items()) or 'none'
  line = (f'Picked values for {picked.recipe_name(config.method, config.schedule)} on '
          f'{config.model} (validation-picked, QUALITY.md; {source}): {settings}')
  return line + (f'; kept from the command line: {", ".join(kept)}' if kept else '')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet.apply()
  start = time.time()
  todo = runs(FLAGS.methods, [float(s) for s in FLAGS.sparsities],
              [int(s) for s in FLAGS.seeds], FLAGS.dense)
  overridden = config_flags.get_override_values(FLAGS['config'])  # these keys win
  for i, (method, sparsity, seed) in enumerate(todo):
    workdir = os.path.join(FLAGS.workdir, f'{method}_{sparsity:g}_s{seed}')
    if os.path.exists(os.path.join(workdir, 'results.json')):
      continue
    config = FLAGS.config.copy_and_resolve_references()
    config.method, _, schedule = method.partition('+')
    config.schedule = schedule or config.schedule
    used = with_picks(config, overridden) if FLAGS.picked else None
    config.sparsity, config.seed = sparsity, seed
    print(f'[{i + 1}/{len(todo)}] {method} at sparsity {sparsity:g}, seed {seed}'
          + (f'\n  {used}' if used else ''))
    try:
      results = train.train_and_evaluate(config, workdir)
    except collapse.CollapseError as error:  # said, and in results.json; the others run
      print(f'  {error}')
      continue
    print(f"  {results['eval_split']} accuracy "
          f"{results[results['eval_split'] + '_accuracy']:.4f} at sparsity "
          f"{results['achieved_sparsity']:.4f} in {results['wall_time_s']:.0f}s")
  table = report.report(FLAGS.workdir)
  seconds = time.time() - start
  print(table)
  print(f'\n{len(todo)} runs in {seconds:.0f}s; table: {FLAGS.workdir}/report.md, '
        f'plot: {FLAGS.workdir}/accuracy_vs_sparsity.png')
  if FLAGS.readme:
    blocks.write_between(FLAGS.readme, 'demo', (
        f'`make demo` on {os.cpu_count()} cores, {time.strftime("%Y-%m-%d")}: {len(todo)} '
        f'runs in {seconds:.0f} s (finished runs of an earlier demo are reused).\n\n'
        + table))


if __name__ == '__main__':
  app.run(main)
