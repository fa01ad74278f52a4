r"""The main job: several methods at several sparsities, then the report (``make demo``).

  python -m experiments.sweep --workdir=runs/demo

Runs ``train.train_and_evaluate`` in one process for every (method, sparsity, seed)
of the config plus the dense reference, each in ``<workdir>/<method>_<sparsity>_s<seed>``.
A method is ``--config.method`` alone (under the config's schedule) or
``<method>+<schedule>``: ``dense+gmp`` is GMP, ``pilot+gmp`` PILoT inside GMP. Where the
quality benchmark's record (``--tuned``) holds a finished tuning of that recipe on the
config's model, its picked setting (learning rate, weight decay, the method's own values,
chosen on a validation split) is used; otherwise the config's values
(finished runs are skipped, interrupted ones resume), then writes ``report.md`` and
``accuracy_vs_sparsity.png`` and prints the table.
"""

from experiments import quiet  # first: it quiets TensorFlow before TensorFlow loads

import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import config_checks
from experiments import quality_protocol
from experiments import report
from experiments import train

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')
if __name__ == '__main__':  # before DEFINE_config_file, which applies the overrides at once
  config_checks.exit_on_bad_overrides(DEFAULT_CONFIG)

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory of the sweep; one subfolder per run.')
flags.DEFINE_list('methods', ['pilot', 'spred', 'str', 'l1', 'dense+gmp', 'pilot+gmp'],
                  'Methods to compare: <method> or <method>+<schedule>.')
flags.DEFINE_list('sparsities', ['0.9', '0.95', '0.98'], 'Target sparsities.')
flags.DEFINE_list('seeds', ['0'], 'Seeds.')
flags.DEFINE_bool('dense', True, 'Also train the dense reference (sparsity 0).')
flags.DEFINE_string('tuned', os.path.join(os.path.dirname(os.path.dirname(__file__)), 'quality'),
                    'Folder of the quality benchmark\'s runs.jsonl (tuned settings); '
                    'empty: use the config as it is.')
config_flags.DEFINE_config_file(
    'config', DEFAULT_CONFIG,
    'Base configuration shared by all runs.', lock_config=True)
flags.mark_flags_as_required(['workdir'])


def runs(methods, sparsities, seeds, dense):
  out = [('dense', 0.0, seed) for seed in seeds] if dense else []
  return out + [(m, s, seed) for m in methods for s in sparsities for seed in seeds]


def _short(setting: dict) -> str:
  return ', '.join(f'{k}={v}' for k, v in setting.items()
                   if k not in ('model', 'eval_train', 'method', 'schedule'))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet.apply()
  start = time.time()
  todo = runs(FLAGS.methods, [float(s) for s in FLAGS.sparsities],
              [int(s) for s in FLAGS.seeds], FLAGS.dense)
  tuned = quality_protocol.Record(FLAGS.tuned).rows if FLAGS.tuned else {}
  for i, (method, sparsity, seed) in enumerate(todo):
    workdir = os.path.join(FLAGS.workdir, f'{method}_{sparsity:g}_s{seed}')
    if os.path.exists(os.path.join(workdir, 'results.json')):
      continue
    config = FLAGS.config.copy_and_resolve_references()
    config.method, _, schedule = method.partition('+')
    config.schedule = schedule or config.schedule
    setting = (quality_protocol.picked(tuned, config.model, method)
               if method in quality_protocol.RECIPES else None)
    quality_protocol.apply(config, {k: v for k, v in (setting or {}).items()
                                    if k not in ('model', 'eval_train')})
    config.sparsity, config.seed = sparsity, seed
    where = f' (tuned: {_short(setting)})' if setting else ''
    print(f'[{i + 1}/{len(todo)}] {method} at sparsity {sparsity:g}, seed {seed}{where}')
    results = train.train_and_evaluate(config, workdir)
    print(f"  {results['eval_split']} accuracy "
          f"{results[results['eval_split'] + '_accuracy']:.4f} at sparsity "
          f"{results['achieved_sparsity']:.4f} in {results['wall_time_s']:.0f}s")
  print(report.report(FLAGS.workdir))
  print(f'\n{len(todo)} runs in {time.time() - start:.0f}s; table: {FLAGS.workdir}/report.md, '
        f'plot: {FLAGS.workdir}/accuracy_vs_sparsity.png')


if __name__ == '__main__':
  app.run(main)
