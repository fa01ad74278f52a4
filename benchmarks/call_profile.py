"""Where a compiled call's time goes: XLA's own profile of the call, split into the sparse
products (pcs's custom calls), XLA's ops between them, and the rest of the executable's
time (what its executor spends between ops).

The call is compiled, its HLO read for what each of its instructions runs (a fusion: the
ops of its body), and it is then run under ``jax.profiler`` (which records every executed
instruction by name on CPU). Per call, the medians over the calls profiled are kept:

    waited for = dispatch + executable,  executable = products + XLA ops + between ops,

and for each XLA op its median time and what it fuses. A residual add shows there as an
``add`` inside the fusion that also pads or transposes for the next product: it costs no
op of its own.
"""

import glob
import gzip
import json
import re
import statistics
import tempfile
from typing import Any, Callable, Dict, List, Sequence, Tuple

import jax

# The HLO instructions that cost no work of their own in a fusion's body.
_FREE = ('parameter', 'constant', 'bitcast', 'get-tuple-element', 'tuple')
_HEADER = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\(')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
CALL = 'pcs call_profile call'
# The calls profiled, and the unprofiled ones before them.
CALLS, WARMUP = 50, 100


def instructions(hlo: str, sparse_prefix: str = 'pcs_') -> Dict[str, Tuple[str, ...]]:
  """``{instruction of the entry computation: what it runs}`` read from compiled HLO text:
  ``('sparse product',)`` for a custom call to a ``sparse_prefix`` target, the sorted
  opcodes of its body for a fusion (leaving out ``_FREE`` ones), else its own opcode;
  ``_FREE`` instructions of the entry computation are left out. Only the entry
  computation's instructions are read: a product inside a ``while`` or ``call`` (a model
  under ``nn.scan``) counts as that op's time, among XLA's."""
  bodies: Dict[str, List[str]] = {}
  entry: List[Tuple[str, str, str]] = []
  current, in_entry = None, False
  for line in hlo.splitlines():
    header = _HEADER.match(line)
    if header:
      current, in_entry = header.group(1), line.startswith('ENTRY')
      bodies[current] = []
      continue
    if line.strip() == '}':
      current, in_entry = None, False
      continue
    found = _INSTRUCTION.match(line)
    if found is None or current is None:
      continue
    name, opcode = found.groups()
    bodies[current].append(opcode)
    if in_entry:
      entry.append((name, opcode, line))
  out = {}
  for name, opcode, line in entry:
    target = _TARGET.search(line)
    called = _CALLS.search(line)
    if opcode == 'custom-call' and target and target.group(1).startswith(sparse_prefix):
      out[name] = ('sparse product',)
    elif opcode == 'fusion' and called and called.group(1) in bodies:
      out[name] = tuple(sorted({o for o in bodies[called.group(1)] if o not in _FREE}))
    elif opcode not in _FREE:
      out[name] = (opcode,)
  return out


def split(events: Sequence[Dict[str, Any]], ops: Dict[str, Tuple[str, ...]]) -> Dict[str, Any]:
  """Medians per call of a profile's complete events (``ph == 'X'``; ``ts`` and ``dur`` in
  us): one call per ``CALL`` annotation (the call as its caller waits for it), and in it
  the events named for an instruction of ``ops`` (an op's events in one call summed).
  The executable's time is the span from the first of those to the end of the last (XLA
  runs a small program on the calling thread and a large one on a thread of its own, so
  no one event spans it on both).
  ``{'calls', 'wall_us', 'executable_us', 'products_us', 'xla_us', 'between_us', 'ops':
  [(name, what it runs, median us), ...] slowest first}``, XLA's ops only there.

  Raises:
    ValueError: if no call holds an event of ``ops``.
  """
  timed = sorted((e for e in events if e.get('ph') == 'X' and e['name'] in ops),
                 key=lambda e: e['ts'])
  per_call: Dict[str, List[float]] = {'wall': [], 'executable': [], 'products': [], 'xla': [],
                                      'between': []}
  per_op: Dict[str, List[float]] = {name: [] for name, what in ops.items()
                                    if what != ('sparse product',)}
  for call in (e for e in events if e.get('ph') == 'X' and e['name'] == CALL):
    inside = [e for e in timed if call['ts'] <= e['ts'] <= call['ts'] + call['dur']]
    if not inside:
      continue
    products = sum(e['dur'] for e in inside if ops[e['name']] == ('sparse product',))
    xla = sum(e['dur'] for e in inside) - products
    executable = max(e['ts'] + e['dur'] for e in inside) - inside[0]['ts']
    per_call['wall'].append(call['dur'])
    per_call['executable'].append(executable)
    per_call['products'].append(products)
    per_call['xla'].append(xla)
    per_call['between'].append(executable - products - xla)
    for name in {e['name'] for e in inside} & set(per_op):
      per_op[name].append(sum(e['dur'] for e in inside if e['name'] == name))
  if not per_call['wall']:
    raise ValueError(f'the profile holds no {CALL!r} call with an op of the program in it.')
  medians = {key: statistics.median(values) for key, values in per_call.items()}
  return {'calls': len(per_call['wall']), 'wall_us': medians['wall'],
          'executable_us': medians['executable'], 'products_us': medians['products'],
          'xla_us': medians['xla'], 'between_us': medians['between'],
          'ops': sorted(((name, list(ops[name]), statistics.median(times))
                         for name, times in per_op.items() if times),
                        key=lambda row: -row[2])}


def profile(fn: Callable, *args, calls: int = CALLS, warmup: int = WARMUP) -> Dict[str, Any]:
  """:func:`split` of ``calls`` calls of the compiled ``fn(*args)`` (``fn`` a ``jax.jit``
  function, or a call ``exported.bind`` returns: anything with ``fn.trace(*args)``), after
  ``warmup`` calls, each waited for inside a ``CALL`` annotation."""
  ops = instructions(fn.trace(*args).lower().compile().as_text())
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder):
      for _ in range(calls):
        with jax.profiler.TraceAnnotation(CALL):
          jax.block_until_ready(fn(*args))
    traces = glob.glob(f'{folder}/plugins/profile/*/*.trace.json.gz')
    if not traces:
      raise RuntimeError('jax.profiler wrote no trace file.')
    with gzip.open(traces[0]) as f:
      events = json.load(f)['traceEvents']
  return split(events, ops)
