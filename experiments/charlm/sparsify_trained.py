r"""Sparsify a trained character LM four ways, at several sparsities (issue 30, item 6).

  python -m experiments.charlm.sparsify_trained --workdir=runs/charlm/sparsify_trained \
      --sparsities=0.5,0.7,0.9 --epochs=3

From the dense model (trained first in ``<workdir>/dense`` with the config, or the
final weights of the finished run ``--dense_workdir``), at each sparsity s, every
kernel (attention projections, MLP, head) pruned layerwise to s:

- ``magnitude``: one-shot magnitude pruning (``pcs.prune``, no retraining);
- ``wanda``: one-shot |W_ij| ||X_j||_2 per output row, the norms of each kernel's inputs
  on ``--calibration_windows`` training windows (:mod:`experiments.charlm.wanda`; Sun et
  al., 2023), no retraining;
- ``gmp``: ``--epochs`` epochs of Adam(W) under gradual magnitude pruning (cubic, from
  step 0 to ``gmp.end_fraction`` of them; Zhu & Gupta, 2018), then the exact prune;
- ``pilot+gmp``: the same with PILoT inside GMP, ``pcs.gmp(pcs.pilot(adamw, alpha))``.

Writes ``<workdir>/sparsify_trained.json``: the dense model's and each (method,
sparsity)'s ``eval_split`` loss, bits per byte and perplexity. The retraining runs keep
their own workdirs (``<workdir>/<method>-<s>``), so a rerun skips the finished ones.
``--record=quality/charlm/sparsify_trained.jsonl`` also puts the record, with its seed,
in QUALITY.md's table (one line per seed; a rerun of a seed replaces its line).
"""

from experiments.common import quiet  # first: it quiets TensorFlow before TensorFlow loads

import json
import os

from absl import app
from absl import flags
import jax.numpy as jnp
import ml_collections
from flax import nnx
from ml_collections import config_flags

from experiments.charlm import input_pipeline
from experiments.charlm import train
from experiments.charlm import wanda

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')
METHODS = ('magnitude', 'wanda', 'gmp', 'pilot+gmp')

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line; defined by the entry point only, so that importing the module
  (tests, other binaries) defines no flags."""
  flags.DEFINE_string('workdir', None, 'Directory for the study record and its runs.')
  config_flags.DEFINE_config_file('config', DEFAULT_CONFIG,
                                  'The model, data and training of the dense run.')
  flags.DEFINE_string('dense_workdir', '', 'A finished dense run of the same config (its final '
                      'weights); empty: train one in <workdir>/dense.')
  flags.DEFINE_list('sparsities', ['0.5', '0.7', '0.9'], 'Target sparsities of every kernel.')
  flags.DEFINE_integer('epochs', 3, 'Epochs of the gmp and pilot+gmp retraining.')
  flags.DEFINE_float('learning_rate', 1e-3, 'Peak learning rate of the retraining (cosine).')
  flags.DEFINE_float('pilot_alpha', 1e-3, 'PILoT alpha (constant) in pilot+gmp.')
  flags.DEFINE_integer('calibration_windows', 128, 'Training windows whose activations give '
                       "Wanda's input norms.")
  flags.DEFINE_string('record', '', 'A JSON-lines file that keeps one record per seed (QUALITY.md '
                      'reads quality/charlm/sparsify_trained.jsonl); empty: none.')
  flags.mark_flags_as_required(['workdir'])


def dense_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` trained dense, unpruned."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.method, config.schedule, config.sparsity, config.finetune_epochs = (
      'dense', 'one_shot', 0.0, 0)
  return config


def retraining_config(config: ml_collections.ConfigDict, method: str, sparsity: float,
                      epochs: int, learning_rate: float, alpha: float
                      ) -> ml_collections.ConfigDict:
  """``config`` retrained for ``epochs`` under GMP to ``sparsity``, with PILoT inside for
  ``method='pilot+gmp'``; no warmup (the weights are trained)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.method = 'pilot' if method == 'pilot+gmp' else 'dense'
  config.schedule, config.sparsity, config.prune_scope = 'gmp', sparsity, 'layerwise'
  config.num_epochs, config.warmup_epochs, config.learning_rate = epochs, 0, learning_rate
  config.finetune_epochs, config.gmp.begin_fraction = 0, 0.0
  config.pilot.alpha, config.pilot.delta = alpha, 1.0
  return config


