"""The character LM of experiments/charlm: offline data, the NNX decoder and its cache,
the binary end to end, Wanda and the sparsify-a-trained-model study, the quality runner.

Independent computations: the source files read here, the full forward pass against
cached decoding, hand-worked Wanda masks, counts of zeros.
"""

import hashlib
import json
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcs
from experiments.charlm import input_pipeline
from experiments.charlm import models
from experiments.charlm import sparsify_trained
from experiments.charlm import train
from experiments.charlm import wanda
from experiments.charlm.configs import default
from experiments.common import config_checks
from experiments.quality import charlm_protocol as quality
from tests import helpers


def _tiny_config(data_dir, **overrides):
  config = default.get_config()
  config.data_dir = data_dir
  config.context, config.width, config.num_heads, config.mlp_width = 16, 16, 2, 32
  config.num_epochs, config.steps_per_epoch, config.batch_size = 2, 3, 4
  config.eval_bytes, config.eval_batch_size, config.sample_bytes = 2000, 32, 4
  config.warmup_epochs = 0
  config.on_collapse = 'warn'  # a few steps leave next-byte accuracy near chance
  return config_checks.override(config, overrides)


def _tiny_model(seed=0, **kwargs):
  return models.CharLM(context=8, width=16, depth=2, num_heads=2, mlp_width=32,
                       rngs=nnx.Rngs(seed), **kwargs)


def _tokens(batch=3, length=8, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, length)))


# The data.

def test_the_dataset_is_optax_source_in_contiguous_splits_built_offline(data_dir):
  import optax as package  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(package.__file__).parent
  files = sorted(p for p in root.rglob('*.py') if not p.name.endswith('_test.py'))
  text = b''.join(p.read_bytes() for p in sorted(files, key=lambda p: p.relative_to(root)
                                                        .as_posix()))
  assert hashlib.sha256(text).hexdigest() == input_pipeline.SOURCE_SHA256
  data = input_pipeline.load(data_dir)
  again = input_pipeline.load(data_dir)  # read back from the prepared dataset
  n = len(text)
  assert [len(data[s]) for s in ('train', 'validation', 'test')] == [
      round(0.8 * n), round(0.9 * n) - round(0.8 * n), n - round(0.9 * n)]
  joined = b''.join(bytes(data[s]) for s in ('train', 'validation', 'test'))
  assert joined == text
  for split in data:
    np.testing.assert_array_equal(data[split], again[split])


def test_another_source_text_is_refused(monkeypatch):
  monkeypatch.setattr(input_pipeline, 'SOURCE_SHA256', '0' * 64)
  with pytest.raises(ValueError, match='install the pinned versions'):
    input_pipeline.source_text()


def test_training_targets_are_the_inputs_shifted_and_evaluation_scores_each_byte_once():
  text = np.arange(100, dtype=np.uint8)
  batches = list(input_pipeline.train_batches(text, context=8, batch_size=4, steps=2, seed=1,
                                              epoch=3))
  again = list(input_pipeline.train_batches(text, context=8, batch_size=4, steps=2, seed=1,
                                            epoch=3))
  assert len(batches) == 2
  for batch, same in zip(batches, again):
    np.testing.assert_array_equal(batch['input'], same['input'])
    np.testing.assert_array_equal(batch['input'][:, 1:], batch['target'][:, :-1])
    np.testing.assert_array_equal(batch['target'] - batch['input'], 1)
  scored = []
  for batch, mask in input_pipeline.eval_batches(text, context=8, batch_size=5):
    assert batch['input'].shape == (5, 8)
    scored += [t for row, m in zip(batch['target'], mask) if m for t in row]
  assert scored == list(range(1, 97))  # (100 - 1) // 8 = 12 windows of 8 targets


# The model.

