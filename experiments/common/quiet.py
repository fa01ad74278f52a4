"""Library logs stay out of the way unless ``--verbosity`` asks for them.

Imported first by the binaries: TensorFlow's C++ INFO and WARNING lines are off
before TensorFlow loads. :func:`apply`, called at the start of ``main``, lowers
absl's verbosity to WARNING unless ``--verbosity`` was given, so orbax's and tfds's
INFO lines appear only with ``--verbosity=0`` (or higher). Progress bars and
summaries are printed, not logged.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position


def apply() -> None:
  """WARNING and above only, unless the command line set ``--verbosity``."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
