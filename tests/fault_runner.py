"""Runs experiments.vision.main, optionally SIGKILLing itself while a checkpoint is being written.

  python -m tests.fault_runner KILL_AT_SAVE binary-flags...   # from the repository root

(As a module: run as a script, ``tests/`` would lead ``sys.path`` and its ``experiments``
and ``pcs`` test folders would shadow the packages.)

KILL_AT_SAVE = N > 0: at the N-th checkpoint save of this process, start the (asynchronous)
orbax write and kill the process before it completes. 0: no injected kill.
"""

import os
import runpy
import signal
import sys

import orbax.checkpoint as ocp

KILL_AT_SAVE = int(sys.argv.pop(1))
_real_save = ocp.CheckpointManager.save
_saves = [0]


def _save_then_die(self, *args, **kwargs):
  _saves[0] += 1
  result = _real_save(self, *args, **kwargs)
  if _saves[0] == KILL_AT_SAVE:
    os.kill(os.getpid(), signal.SIGKILL)
  return result


ocp.CheckpointManager.save = _save_then_die
sys.argv[0] = 'sparsify'
runpy.run_module('experiments.vision.main', run_name='__main__')