def test_cached_decoding_equals_the_full_forward_pass_at_every_position():
  model, tokens = _tiny_model(), _tokens()
  full = model(tokens)
  decoding = nnx.clone(model)
  decoding.init_cache(tokens.shape[0])
  for i in range(tokens.shape[1]):
    step = decoding(tokens[:, i:i + 1], jnp.full((tokens.shape[0], 1), i), decode=True)
    np.testing.assert_allclose(step[:, 0], full[:, i], rtol=1e-5, atol=1e-5)


def test_generate_is_the_greedy_rollout_of_the_full_forward_pass():
  model = _tiny_model(seed=1, tie_embeddings=True)
  assert model.head is None
  prompt, sequence = b'de', list(b'de')
  for _ in range(5):
    sequence.append(int(jnp.argmax(model(jnp.asarray([sequence]))[0, -1])))
  assert models.generate(model, prompt, 5) == bytes(sequence[2:])
  with pytest.raises(ValueError, match='fit the context'):
    models.generate(model, prompt, 7)


def test_layer_inputs_are_what_each_kernel_receives():
  model, tokens = _tiny_model(seed=2), _tokens(seed=2)
  inputs = model.layer_inputs(tokens)
  assert set(inputs) == {p for p in pcs.kernel_layouts(model) if p[-1] == 'kernel'}
  np.testing.assert_allclose(model.head(inputs[('head', 'kernel')]), model(tokens), rtol=1e-5,
                             atol=1e-5)
  block = model.blocks[1]
  attention_input = inputs[('blocks', 1, 'attention', 'query', 'kernel')]
  np.testing.assert_allclose(
      block.attention.out(inputs[('blocks', 1, 'attention', 'out', 'kernel')]),
      block.attention(attention_input, mask=nnx.make_causal_mask(tokens)), rtol=1e-5,
      atol=1e-5)
  np.testing.assert_allclose(block.down(inputs[('blocks', 1, 'down', 'kernel')]),
                             block.down(nnx.relu(block.up(inputs[('blocks', 1, 'up',
                                                                   'kernel')]))), rtol=1e-6)


# Pruning.

def test_wanda_on_a_hand_worked_3x2_kernel():
  # Flax layout (in, out); input norms (1, 10, 0.1).
  kernel = jnp.array([[4.0, 1.0], [1.0, 2.0], [3.0, 5.0]])
  layout = pcs.KernelLayout(in_axes=(0,), out_axes=(1,), window_axes=(), batch_axes=())
  x = jnp.array([[1.0, 10.0, 0.1]])
  norms = wanda.input_norms({'k': x}, {'k': layout})['k']
  np.testing.assert_allclose(norms, [1.0, 10.0, 0.1])
  score = wanda.scores(kernel, norms, layout)  # output 0: 4, 10, 0.3; output 1: 1, 20, 0.5
  np.testing.assert_allclose(score, [[4.0, 1.0], [10.0, 20.0], [0.3, 0.5]])
  # One of three inputs pruned per output: input 2 for both (magnitude would prune input 1
  # of output 0 and input 0 of output 1).
  np.testing.assert_array_equal(wanda.mask(score, 1 / 3, layout),
                                [[True, True], [True, True], [False, False]])
  np.testing.assert_array_equal(wanda.mask(score, 2 / 3, layout),
                                [[False, False], [True, True], [False, False]])
  # Equal scores: the lower input index is kept.
  np.testing.assert_array_equal(wanda.mask(jnp.ones((3, 1)), 2 / 3, pcs.KernelLayout(
      (0,), (1,), (), ())), [[True], [False], [False]])


