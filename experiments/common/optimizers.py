"""The optimizer of a run: the learning-rate schedule, how weights are trained and how
masks are imposed.

``METHODS`` maps each ``--config.method`` (how weights are trained) to a builder
``(config, inner, schedule, total_steps, steps_per_epoch) -> optax transformation``;
``SCHEDULES`` names each ``--config.schedule`` (how masks are imposed: ``one_shot``
magnitude pruning after training, ``gmp``'s cubic schedule during it (Zhu & Gupta,
2017), or ``imp`` cycles of prune and retrain with weight or learning-rate rewinding).
Any method runs under any schedule. The training loop and the config checks both read
these, so a method or schedule is added in one place.
"""

from typing import Any, Callable, Dict, Optional

import optax

import pcs

LR_SCHEDULES = ('cosine', 'step', 'constant')


def learning_rate_schedule(config, steps_per_epoch: int, warmup_epochs: int) -> optax.Schedule:
  """Linear warmup over ``warmup_epochs``, then cosine to 0 or steps of 0.1 at 50%/75%."""
  total = config.num_epochs * steps_per_epoch
  warmup = warmup_epochs * steps_per_epoch
  if config.lr_schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                              max(total, warmup + 1))
  if config.lr_schedule == 'step':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate, warmup),
         optax.piecewise_constant_schedule(config.learning_rate, {
             total // 2 - warmup: 0.1, (3 * total) // 4 - warmup: 0.1})], [warmup])
  if config.lr_schedule == 'constant':
    return optax.constant_schedule(config.learning_rate)
  raise ValueError(f'`lr_schedule` must be one of {LR_SCHEDULES}; got {config.lr_schedule!r}.')


ALPHA_CONTROLS = ('paper', 'target')


def aims_at_target(config) -> bool:
  """Whether the method's alpha is ``pcs.target_alpha_controller``, whose training step
  must pass ``pruned_accuracy=`` (the accuracy of the network pruned to ``sparsity``)."""
  return config.method in ('pilot', 'mirror') and config.pilot.alpha_control == 'target'


def _pilot_alpha(config, steps_per_epoch):
  """With ``pilot.alpha_control='target'``, the target-aware controller
  (``pcs.target_alpha_controller``: Algorithm 1, or a constant alpha at ``pilot.delta =
  1``, paused in every epoch after which pruning to ``sparsity`` costs at most
  ``pilot.prune_tolerance`` of training accuracy). With
  ``'paper'``: Algorithm 1's controller when ``pilot.delta > 1``; else the constant
  ``pilot.alpha``, set to 0 after the fraction ``pilot.alpha_until`` of training (the
  bias it built persists once alpha stops: a_t stays where it got to)."""
  c = config.pilot
  if c.alpha_control == 'target':
    return pcs.target_alpha_controller(
        c.alpha, target_sparsity=config.sparsity, delta=c.delta,
        steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs,
        l1_threshold=c.l1_threshold, tolerance=c.prune_tolerance)
  if c.delta > 1:
    return pcs.alpha_controller(c.alpha, delta=c.delta, steps_per_epoch=steps_per_epoch,
                                num_epochs=config.num_epochs, l1_threshold=c.l1_threshold)
  if c.alpha_until < 1:
    stop = int(c.alpha_until * config.num_epochs * steps_per_epoch)
    return optax.piecewise_constant_schedule(c.alpha, {stop: 0.0})
  return c.alpha


def _pilot(config, inner, schedule, steps_per_epoch):
  """PILoT; ``pilot.decoupled`` applies the decay outside the inner optimizer at the
  learning rate's schedule."""
  return pcs.pilot(inner, alpha=_pilot_alpha(config, steps_per_epoch), beta=config.pilot.beta,
                   decoupled=config.pilot.decoupled,
                   learning_rate=schedule if config.pilot.decoupled else None)


Builder = Callable[..., optax.GradientTransformation]

METHODS: Dict[str, Builder] = {
    'dense': lambda config, inner, schedule, total, steps_per_epoch: inner,
    'pilot': lambda config, inner, schedule, total, steps_per_epoch: _pilot(
        config, inner, schedule, steps_per_epoch),
    'mirror': lambda config, inner, schedule, total, steps_per_epoch: pcs.mirror(
        inner, alpha=_pilot_alpha(config, steps_per_epoch), beta=config.pilot.beta,
        learning_rate=schedule),
    'spred': lambda config, inner, schedule, total, steps_per_epoch: pcs.spred(
        inner, weight_decay=config.spred.weight_decay),
    'str': lambda config, inner, schedule, total, steps_per_epoch: pcs.soft_threshold(
        inner, weight_decay=config.str.weight_decay, init_threshold=config.str.init_threshold),
    'cs': lambda config, inner, schedule, total, steps_per_epoch: pcs.continuous_sparsification(
        inner, l1_strength=config.cs.l1_strength, num_steps=max(total, 1),
        final_temperature=config.cs.final_temperature, mask_init=config.cs.mask_init),
    'powerprop': lambda config, inner, schedule, total, steps_per_epoch: pcs.powerprop(
        inner, power=config.powerprop.power),
    'l1': lambda config, inner, schedule, total, steps_per_epoch: pcs.l1(
        inner, strength=config.l1.strength, learning_rate=schedule),
}

SCHEDULES = ('one_shot', 'gmp', 'imp')


def _gmp(config, tx, total, steps_per_epoch):
  """GMP's cubic schedule from ``gmp.begin_fraction`` to ``gmp.end_fraction`` of training."""
  return pcs.gmp(tx, final_sparsity=config.sparsity,
                 begin_step=int(config.gmp.begin_fraction * total),
                 end_step=int(config.gmp.end_fraction * total),
                 frequency=max(1, int(config.gmp.frequency_epochs * steps_per_epoch)),
                 scope=config.prune_scope)


def _finish(config, tx):
  """``tx`` after global-norm clipping at ``clip_grad_norm`` (0: none), with the
  ``on_nonfinite='skip'`` guard."""
  if config.clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), tx)
  if config.on_nonfinite == 'skip':
    tx = optax.apply_if_finite(tx, max_consecutive_errors=config.max_nonfinite_steps)
  return optax.with_extra_args_support(tx)


