"""The machine a benchmark runs on, in one line: CPU model, cores, jax's devices, versions."""

import os
import platform
import time

import jax
import optax


def cpu_model(cpuinfo: str = '/proc/cpuinfo') -> str:
  """The CPU's model name from ``cpuinfo``, with its family, model and widest vector ISA
  where the file gives them (else what ``platform`` knows).

  A virtual machine often shows a generic name (``AMD EPYC``) for CPUs of different
  generations; the family and model tell them apart (AMD family 25: model 1 is Zen 3, model
  17 Zen 4), and the ISA says which SIMD the kernels' loops may use:
  ``'AMD EPYC (family 25, model 17; AVX-512)'``.
  """
  try:
    with open(cpuinfo) as f:
      fields = {}
      for row in f:
        if not row.strip():  # the first processor's block ends
          break
        key, _, value = row.partition(':')
        fields[key.strip()] = value.strip()
  except OSError:
    fields = {}
  if 'model name' not in fields:
    return platform.processor() or platform.machine()
  detail = []
  if 'cpu family' in fields and 'model' in fields:
    detail.append(f'family {fields["cpu family"]}, model {fields["model"]}')
  flags = set(fields.get('flags', '').split())
  if 'avx512f' in flags:
    detail.append('AVX-512')
  elif 'avx2' in flags:
    detail.append('AVX2')
  return fields['model name'] + (f' ({"; ".join(detail)})' if detail else '')


def cores() -> int:
  """The cores this process may run on (its affinity, as ``taskset`` sets it; else every
  core the machine has)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def describe() -> str:
  """``'AMD EPYC (family 25, model 17; AVX-512), 2 cores; 1 x cpu (cpu); Python 3.11.7,
  jax ..., optax ...; 2026-12-07'``."""
  count = cores()
  return (f'{cpu_model()}, {count} core{"s" if count != 1 else ""}; {jax.device_count()} x '
          f'{jax.devices()[0].device_kind} ({jax.default_backend()}); Python '
          f'{platform.python_version()}, jax {jax.__version__}, optax {optax.__version__}; '
          f'{time.strftime("%Y-%m-%d")}')