def calibration_tokens(train_text, context: int, windows: int) -> jnp.ndarray:
  """``windows`` training windows of ``context`` bytes, evenly spaced over the text."""
  starts = jnp.linspace(0, len(train_text) - context - 1, windows).astype(int)
  return jnp.asarray(train_text)[starts[:, None] + jnp.arange(context)].astype(jnp.int32)


def study(config: ml_collections.ConfigDict, workdir: str, *, dense_workdir: str = '',
          sparsities=(0.5, 0.7, 0.9), epochs: int = 3, learning_rate: float = 1e-3,
          alpha: float = 1e-3, calibration_windows: int = 128, record_path: str = '') -> dict:
  """Runs the study (see the module docstring); returns and writes its record, and puts it
  in ``record_path`` (:func:`keep_record`) if given."""
  dense = dense_config(config)
  if not dense_workdir:
    dense_workdir = os.path.join(workdir, 'dense')
    train.train_and_evaluate(dense, dense_workdir)
  trained = train.load_model(dense, dense_workdir)
  data = input_pipeline.load(config.data_dir)
  text = (data[config.eval_split][:config.eval_bytes] if config.eval_bytes
          else data[config.eval_split])
  evaluate = lambda model: train.evaluate(model, text, config.eval_batch_size)
  calibration = calibration_tokens(data['train'], config.context, calibration_windows)
  inputs = trained.layer_inputs(calibration)
  record = {'eval_split': config.eval_split, 'dense_workdir': dense_workdir,
            'dense': evaluate(trained), 'epochs': epochs, 'learning_rate': learning_rate,
            'pilot_alpha': alpha, 'calibration_windows': calibration_windows, 'runs': []}
  for sparsity in sparsities:
    for method in METHODS:
      model = nnx.clone(trained)
      if method == 'magnitude':
        train.prune(model, sparsity)
      elif method == 'wanda':
        wanda.prune(model, inputs, sparsity)
      else:  # a finished run is not retrained: its final weights are read back
        retrained, run_dir = (retraining_config(config, method, sparsity, epochs, learning_rate,
                                                alpha),
                              os.path.join(workdir, f'{method}-{sparsity:g}'))
        train.train_and_evaluate(retrained, run_dir, model=model)
        model = train.load_model(retrained, run_dir)
      row = {'method': method, 'sparsity': sparsity,
             'achieved_sparsity': train.kernel_sparsity(model), **evaluate(model)}
      record['runs'].append(row)
      print(f"{method:>10} at {sparsity:.0%}: {row['bits_per_byte']:.3f} bits/byte, "
            f"perplexity {row['perplexity']:.2f}", flush=True)
  with open(os.path.join(workdir, 'sparsify_trained.json'), 'w') as f:
    json.dump({**record, 'config': config.to_dict()}, f, indent=1)
  if record_path:
    keep_record(record_path, record, config)
  return record


def keep_record(path: str, record: dict, config: ml_collections.ConfigDict) -> None:
  """Puts ``record`` with its config and seed in the JSON-lines file ``path``, in place of
  a line of the same seed (the dense run's folder, a path of this machine, is left out)."""
  line = {**{k: v for k, v in record.items() if k != 'dense_workdir'},
          'config': config.to_dict(), 'seed': config.seed}
  kept = []
  if os.path.exists(path):
    with open(path) as f:
      kept = [json.loads(text) for text in f if text.strip()]
  kept = [row for row in kept if row['seed'] != config.seed] + [line]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in sorted(kept, key=lambda row: row['seed']))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet.apply()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  study(FLAGS.config, FLAGS.workdir, dense_workdir=FLAGS.dense_workdir,
        sparsities=[float(s) for s in FLAGS.sparsities], epochs=FLAGS.epochs,
        learning_rate=FLAGS.learning_rate, alpha=FLAGS.pilot_alpha,
        calibration_windows=FLAGS.calibration_windows, record_path=FLAGS.record)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
