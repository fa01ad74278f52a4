"""``make bench``: runs every benchmark in one process and rewrites BENCHMARKS.md.

  python -m benchmarks [--repeats=20] [--inference_repeats=20] [--output=BENCHMARKS.md]
"""

import os
import platform
import time

from absl import app
from absl import flags
import jax
import optax

from benchmarks import sparse_inference
from benchmarks import step_overhead

flags.DEFINE_string('output', 'BENCHMARKS.md', 'Where to write the report.')
FLAGS = flags.FLAGS


def _machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return (f'{cpu}, {os.cpu_count()} cores; {jax.device_count()} x {jax.devices()[0].device_kind} '
          f'({jax.default_backend()}); Python {platform.python_version()}, jax {jax.__version__}, '
          f'optax {optax.__version__}; {time.strftime("%Y-%m-%d")}')


def main(argv):
  del argv
  start = time.time()
  steps = step_overhead.markdown(step_overhead.run_all(FLAGS.repeats))
  inference = sparse_inference.run(FLAGS.inference_repeats)
  text = f"""# pcs benchmarks

Machine: {_machine()}. Regenerate with `make bench` ({time.time() - start:.0f} s for this run).
Every comparison is measured in one run, interleaved (variant A, B, C, A, B, C, ...), and reported
as medians and ratios; absolute times are context only.

## Training cost (`benchmarks/step_overhead.py`)

Jitted train-step time relative to the bare inner optimizer (SGD, momentum 0.9) and optimizer-state
bytes relative to parameter bytes. Targets: pilot <= 1.10x on the MLP and <= 1.02x on ResNet-20;
mirror's state at the bare optimizer's size.

{steps}

## Sparse inference (`benchmarks/sparse_inference.py`)

Global magnitude pruning to each sparsity, then `pcs.export` (BCOO, or BCSR of W^T) and
`pcs.sparse_apply` (convolutions through im2col patches) against the dense jitted model. Target:
sparse faster than dense at >= 95% sparsity for batch 1. Outputs agree with the dense model
(checked here and in tests/test_export.py).

{inference}
"""
  with open(FLAGS.output, 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
