"""The machine a benchmark runs on, in one line: CPU model, cores, jax's devices, versions."""

import os
import platform
import time

import jax
import optax


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
  try:
    with open('/proc/cpuinfo') as f:
      return next(row.split(':', 1)[1].strip() for row in f if row.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def describe() -> str:
  """``'AMD EPYC, 2 cores; 1 x cpu (cpu); Python 3.11.7, jax ..., optax ...; 2026-12-06'``."""
  return (f'{cpu_model()}, {os.cpu_count()} cores; {jax.device_count()} x '
          f'{jax.devices()[0].device_kind} ({jax.default_backend()}); Python '
          f'{platform.python_version()}, jax {jax.__version__}, optax {optax.__version__}; '
          f'{time.strftime("%Y-%m-%d")}')

