r"""Train and sparsify the character LM: one absl binary for every method and schedule.

  python -m experiments.charlm.main --workdir=runs/charlm/pilot90 \
      --config=experiments/charlm/configs/default.py --config.sparsity=0.9

``--config.method`` (dense, pilot, mirror, spred, str, cs, powerprop, l1) and
``--config.schedule`` (one_shot, gmp, imp) as in ``experiments.vision.main``. Writes
``<workdir>/results.json`` (validation loss, bits per byte and perplexity, before and
after pruning), per-epoch ``metrics.jsonl`` and the final weights; see
:mod:`experiments.charlm.train`.
"""

from experiments.common import quiet  # first: it quiets TensorFlow before TensorFlow loads

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments.charlm import train
from experiments.common import collapse
from experiments.common import config_checks

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')
if __name__ == '__main__':  # before DEFINE_config_file, which applies the overrides at once
  config_checks.exit_on_bad_overrides(DEFAULT_CONFIG)

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for results, logs and the final weights.')
config_flags.DEFINE_config_file('config', DEFAULT_CONFIG,
                                'Experiment configuration (ml_collections file).',
                                lock_config=True)
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet.apply()
  try:
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, collapse.NonFiniteError, collapse.CollapseError) as error:
    print(f'Error: {error}', file=sys.stderr)
    sys.exit(1)
  split = results['eval_split']
  print(f"{results['method']}+{results['schedule']} char LM: {split} "
        f"{results[split + '_bits_per_byte']:.3f} bits/byte (perplexity "
        f"{results[split + '_perplexity']:.2f}) at sparsity {results['achieved_sparsity']:.4f} "
        f"({results['wall_time_s']:.0f}s). Sample: {results['sample']!r}. "
        f'Results: {FLAGS.workdir}/results.json')


if __name__ == '__main__':
  app.run(main)
