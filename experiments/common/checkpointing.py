"""Checkpoints of a run: fingerprinted orbax saves, verified restores, and log truncation.

A checkpoint carries a bitwise fingerprint of what it saved; a restore recomputes it,
so a corrupted or truncated checkpoint is moved aside (``<workdir>/checkpoints/
corrupted/``) instead of being loaded, and the next older one is tried. Metric lines
of epochs after the restored checkpoint are dropped, since they will be redone.
"""

import json
import os
import shutil
import time
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

@jax.jit
def fingerprint(tree) -> jax.Array:
  """A uint32 digest of every bit of ``tree`` (position-weighted sums of the raw bits)."""
  total = jnp.uint32(0)
  for i, leaf in enumerate(jax.tree.leaves(tree)):
    leaf = jnp.ravel(jnp.asarray(leaf))
    if leaf.dtype == jnp.bool_:
      leaf = leaf.astype(jnp.uint8)
    bits = leaf.dtype.itemsize * 8
    words = jax.lax.bitcast_convert_type(leaf, jnp.dtype(f'uint{bits}')).astype(jnp.uint32)
    weights = jnp.arange(1, words.size + 1, dtype=jnp.uint32)
    total = total + jnp.uint32(2 * i + 1) * (jnp.sum(words) + jnp.sum(words * weights))
  return total


def manager(workdir: str, phase: str) -> ocp.CheckpointManager:
  """The orbax manager of one phase's checkpoints (the last two are kept)."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints', phase),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def save(checkpoints: ocp.CheckpointManager, epoch: int, saved: dict) -> None:
  """Saves ``saved`` with its fingerprint as ``epoch`` and waits until it is written."""
  checkpoints.save(epoch, args=ocp.args.StandardSave(
      {**saved, 'fingerprint': fingerprint(saved)}))
  checkpoints.wait_until_finished()


def save_once(workdir: str, name: str, saved: dict) -> None:
  """Saves ``saved`` as the single checkpoint ``<workdir>/checkpoints/<name>`` (kept if
  it already exists: a rerun of a finished run writes the same weights)."""
  checkpoints = manager(workdir, name)
  try:
    if checkpoints.latest_step() is None:
      save(checkpoints, 0, saved)
  finally:
    checkpoints.close()


def restore(workdir: str, phase: str, template: dict) -> Tuple[Optional[Any], int]:
  """The newest checkpoint of ``phase`` whose fingerprint verifies, and its epoch;
  ``(None, 0)`` if there is none. Unreadable or mismatching ones are moved aside."""
  checkpoints = manager(workdir, phase)
  try:
    for step in sorted(checkpoints.all_steps(), reverse=True):
      try:
        restored = checkpoints.restore(step, args=ocp.args.StandardRestore(
            {**template, 'fingerprint': jnp.uint32(0)}))
      except Exception as error:  # any unreadable checkpoint is set aside
        reason = f'it cannot be read ({type(error).__name__}: {str(error)[:200]})'
      else:
        expected = restored.pop('fingerprint')
        if int(fingerprint(restored)) == int(expected):
          return restored, step
        reason = 'its content does not match its fingerprint'
      target = os.path.join(workdir, 'checkpoints', 'corrupted',
                            f'{phase}-{step}-{int(time.time())}')
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(str(checkpoints.directory), str(step)), target)
      checkpoints.reload()
      print(f'Skipped {phase} checkpoint {step}: {reason}; moved to {target}.')
    return None, 0
  finally:
    checkpoints.close()


def load_weights(workdir: str, template: dict) -> dict:
  """The final weights another run saved (``<workdir>/checkpoints/final``), verified.

  Unlike :func:`restore`, nothing is moved: the other run's directory is only read.

  Raises:
    ValueError: if there are none, or they do not fit ``template`` (another model).
  """
  path = os.path.join(os.path.abspath(workdir), 'checkpoints', 'final')
  if not os.path.isdir(path):
    raise ValueError(f'config.init_checkpoint: {workdir} holds no final weights ({path} is '
                     'missing); it must be the workdir of a finished run.')
  checkpoints = ocp.CheckpointManager(path)
  try:
    step = checkpoints.latest_step()
    restored = checkpoints.restore(step, args=ocp.args.StandardRestore(
        {**template, 'fingerprint': jnp.uint32(0)}))
  except Exception as error:
    raise ValueError(f'config.init_checkpoint: the weights in {path} do not fit this model '
                     f'({type(error).__name__}: {str(error)[:300]}).') from error
  finally:
    checkpoints.close()
  expected = restored.pop('fingerprint')
  if int(fingerprint(restored)) != int(expected):
    raise ValueError(f'config.init_checkpoint: the weights in {path} do not match their '
                     'fingerprint (corrupted).')
  return restored


def truncate_logs(path: str, phases: Sequence[str], phase: str, last_epoch: int) -> None:
  """Drops the metric lines of epochs after ``(phase, last_epoch)``; ``phases`` gives
  the order of the run's phases."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  order = {name: i for i, name in enumerate(phases)}
  kept = [row for row in lines
          if (order[row['phase']], row['epoch']) <= (order[phase], last_epoch)]
  with open(path, 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in kept)
