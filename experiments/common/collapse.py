"""When a training run has collapsed, checked once per epoch from the numbers the binary
already brings to the host (the epoch's mean training loss, the evaluation accuracy).

A non-finite loss stops a run at the step it appears (:class:`NonFiniteError`), or is
skipped (``config.on_nonfinite='skip'``). Beyond that, a phase has collapsed at the end
of an epoch when

- its mean training loss **jumped**: it is above LOSS_JUMP x the phase's lowest epoch
  loss so far and above ln(num_classes), the loss of giving every class the same
  probability (the model does worse than knowing nothing), or
- after the phase's learning-rate warmup, a training phase's evaluation accuracy is at
  chance (:func:`experiments.common.failures.at_chance`).

The message says what to change: a lower learning rate, a longer warmup, or gradient
clipping (``config.clip_grad_norm``).
"""

import math
from typing import Optional

from experiments.common import failures

ON_COLLAPSE = ('stop', 'warn')
LOSS_JUMP = 10.0


class NonFiniteError(FloatingPointError):
  """A NaN or Inf appeared in the loss, the gradients or the parameters."""


class CollapseError(RuntimeError):
  """The run collapsed (:class:`Detector`) and ``on_collapse`` is 'stop'."""


class Detector:
  """Follows one phase's epochs; :meth:`check` says why the phase collapsed, or None.

  Args:
    num_classes: of the task, for chance accuracy and the uniform guess's loss.
    warmup_epochs: epochs of learning-rate warmup, during which accuracy is not judged.
    check_accuracy: whether accuracy at chance is a collapse (training phases; not
      fine-tuning, whose start a prune may have taken to chance).
    advice: what to change, appended to the reason.
  """

  def __init__(self, num_classes: int, warmup_epochs: int, check_accuracy: bool,
               advice: str):
    self.num_classes = num_classes
    self.warmup_epochs = warmup_epochs
    self.check_accuracy = check_accuracy
    self.advice = advice
    self.best_loss = math.inf

  def check(self, epoch: int, train_loss: float, accuracy: float,
            eval_name: str) -> Optional[str]:
    """Why the phase collapsed in ``epoch`` (1-based), or None."""
    uniform_loss = math.log(self.num_classes)
    if train_loss > LOSS_JUMP * self.best_loss and train_loss > uniform_loss:
      why = (f'the mean training loss jumped to {train_loss:.3g}, over {LOSS_JUMP:g}x its '
             f'best epoch ({self.best_loss:.3g}) and over ln({self.num_classes}) = '
             f'{uniform_loss:.3g}, the loss of a uniform guess')
    elif (self.check_accuracy and epoch > self.warmup_epochs
          and failures.at_chance(accuracy, self.num_classes)):
      why = (f'{eval_name} accuracy {accuracy:.3f} after the {self.warmup_epochs}-epoch '
             f'warmup is at chance (<= 1/{self.num_classes} + {failures.CHANCE_MARGIN:g})')
    else:
      if math.isfinite(train_loss):
        self.best_loss = min(self.best_loss, train_loss)
      return None
    return f'{why}. {self.advice}'