def test_wanda_on_an_attention_out_kernel_prunes_each_outputs_fan_in_over_heads():
  model = _tiny_model(seed=3)
  inputs = model.layer_inputs(_tokens(seed=3))
  path = ('blocks', 0, 'attention', 'out', 'kernel')
  kernel = model.blocks[0].attention.out.kernel[...]  # (heads, head_dim, out)
  masks = wanda.prune(model, inputs, 0.75)
  # The same computed on the 2-D (heads * head_dim, out) matrix.
  heads = inputs[path].reshape(-1, kernel.shape[0] * kernel.shape[1])
  score = np.abs(kernel.reshape(-1, kernel.shape[2])) * np.linalg.norm(heads, axis=0)[:, None]
  kept = np.argsort(-score, axis=0, kind='stable')[:score.shape[0] // 4]  # 16 inputs: keep 4
  expected = np.zeros_like(score, bool)
  np.put_along_axis(expected, kept, True, axis=0)
  np.testing.assert_array_equal(np.asarray(masks[path]).reshape(score.shape), expected)
  assert np.all(np.asarray(model.blocks[0].attention.out.kernel[...])[~np.asarray(masks[path])]
                == 0)
  for kernel_path, mask in masks.items():
    assert float(1 - jnp.mean(mask)) == 0.75, kernel_path
  with pytest.raises(ValueError, match='no calibration input'):
    wanda.prune(model, {path: inputs[path]}, 0.5)


def test_one_shot_magnitude_pruning_hits_the_exact_sparsity_of_every_kernel():
  model = _tiny_model(seed=4)
  embeddings = np.asarray(model.tokens.embedding[...])
  train.prune(model, 0.7)
  state = nnx.to_flat_state(nnx.state(model, nnx.Param))
  for path, variable in state:
    value = np.asarray(variable[...])
    if path[-1] == 'kernel':
      assert np.sum(value == 0) == round(0.7 * value.size), path
  np.testing.assert_array_equal(model.tokens.embedding[...], embeddings)
  assert train.kernel_sparsity(model) == pytest.approx(0.7, abs=2e-3)


def test_the_train_step_passes_the_accuracy_of_the_model_pruned_to_the_target():
  """What pcs.target_alpha_controller reads, against kernels pruned by hand (each to 70%,
  smallest |w| first) and the pruned model's next-byte accuracy on the same batch."""
  model = _tiny_model(seed=5)
  inputs = _tokens(batch=4, length=8, seed=5)
  # The targets are the dense model's own predictions, which it then gets all right.
  batch = {'input': inputs, 'target': jnp.argmax(model(inputs), -1)}
  optimizer = nnx.Optimizer(model, helpers.recording_transform('accuracy', 'pruned_accuracy'),
                            wrt=nnx.Param)
  train.train_step(model, optimizer, batch, pruned_to=(0.7, 'layerwise'))
  seen = {k: float(v[...]) for k, v in optimizer.opt_state.items()}

  hand = nnx.clone(model)
  for path, variable in nnx.to_flat_state(nnx.state(hand, nnx.Param)):
    if path[-1] == 'kernel':
      value = np.array(variable[...])
      value.ravel()[np.argsort(np.abs(value).ravel())[:round(0.7 * value.size)]] = 0.0
      variable[...] = value

  def accuracy(m):
    return float(np.mean(np.argmax(m(batch['input']), -1) == np.asarray(batch['target'])))
  assert seen['pruned_accuracy'] == pytest.approx(accuracy(hand))
  assert accuracy(hand) < 0.9  # the prune is visible
  assert seen['accuracy'] == 1.0


# The binary, the study and the runner.

def test_the_binary_trains_prunes_fine_tunes_and_samples(data_dir, tmp_path):
  config = _tiny_config(data_dir, method='pilot', finetune_epochs=1)
  results = train.train_and_evaluate(config, str(tmp_path / 'pilot'))
  assert results['method'] == 'pilot'
  assert results['achieved_sparsity'] == pytest.approx(0.9, abs=2e-3)
  loss = results['validation_loss']
  assert results['validation_bits_per_byte'] == pytest.approx(loss / math.log(2))
  assert results['validation_perplexity'] == pytest.approx(math.exp(loss))
  assert results['sample'].startswith('def ') and len(results['sample']) >= 5
  lines = [json.loads(line) for line in (tmp_path / 'pilot' / 'metrics.jsonl').open()]
  assert [(row['phase'], row['epoch']) for row in lines] == [
      ('train', 1), ('train', 2), ('finetune', 1)]
  assert lines[0]['alpha'] > 0  # pcs.stats of the pilot transform
  assert lines[-1]['sparsity'] == pytest.approx(0.9, abs=2e-3)  # zeros stayed zero
  # A finished workdir is not trained again; the weights read back are the final ones.
  assert train.train_and_evaluate(config, str(tmp_path / 'pilot')) == results
  model = train.load_model(config, str(tmp_path / 'pilot'))
  assert train.kernel_sparsity(model) == results['achieved_sparsity']


@pytest.mark.parametrize('method,schedule,overrides', [
    ('dense', 'imp', {'imp.cycles': 2, 'imp.rewind': 'weights'}),
    ('l1', 'gmp', {'optimizer': 'sgd', 'learning_rate': 0.05}),
    # The train step feeds pcs.target_alpha_controller the pruned model's accuracy.
    ('pilot', 'one_shot', {'pilot.alpha_control': 'target', 'pilot.delta': 1.3}),
])
def test_the_binary_runs_other_methods_and_schedules(data_dir, tmp_path, method, schedule,
                                                     overrides):
  config = _tiny_config(data_dir, method=method, schedule=schedule, sparsity=0.8,
                        num_epochs=1, **overrides)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['achieved_sparsity'] == pytest.approx(0.8, abs=2e-3)
  assert math.isfinite(results['validation_loss'])


def test_a_bad_config_names_the_key():
  with pytest.raises(ValueError, match=r'config\.optimizer'):
    train.validate(_tiny_config('unused', optimizer='adam'))
  with pytest.raises(ValueError, match=r'divisible by config\.num_heads'):
    train.validate(_tiny_config('unused', num_heads=3))


def test_the_adamw_inner_decays_decoupled():
  config = default.get_config()
  tx = train.optimizers.inner_optimizer(config, 0.1)
  params = {'w': jnp.array([2.0])}
  updates, _ = tx.update({'w': jnp.array([0.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.1 * config.weight_decay * 2.0, rtol=1e-6)


def test_sparsify_trained_compares_four_ways_from_one_dense_model(data_dir, tmp_path):
  config = _tiny_config(data_dir, num_epochs=1)
  record = sparsify_trained.study(config, str(tmp_path), sparsities=(0.5,), epochs=1,
                                  calibration_windows=8)
  assert [row['method'] for row in record['runs']] == list(sparsify_trained.METHODS)
  for row in record['runs']:
    assert row['achieved_sparsity'] == pytest.approx(0.5, abs=2e-3), row['method']
    assert math.isfinite(row['loss'])
  saved = json.loads((tmp_path / 'sparsify_trained.json').read_text())
  assert saved['runs'] == record['runs'] and 'loss' in saved['dense']


def test_the_study_keeps_one_record_per_seed_where_qualitys_table_reads_it(data_dir, tmp_path):
  from experiments.quality import charlm_study  # pylint: disable=g-import-not-at-top
  config = _tiny_config(data_dir, seed=3)
  path = tmp_path / 'quality' / charlm_study.RECORD
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps({'seed': 7, 'runs': []}) + '\n'
                  + json.dumps({'seed': 3, 'runs': ['stale']}) + '\n')
  record = {'dense_workdir': '/here', 'runs': [{'method': 'gmp', 'bits_per_byte': 2.0}]}
  sparsify_trained.keep_record(str(path), record, config)
  # Seed 7's line stays, seed 3's is replaced, sorted by seed; this machine's path is left out.
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  assert [line['seed'] for line in lines] == [3, 7]
  assert lines[0]['runs'] == record['runs'] and 'dense_workdir' not in lines[0]
  assert lines[0]['config']['seed'] == 3
  assert charlm_study.load(str(tmp_path / 'quality')) == lines


def test_the_quality_runner_tunes_then_runs_five_seeds_of_the_pick():
  base = 'b'
  recorded = {}
  rows = list(quality.plan(recorded, quality.STAGES, ['pilot+gmp'], base))
  assert {row['stage'] for row in rows} == {'tune'} and len(rows) == 16  # 4 lr x 4 alpha
  for i, row in enumerate(rows):  # the fourth tuning run is the best; the first diverged
    results = {'error': 'diverged'} if i == 0 else {'validation_loss': 2.0 - (i == 3)}
    recorded[row['id']] = {**row, 'results': results}
  finals = list(quality.plan(recorded, quality.STAGES, ['pilot+gmp'], base))
  assert len(finals) == 15 and {row['stage'] for row in finals} == {'final'}
  best = rows[3]['overrides']
  for row in finals:
    assert row['overrides']['learning_rate'] == best['learning_rate']
    assert row['overrides']['pilot.alpha'] == best['pilot.alpha']
    assert row['overrides']['eval_split'] == 'test'
  assert {(r['overrides']['sparsity'], r['overrides']['seed']) for r in finals} == {
      (s, seed) for s in quality.SPARSITIES for seed in quality.SEEDS}
  other = next(quality.plan(recorded, quality.STAGES, ['pilot+gmp'], 'another base'))
  assert other['id'] not in recorded  # runs of another base config are not mixed in


def test_the_quality_table_of_the_sparsify_trained_study():
  from experiments.quality import charlm_study as study_table  # pylint: disable=g-import-not-at-top
  def record(seed, gmp, pilot):
    runs = [{'method': m, 'sparsity': 0.9, 'bits_per_byte': v}
            for m, v in (('magnitude', 7.0), ('wanda', 6.0), ('gmp', gmp), ('pilot+gmp', pilot))]
    return {'seed': seed, 'eval_split': 'validation', 'dense': {'bits_per_byte': 2.0},
            'epochs': 3, 'learning_rate': 1e-3, 'pilot_alpha': 1e-3, 'calibration_windows': 8,
            'runs': runs}
  text = study_table.markdown([record(0, 4.0, 3.0), record(1, 5.0, 5.5)])
  assert 'over seeds 0, 1; dense model: 2.000 ± 0.000' in text
  assert '| gmp | 4.500 ± 0.707 |' in text  # sd of (4, 5): sqrt(0.5)
  assert '| pilot+gmp | 4.250 ± 1.768 |' in text  # sd of (3, 5.5): 2.5 / sqrt(2)
  assert '| pilot+gmp − gmp, paired | -0.250 (worse on 1 of 2) |' in text  # -1 and +0.5


def _tuned(recorded, recipe, base, scores):
  """Records the recipe's tuning runs with validation bits per byte ``scores`` (None:
  diverged), in the order of ``tuning_rows``."""
  for row, bits in zip(quality.tuning_rows(recipe, base), scores):
    recorded[row['id']] = {**row, 'results': {'error': 'diverged'} if bits is None else {
        'validation_loss': bits * math.log(2), 'validation_bits_per_byte': bits}}


def _finished(recorded, rows, bits_of):
  """Records final ``rows`` with test bits per byte ``bits_of(sparsity, seed)`` (None:
  diverged); perplexity exp(loss) = 2 ** bits."""
  for row in rows:
    value = bits_of(row['overrides']['sparsity'], row['overrides']['seed'])
    recorded[row['id']] = {**row, 'results': {'error': 'diverged'} if value is None else {
        'test_bits_per_byte': value, 'test_perplexity': 2 ** value}}


def test_the_quality_protocols_section_marks_the_pick_and_scores_each_cell_by_hand(monkeypatch):
  base, recorded = 'b', {}
  # dense+gmp's rows: lr 1e-3 x (0.5, 0.7), 3e-3 x ..., so (1e-3, 0.7) is the best.
  _tuned(recorded, 'dense+gmp', base, [3.0, 2.5, 2.8, 2.9, None, 3.1, 2.6, 2.7])
  finals = list(quality.plan(recorded, ['final'], ['dense+gmp', 'pilot'], base))
  assert {r['recipe'] for r in finals} == {'dense+gmp'}  # pilot is not tuned yet
  at_90 = {0: 2.0, 1: 2.1, 2: 2.2, 3: 2.5, 4: None}  # seed 3 over the median, 4 diverged
  _finished(recorded, finals, lambda s, seed: {0.9: at_90[seed], 0.95: 2.0 + seed / 10,
                                                 0.98: 3.0 + seed / 10}[s])
  other = {**finals[0], 'id': 'x', 'overrides': {**finals[0]['overrides'], 'base_config': 'c'}}
  recorded['x'] = {**other, 'results': {'test_bits_per_byte': 9.0, 'test_perplexity': 1.0}}
  text = quality.markdown(recorded, base)
  assert '| dense+gmp | 0.001 | gmp.end_fraction 0.7 | **2.500** (picked) |' in text
  assert '| dense+gmp | 0.003 | gmp.end_fraction 0.5 | 2.800 |' in text
  assert '| dense+gmp | 0.01 | gmp.end_fraction 0.5 | diverged |' in text
  # 90%: finished 2.0, 2.1, 2.2, 2.5: median 2.15, perplexity the median of the 2^b,
  # (2^2.1 + 2^2.2) / 2 = 4.441; the worst is the diverged seed 4; failed: seeds 3 and 4.
  # 95%: 2.0 .. 2.4, none failed (2.4 is 9.1% over the median 2.2), worst seed 4.
  # 98%: 3.0 .. 3.4, median 3.2.
  assert (f'| dense+gmp | 2.150 (4.44) / diverged (s4) / 2 | '
          f'2.200 ({2 ** 2.2:.2f}) / 2.400 (s4) / 0 | 3.200 ({2 ** 3.2:.2f}) / 3.400 (s4) / 0 |'
          ) in text
  assert '| pilot |  |  |  |' in text and '9.000' not in text  # no run; another base left out

  # pilot, tuned and finished on some seeds: its cells say how many, and the paired median
  # against dense+gmp over the seeds both finished (90%: 1.9 - 2.0, 2.0 - 2.1, 2.3 - 2.5).
  _tuned(recorded, 'pilot', base, [4.0] + [5.0] * 11)
  pilot = list(quality.plan(recorded, ['final'], ['pilot'], base))
  _finished(recorded, [r for r in pilot if r['overrides']['seed'] in (0, 1, 3, 4)
                       and r['overrides']['sparsity'] == 0.9],
            lambda s, seed: {0: 1.9, 1: 2.0, 3: 2.3, 4: 2.4}[seed])
  text = quality.markdown(recorded, base)
  # 90%: 1.9, 2.0, 2.3, 2.4: median 2.15, perplexity (2^2.0 + 2^2.3) / 2 = 4.462; 2.4 is
  # 11.6% over the median, so seed 4 failed.
  assert '| pilot | 2.150 (4.46) / 2.400 (s4) / 1 (n=4) |' in text
  assert '| pilot − dense+gmp, paired median | -0.100 (better on 3 of 3) |' in text

  # A wider grid whose new run is the best moves the pick: the old pick's finals leave
  # the tables (and are planned again at the new pick) instead of mixing two settings.
  monkeypatch.setattr(quality, 'LEARNING_RATES', quality.LEARNING_RATES + (0.1,))
  _tuned(recorded, 'dense+gmp', base, [3.0, 2.5, 2.8, 2.9, None, 3.1, 2.6, 2.7, 1.0, 1.5])
  text = quality.markdown(recorded, base)
  assert '| dense+gmp | 0.1 | gmp.end_fraction 0.5 | **1.000** (picked) |' in text
  assert '| dense+gmp |  |  |  |' in text  # no final run at the new pick yet
  assert len(list(quality.plan(recorded, ['final'], ['dense+gmp'], base))) == 15
