"""The call profile reads HLO and profiler events as worked out by hand, and splits a real
sparse model's call into its products and XLA's ops."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcs
from benchmarks import call_profile

HLO = '''HloModule jit_run, is_scheduled=true

%fused_computation (param_0.2: f32[1,8,8,4], param_1.4: f32[1,4,8,8]) -> f32[1,8,8,4] {
  %param_1.4 = f32[1,4,8,8]{3,2,1,0} parameter(1)
  %transpose.1 = f32[1,8,8,4]{2,1,3,0} transpose(%param_1.4), dimensions={0,2,3,1}
  %param_0.2 = f32[1,8,8,4]{3,2,1,0} parameter(0)
  %add.0 = f32[1,8,8,4]{3,2,1,0} add(%transpose.1, %param_0.2), metadata={op_name="add"}
  %constant.5 = f32[] constant(0)
  %max.5 = f32[1,8,8,4]{3,2,1,0} broadcast(%constant.5), dimensions={}
  ROOT %max.4 = f32[1,8,8,4]{3,2,1,0} maximum(%add.0, %max.5)
}

%region_0.1 (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.9 = f32[] add(%a, %b)
}

ENTRY %main.8 (x: f32[1,4,10,10], v: f32[82]) -> (f32[1,8,8,4], f32[4]) {
  %x = f32[1,4,10,10]{3,2,1,0} parameter(0)
  %v = f32[82]{0} parameter(1)
  %constant.0 = f32[] constant(0)
  %ffi_call.2 = f32[1,4,8,8]{3,2,1,0} custom-call(%x, %v), custom_call_target="pcs_csr_conv"
  %other_call = f32[1,4,8,8]{3,2,1,0} custom-call(%x), custom_call_target="lapack_sgetrf"
  %bitcast.3 = f32[1,8,8,4]{3,2,1,0} bitcast(%x)
  %fusion.7 = f32[1,8,8,4]{3,2,1,0} fusion(%bitcast.3, %ffi_call.2), calls=%fused_computation
  %reduce.1 = f32[4]{0} reduce(%fusion.7, %constant.0), dimensions={0,1,2}, to_apply=%region_0.1
  ROOT %tuple.1 = (f32[1,8,8,4]{3,2,1,0}, f32[4]{0}) tuple(%fusion.7, %reduce.1)
}
'''


def test_instructions_reads_what_each_entry_instruction_runs():
  # Worked out from HLO above: the pcs custom call is a product, another target is not;
  # the fusion runs its body's ops but its parameters and constant; the reduce's add lies
  # in its region, not in an entry fusion; parameters, bitcasts and the tuple cost nothing.
  assert call_profile.instructions(HLO) == {
      'ffi_call.2': ('sparse product',),
      'other_call': ('custom-call',),
      'fusion.7': ('add', 'broadcast', 'maximum', 'transpose'),
      'reduce.1': ('reduce',),
  }


def _event(name, ts, dur):
  return {'ph': 'X', 'name': name, 'ts': ts, 'dur': dur, 'pid': 1, 'tid': 2}


def test_split_sums_each_call_and_takes_medians_over_calls():
  ops = {'ffi_call.2': ('sparse product',), 'fusion.7': ('add', 'maximum'),
         'reduce.1': ('reduce',)}
  call = call_profile.CALL
  events = [
      # call 1, waited for 25: products 10, XLA 3 + 1, ops from 101 to 117 (2 between)
      _event(call, 98, 25), _event('ffi_call.2', 101, 10), _event('fusion.7', 112, 3),
      _event('reduce.1', 116, 1),
      # call 2, waited for 50: products 30, XLA 5 + 2, ops from 201 to 240 (2 between)
      _event(call, 195, 50), _event('ffi_call.2', 201, 30), _event('fusion.7', 232, 5),
      _event('reduce.1', 238, 2),
      # call 3, waited for 40: products 12, XLA 4 + 2, ops from 300 to 330 (12 between)
      _event(call, 300, 40), _event('ffi_call.2', 300, 12), _event('fusion.7', 313, 4),
      _event('reduce.1', 328, 2),
      # outside every call, an instant event, another name, a call with no op: not counted
      _event('fusion.7', 500, 99), {'ph': 'i', 'name': 'fusion.7', 'ts': 301},
      _event('PjitFunction(run)', 100, 50), _event(call, 600, 10)]
  got = call_profile.split(events, ops)
  assert (got['calls'], got['wall_us'], got['executable_us']) == (3, 40, 30)
  # Between ops, per call: 2, 2 and 12 us.
  assert (got['products_us'], got['xla_us'], got['between_us']) == (12, 6, 2)
  assert got['ops'] == [('fusion.7', ['add', 'maximum'], 4), ('reduce.1', ['reduce'], 2)]
  with pytest.raises(ValueError, match=r'no .* call with an op'):
    call_profile.split([_event('fusion.7', 0, 1)], ops)


class _Residual(nn.Module):
  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.Conv(8, (3, 3))(x))
    return nn.relu(nn.Conv(4, (3, 3))(y) + x)


def test_profile_of_a_sparse_residual_model_finds_its_products_and_its_add():
  model, x = _Residual(), jnp.asarray(np.random.default_rng(0).normal(size=(1, 12, 12, 4)),
                                      jnp.float32)
  variables = model.init(jax.random.key(0), x)
  params, _ = pcs.prune(variables['params'], 0.8)
  exported = pcs.export(params, model=model, inputs=x, format='csr')
  got = call_profile.profile(exported.bind(model, {'params': params}), x, calls=5, warmup=2)
  assert got['calls'] == 5
  # Both convolutions are compiled products, and XLA runs ops between and after them: the
  # residual add is in one of those (the model adds x to the second product).
  assert got['products_us'] > 0 and got['xla_us'] > 0
  assert got['products_us'] + got['xla_us'] <= got['executable_us'] <= got['wall_us']
  assert any('add' in what for _, what, _ in got['ops'])
  assert all('sparse product' not in what for _, what, _ in got['ops'])
