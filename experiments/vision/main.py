r"""Sparsify a model with a pcs method: one absl binary from mnist1d to ImageNet.

  python -m experiments.vision.main --workdir=runs/pilot90 \
      --config=experiments/vision/configs/default.py --config.sparsity=0.9

``configs/default.py`` is used as written. A recipe at the values the quality benchmark
picked for it on a validation split is a config of its own, named on the command line:
``--config=experiments/vision/configs/picked.py:cnn1d,pilot+gmp``
(:mod:`experiments.vision.configs.picked`).

Writes ``<workdir>/results.json``, per-epoch ``metrics.jsonl`` and TensorBoard events,
and orbax checkpoints; rerunning with the same workdir resumes. Multi-host: pass
``--coordinator_address``, ``--num_processes`` and ``--process_id`` (or rely on the
cluster's auto-detection with ``--distributed``).
"""

from experiments.common import quiet  # first: it quiets TensorFlow before TensorFlow loads

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from experiments.common import collapse
from experiments.common import config_checks
from experiments.vision import train

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
  try:
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, collapse.NonFiniteError, collapse.CollapseError) as error:  # no traceback
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
