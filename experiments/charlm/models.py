"""A decoder-only character language model in Flax NNX, written as Flax's NNX examples
write modules (a small GPT: Radford et al., 2019).

Bytes are embedded with learned token and position embeddings (``nnx.Embed``), pass
``depth`` pre-norm blocks

    h = x + Attention(LayerNorm(x)),    y = h + W_down relu(W_up LayerNorm(h)),

with causal ``nnx.MultiHeadAttention``, and a final ``LayerNorm`` and a head give the
logits of the next byte: ``nnx.Linear`` (untied), or the token table's transpose
(``tie_embeddings``). ``decode=True`` runs one position per call through the attention
cache (:func:`generate`), after ``init_cache``.
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

VOCAB = 256  # bytes


class Block(nnx.Module):
  """Pre-norm causal self-attention and a ReLU MLP, each with a residual connection."""

  def __init__(self, width: int, num_heads: int, mlp_width: int, *, rngs: nnx.Rngs):
    self.attention_norm = nnx.LayerNorm(width, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads, width, decode=False, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
    self.up = nnx.Linear(width, mlp_width, rngs=rngs)
    self.down = nnx.Linear(mlp_width, width, rngs=rngs)

  def __call__(self, x, decode: bool = False):
    mask = None if decode else nnx.make_causal_mask(x[..., 0])  # the cache masks when decoding
    x = x + self.attention(self.attention_norm(x), mask=mask, decode=decode)
    return x + self.down(nnx.relu(self.up(self.mlp_norm(x))))

  def layer_inputs(self, x) -> Tuple[jax.Array, Dict[Tuple[str, ...], jax.Array]]:
    """The block's output, and the input of each of its kernels keyed by the kernel's
    path in the block: the normed hidden state for query/key/value, the per-head
    attention output (..., heads, head_dim) for ``out``, the normed state for ``up`` and
    relu(up) for ``down``. Recomputed from the block's own layers (no dropout, no
    qk-norm), so ``attention.out(inputs[('attention', 'out', 'kernel')])`` is the
    attention's output."""
    attention = self.attention
    h = self.attention_norm(x)
    heads = attention.attention_fn(attention.query(h), attention.key(h), attention.value(h),
                                   mask=nnx.make_causal_mask(x[..., 0]))
    x = x + attention.out(heads)
    m = self.mlp_norm(x)
    hidden = nnx.relu(self.up(m))
    inputs = {**{('attention', name, 'kernel'): h for name in ('query', 'key', 'value')},
              ('attention', 'out', 'kernel'): heads, ('up', 'kernel'): m,
              ('down', 'kernel'): hidden}
    return x + self.down(hidden), inputs


class CharLM(nnx.Module):
  """Next-byte prediction over a context of ``context`` bytes."""

  def __init__(self, *, context: int, width: int, depth: int, num_heads: int, mlp_width: int,
               tie_embeddings: bool = False, rngs: nnx.Rngs):
    self.context = context
    self.tokens = nnx.Embed(VOCAB, width, rngs=rngs)
    self.positions = nnx.Embed(context, width, rngs=rngs)
    self.blocks = nnx.List([Block(width, num_heads, mlp_width, rngs=rngs) for _ in range(depth)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.head = nnx.data(None if tie_embeddings else nnx.Linear(width, VOCAB, rngs=rngs))

  def _embed(self, tokens, positions):
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    return self.tokens(tokens) + self.positions(positions)

  def _logits(self, x):
    x = self.norm(x)
    return self.tokens.attend(x) if self.head is None else self.head(x)

  def __call__(self, tokens, positions=None, decode: bool = False):
    """Logits (batch, length, 256) of the byte after each position of ``tokens`` (batch,
    length); ``positions`` defaults to 0..length-1 (with ``decode``, pass the cache's)."""
    x = self._embed(tokens, positions)
    for block in self.blocks:
      x = block(x, decode=decode)
    return self._logits(x)

  def layer_inputs(self, tokens) -> Dict[Tuple, jax.Array]:
    """``{kernel path: its input}`` for every kernel of the model (the paths of
    ``nnx.state(model, nnx.Param)``), from a forward pass on ``tokens``."""
    x, inputs = self._embed(tokens, None), {}
    for i, block in enumerate(self.blocks):
      x, block_inputs = block.layer_inputs(x)
      inputs.update({('blocks', i) + path: value for path, value in block_inputs.items()})
    if self.head is not None:
      inputs[('head', 'kernel')] = self.norm(x)
    return inputs

  def init_cache(self, batch_size: int) -> None:
    """Empties every attention cache for decoding ``batch_size`` sequences of up to
    ``context`` bytes."""
    for block in self.blocks:
      width = block.attention.in_features
      block.attention.init_cache((batch_size, self.context, width))


def create_model(config, seed: int) -> CharLM:
  """The model ``config`` describes, initialized from ``seed``."""
  return CharLM(context=config.context, width=config.width, depth=config.depth,
                num_heads=config.num_heads, mlp_width=config.mlp_width,
                tie_embeddings=config.tie_embeddings, rngs=nnx.Rngs(seed))


def generate(model: CharLM, prompt: bytes, num_bytes: int, temperature: float = 0.0,
             seed: int = 0) -> bytes:
  """``num_bytes`` bytes continuing ``prompt``, one cached decoding step each: greedy at
  ``temperature`` 0, else sampled from softmax(logits / temperature). The model is
  copied, so its caches stay out of ``model``.

  Raises:
    ValueError: if the prompt is empty or prompt and continuation exceed the context.
  """
  if not prompt or len(prompt) + num_bytes > model.context:
    raise ValueError(f'generate: the prompt ({len(prompt)} bytes) must be non-empty and, with '
                     f'num_bytes ({num_bytes}), fit the context ({model.context}).')
  model = nnx.clone(model)
  model.init_cache(1)
  step = nnx.jit(lambda m, token, position: m(token, position, decode=True)[0, -1])
  key, out, logits = jax.random.key(seed), [], None
  for position, byte in enumerate(prompt):
    logits = step(model, jnp.asarray([[byte]]), jnp.asarray([[position]]))
  for position in range(len(prompt), len(prompt) + num_bytes):
    if temperature > 0:
      key, sample = jax.random.split(key)
      byte = int(jax.random.categorical(sample, logits / temperature))
    else:
      byte = int(jnp.argmax(logits))
    out.append(byte)
    if position < len(prompt) + num_bytes - 1:
      logits = step(model, jnp.asarray([[byte]]), jnp.asarray([[position]]))
  return bytes(out)