INNER_OPTIMIZERS = ('sgd', 'adamw')


def inner_optimizer(config, learning_rate) -> optax.GradientTransformation:
  """The optimizer a method wraps, by ``config.optimizer`` (absent: 'sgd').

  'sgd': SGD with ``momentum`` on g + weight_decay x (coupled decay). 'adamw': Adam
  (``adam.b1``, ``adam.b2``) with decoupled decay, x <- x - lr (adam(g) + weight_decay x)
  (Loshchilov & Hutter, ICLR 2019), the transformer default. Both at
  ``config.weight_decay``.
  """
  name = config.get('optimizer', 'sgd')
  decay = config.weight_decay
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(decay),
                       optax.sgd(learning_rate, momentum=config.momentum))
  if name == 'adamw':
    return optax.adamw(learning_rate, b1=config.adam.b1, b2=config.adam.b2, weight_decay=decay)
  raise ValueError(f'`optimizer` must be one of {INNER_OPTIMIZERS}; got {name!r}.')


def make_optimizer(config, steps_per_epoch: int, masks: Optional[Any] = None
                   ) -> optax.GradientTransformationExtraArgs:
  """The inner optimizer (:func:`inner_optimizer`) wrapped by the configured method.

  Without ``masks``: the first training phase, under ``gmp`` wrapped in its schedule.
  With ``masks`` (an ``imp`` cycle): wrapped in ``pcs.keep_masked`` so pruned weights
  stay exactly zero; the learning-rate schedule starts afresh and warms up over
  ``imp.warmup_epochs``. That warmup is what keeps PILoT inside IMP stable: the step
  PILoT takes on x = m * w is lr (m^2 + w^2) g = lr sqrt(a^2 + 4 x^2) g (a = m^2 - w^2),
  so the few large weights that survive a 98% prune step up to 11 times faster than
  dense ones, and one epoch from 0 to the peak rate, on the high loss right after the
  prune, can diverge (QUALITY.md, "Robustness").
  """
  if config.method not in METHODS:
    raise ValueError(f'Unknown method {config.method!r}; choose one of {tuple(METHODS)}.')
  if config.schedule not in SCHEDULES:
    raise ValueError(f'Unknown schedule {config.schedule!r}; choose one of {SCHEDULES}.')
  schedule = learning_rate_schedule(
      config, steps_per_epoch,
      config.imp.warmup_epochs if masks is not None else config.warmup_epochs)
  inner = inner_optimizer(config, schedule)
  total = config.num_epochs * steps_per_epoch
  tx = METHODS[config.method](config, inner, schedule, total, steps_per_epoch)
  if masks is not None:
    tx = pcs.keep_masked(tx, masks)
  elif config.schedule == 'gmp':
    tx = _gmp(config, tx, total, steps_per_epoch)
  return _finish(config, tx)


def finetune_optimizer(config, masks: Any) -> optax.GradientTransformationExtraArgs:
  """Fixed-mask fine-tuning at ``finetune_learning_rate`` in ``pcs.keep_masked``: SGD with
  momentum, or with ``config.optimizer='adamw'`` Adam (neither decays the weights)."""
  if config.get('optimizer', 'sgd') == 'adamw':
    inner = optax.adam(config.finetune_learning_rate, b1=config.adam.b1, b2=config.adam.b2)
  else:
    inner = optax.sgd(config.finetune_learning_rate, momentum=config.momentum)
  return _finish(config, pcs.keep_masked(inner, masks))
