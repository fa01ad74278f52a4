"""Where a benchmark's figures go: the machine that measured them (CPU model, cores, jax's
devices, versions), and the generated blocks of the Markdown files that hold them."""

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


def replace_between(text: str, name: str, block: str) -> str:
  """``text`` with the lines between ``<!-- name -->`` and ``<!-- /name -->`` set to ``block``."""
  begin, end = f'<!-- {name} -->', f'<!-- /{name} -->'
  if begin not in text or end not in text:
    raise ValueError(f'{begin} ... {end} markers not found')
  head, rest = text.split(begin, 1)
  _, tail = rest.split(end, 1)
  return f'{head}{begin}\n{block}\n{end}{tail}'
