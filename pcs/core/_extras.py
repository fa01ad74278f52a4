"""Optional dependencies: features that need a package beyond the core load it on use.

The core (every transform, pruning, inspection) needs only jax, optax, chex and
numpy. ``pip install 'pcs[export]'`` adds flax for :func:`pcs.sparse_apply`,
and ``'pcs[checkpoint]'`` adds orbax for resumable :func:`pcs.iterative_pruning`.
(scipy, used by :func:`pcs.theory.basis_pursuit`, comes with jax; it is loaded
on use too.)
"""

import importlib
from types import ModuleType

EXTRAS = {'flax.linen': 'export', 'flax.nnx': 'export', 'flax.errors': 'export',
          'orbax.checkpoint': 'checkpoint'}


def require(module: str, feature: str) -> ModuleType:
  """Imports ``module`` for ``feature``, or raises ImportError naming the extra to install."""
  try:
    return importlib.import_module(module)
  except ImportError as error:
    package = module.split('.')[0]
    raise ImportError(
        f'{feature} needs {package}, which is not installed: '
        f"pip install 'pcs[{EXTRAS[module]}]'.") from error
