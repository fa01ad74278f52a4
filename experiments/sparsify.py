r"""Sparsify a model with a pcs method: one absl binary from mnist1d to ImageNet.

  python -m experiments.sparsify --workdir=runs/pilot90 \
      --config=experiments/configs/default.py --config.sparsity=0.9

With the default config, the recipe named by ``--config.method`` and
``--config.schedule`` takes its validation-picked values (:mod:`experiments.recipe_defaults`;
printed at the start), except for keys set on the command line.

Writes ``<workdir>/results.json``, per-epoch ``metrics.jsonl`` and TensorBoard events,
and orbax checkpoints; rerunning with the same workdir resumes. Multi-host: pass
``--coordinator_address``, ``--num_processes`` and ``--process_id`` (or rely on the
cluster's auto-detection with ``--distributed``).
"""

from experiments import quiet  # first: it quiets TensorFlow before TensorFlow loads

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from experiments import config_checks
from experiments import recipe_defaults
from experiments import train

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')
if __name__ == '__main__':  # before DEFINE_config_file, which applies the overrides at once
  config_checks.exit_on_bad_overrides(DEFAULT_CONFIG)

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for results, logs and checkpoints.')
config_flags.DEFINE_config_file(
    'config', DEFAULT_CONFIG,
    'Experiment configuration (ml_collections file).', lock_config=True)
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (auto-detect).')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: address of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet.apply()
  if FLAGS.distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  logging.info('JAX process %d / %d, %d local devices, %d in all.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  config_file = config_flags.get_config_filename(FLAGS['config'])
  if os.path.realpath(config_file) == os.path.realpath(DEFAULT_CONFIG):
    overridden = config_flags.get_override_values(FLAGS['config'])
    used = recipe_defaults.apply(FLAGS.config, overridden)
    if used and jax.process_index() == 0:
      print(used)
  try:
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, train.NonFiniteError, train.CollapseError) as error:  # no traceback
    print(f'Error: {error}', file=sys.stderr)
    sys.exit(1)
  if jax.process_index() == 0:
    split = results['eval_split']
    print(f"{results['method']}+{results['schedule']} on {results['dataset']}/{results['model']}: "
          f"{split} accuracy {results[split + '_accuracy']:.4f} at sparsity "
          f"{results['achieved_sparsity']:.4f} ({results['wall_time_s']:.0f}s). "
          f"Results: {FLAGS.workdir}/results.json")
    if 'off_target' in results:
      print(f"Warning: {results['off_target']}.", file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
