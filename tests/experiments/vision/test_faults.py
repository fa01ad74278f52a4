"""Fault injection: SIGKILL the sparsify binary at random moments and during a checkpoint
write, restart it, and check that it ends exactly like an uninterrupted run."""

import json
import subprocess
import sys
import time

import numpy as np

from experiments.vision import train
from experiments.vision.configs import default
from tests import helpers

EPOCHS, FINETUNE = 4, 2
# Of the simulated devices of conftest's client, which the killed runs keep (as in the
# reference run: the CPU client's device count sets its threads, and with them the bits of
# a reduction): replicated state, so that a kill can cut a multi-device write short.
DEVICES = 2
RANDOM_KILLS = 2
TIMEOUT_S = 300


def _flags(workdir, data_dir):
  return [f'--workdir={workdir}', f'--config.data_dir={data_dir}',
          f'--config.num_epochs={EPOCHS}', f'--config.finetune_epochs={FINETUNE}',
          '--config.eval_train=False', f'--config.num_devices={DEVICES}']


def _start(kill_at_save, workdir, data_dir):
  # A compilation cache of their own: a kill can cut a cache entry short, and the other
  # tests' processes should not have to read it.
  env = helpers.subprocess_env(
      JAX_COMPILATION_CACHE_DIR=str(workdir.parent / 'compilation_cache'))
  return subprocess.Popen(
      [sys.executable, '-m', 'tests.fault_runner', str(kill_at_save)]
      + _flags(workdir, data_dir), cwd=helpers.REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epochs_logged(workdir):
  metrics = workdir / 'metrics.jsonl'
  return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def _kill_inside_the_run(process, workdir, delay):
  """SIGKILLs ``process`` ``delay`` seconds after it logs its first epoch, so the kill lands
  while it trains, evaluates or saves however fast the machine is (a kill at a fixed time
  after the start missed runs that a warm compilation cache made short). Returns whether
  the kill came before the process ended."""
  logged, deadline = _epochs_logged(workdir), time.monotonic() + TIMEOUT_S
  while process.poll() is None and _epochs_logged(workdir) <= logged:
    if time.monotonic() > deadline:
      process.kill()
      raise AssertionError(f'no epoch logged in {TIMEOUT_S} s')
    time.sleep(0.02)
  time.sleep(delay)
  if process.poll() is not None:
    return False
  process.kill()
  return True


def test_killed_runs_resume_and_end_like_an_uninterrupted_run(data_dir, tmp_path):
  config = default.get_config()
  config.data_dir, config.num_epochs, config.finetune_epochs = data_dir, EPOCHS, FINETUNE
  config.eval_train, config.num_devices = False, DEVICES
  reference = train.train_and_evaluate(config, str(tmp_path / 'reference'))

  workdir = tmp_path / 'killed'
  outputs, kills = [], []
  # 1: killed while writing its second checkpoint (train epoch 2).
  process = _start(2, workdir, data_dir)
  outputs.append(process.communicate(timeout=TIMEOUT_S)[0])
  assert process.returncode == -9
  kills.append('during the write of checkpoint 2')
  # 2..: killed at seeded random moments after the first epoch the process logs (training,
  # evaluation, fine-tuning, saving).
  rng = np.random.default_rng(0)
  for delay in rng.uniform(0.0, 1.0, size=RANDOM_KILLS):
    process = _start(0, workdir, data_dir)
    if _kill_inside_the_run(process, workdir, delay):
      kills.append(f'{delay:.2f}s after an epoch')
    outputs.append(process.communicate(timeout=TIMEOUT_S)[0])
  # Last: run to completion.
  process = _start(0, workdir, data_dir)
  outputs.append(process.communicate(timeout=TIMEOUT_S)[0])
  assert process.returncode == 0, outputs[-1][-3000:]

  assert any('Resuming' in out for out in outputs[1:]), outputs
  # A kill can leave a half-written checkpoint; none may have been loaded. Complete ones
  # must never be set aside, so any 'Skipped' line must concern an unreadable checkpoint.
  for out in outputs:
    for line in out.splitlines():
      if line.startswith('Skipped'):
        assert 'cannot be read' in line, line
  results = json.loads((workdir / 'results.json').read_text())
  assert results['params_fingerprint'] == reference['params_fingerprint']
  assert results['test_accuracy'] == reference['test_accuracy']
  assert (workdir / 'metrics.jsonl').read_text() == (
      tmp_path / 'reference' / 'metrics.jsonl').read_text()
  assert len(kills) >= 2, kills  # at least the checkpoint-write kill and one random kill
