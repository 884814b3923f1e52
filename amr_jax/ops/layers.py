"""Building blocks of the AMR network: linear layers, MLPs, PReLU, sine encodings and attention ops.

Batch-first everywhere. Masks are boolean with True = valid (the PyTorch code's `key_padding_mask` is the inverse).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

# PyTorch's `nn.Linear` default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
xavier_uniform = nn.initializers.xavier_uniform()


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's `nn.Linear`/`nn.Conv1d` default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _mix32(x: Array) -> Array:
  """A bijective 32-bit integer hash (xorshift-multiply, 'lowbias32'); uint32 in, uint32 out."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def keep_mask(rng: Array, rate: float, shape: tuple, impl: str = 'hash') -> Array:
  """Bool dropout mask, True with probability 1 - rate.

  impl 'hash': two random words are drawn from `rng`, then every element is a counter hash of its flat index.
  It is about 30x cheaper than `jax.random.bernoulli` on XLA:CPU (where threefry/rbg bits cost ~30-50 ns
  each and dropout was most of the real-dims AMR step, docs/PERFORMANCE.md) and it is partitioned like any
  elementwise op, so a sharded batch gets the same mask as an unsharded one. impl 'jax': `jax.random.bernoulli`.
  """
  if impl == 'jax':
    return jax.random.bernoulli(rng, 1.0 - rate, shape)
  if impl != 'hash':
    raise ValueError(f'unknown dropout impl {impl!r}; expected "hash" or "jax"')
  size = math.prod(shape)
  if size >= 2**32:
    raise ValueError(f'dropout mask of {size} elements exceeds the 32-bit counter')
  seed = jax.random.bits(rng, (2,), jnp.uint32)
  counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
  bits = _mix32(_mix32(counter ^ _mix32(seed[0])) + seed[1])
  threshold = min(int(round(rate * 2**32)), 2**32 - 1)
  return bits >= jnp.uint32(threshold)


def dropout(x: Array, rate: float, rng: Optional[Array], impl: str = 'hash') -> Array:
  """Inverted dropout (PyTorch semantics): zero with probability `rate`, scale the rest by 1/(1 - rate)."""
  if rng is None or rate <= 0.0:
    return x
  if rate >= 1.0:
    return jnp.zeros_like(x)
  keep = keep_mask(rng, rate, x.shape, impl)
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """`nn.Dropout` with the fast mask of `keep_mask` (same call signature: `deterministic` here or at call)."""
  rate: float
  deterministic: Optional[bool] = None
  impl: str = 'hash'

  @nn.compact
  def __call__(self, x: Array, deterministic: Optional[bool] = None) -> Array:
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if deterministic or self.rate <= 0.0:
      return x
    return dropout(x, self.rate, self.make_rng('dropout'), self.impl)


def xavier_uniform_fused(fan_in: int, fan_out: int) -> Initializer:
  """Xavier-uniform with explicit fans, for one slice of a fused PyTorch matrix (e.g. `in_proj_weight`)."""
  bound = math.sqrt(6.0 / (fan_in + fan_out))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def matmul_precision(dtype: Any) -> Optional[jax.lax.Precision]:
  """HIGHEST for float32 compute (true fp32, no TF32), the backend default for bf16 compute."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


class Linear(nn.Module):
  """`y = x W + b` with PyTorch-default init unless told otherwise; params `kernel` [in, out], `bias` [out].

  Attributes:
    features: output width.
    use_bias: whether the layer has a bias.
    kernel_init: kernel initializer (default: PyTorch `nn.Linear` default).
    bias_init: bias initializer; None = PyTorch default (depends on fan-in).
    dtype: compute dtype (params stay float32).
  """
  features: int
  use_bias: bool = True
  kernel_init: Initializer = torch_default_kernel_init
  bias_init: Optional[Initializer] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (fan_in, self.features), jnp.float32)
    y = jnp.einsum('...i,io->...o', x.astype(self.dtype), kernel.astype(self.dtype),
                   precision=matmul_precision(self.dtype))
    if self.use_bias:
      bias_init = self.bias_init or torch_default_bias_init(fan_in)
      bias = self.param('bias', bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def layer_norm(epsilon: float, name: Optional[str] = None) -> nn.LayerNorm:
  """A float32 `nn.LayerNorm` matching PyTorch numerics (two-pass variance); params `scale`, `bias`."""
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


class PReLU(nn.Module):
  """PyTorch `nn.PReLU()`: one learnable slope `weight` [1], initialised to 0.25."""
  init_slope: float = 0.25

  @nn.compact
  def __call__(self, x: Array) -> Array:
    slope = self.param('weight', nn.initializers.constant(self.init_slope), (1,), jnp.float32)
    slope = slope.astype(x.dtype)
    return jnp.where(x >= 0, x, slope * x)


class MLP(nn.Module):
  """`num_layers` Linear layers (`layers_i`) with ReLU between them (not after the last).

  Attributes:
    hidden_dim: width of the hidden layers.
    output_dim: width of the output.
    num_layers: number of Linear layers.
    kernel_init: kernel initializer of every layer.
    last_bias_init: bias initializer of the last layer (None = PyTorch default).
    dtype: compute dtype.
  """
  hidden_dim: int
  output_dim: int
  num_layers: int
  kernel_init: Initializer = torch_default_kernel_init
  last_bias_init: Optional[Initializer] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = Linear(self.output_dim if last else self.hidden_dim, kernel_init=self.kernel_init,
                 bias_init=self.last_bias_init if last else None, dtype=self.dtype, name=f'layers_{i}')(x)
      if not last:
        x = jax.nn.relu(x)
    return x


class LinearLayer(nn.Module):
  """Moment-DETR `LinearLayer`: LayerNorm(in) -> Dropout -> Linear -> optional ReLU.

  Attributes:
    features: output width.
    dropout: dropout rate applied after the LayerNorm.
    relu: whether a ReLU follows the Linear.
    layer_norm_eps: LayerNorm epsilon.
    dtype: compute dtype.
    dropout_impl: see `Dropout`.
    fold_eval_layernorm: in eval mode, float32, for inputs wider than 4x `features`: `folded_layernorm_linear`.
  """
  features: int
  dropout: float
  relu: bool
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32
  dropout_impl: str = 'hash'
  fold_eval_layernorm: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if (self.fold_eval_layernorm and not train and not self.is_initializing() and self.dtype == jnp.float32
        and x.shape[-1] > 4 * self.features):
      params = self.variables['params']
      x = folded_layernorm_linear(x, params['LayerNorm'], params['linear'], self.layer_norm_eps)
    else:
      x = layer_norm(self.layer_norm_eps, 'LayerNorm')(x)
      x = Dropout(self.dropout, deterministic=not train, impl=self.dropout_impl)(x)
      x = Linear(self.features, dtype=self.dtype, name='linear')(x)
    return jax.nn.relu(x) if self.relu else x


def folded_layernorm_linear(x: Array, norm_params: dict, linear_params: dict, eps: float) -> Array:
  """LayerNorm then Linear without materialising the normalised input (eval mode, float32, wide inputs).

  LN(x) W + b = rstd (x W' - mean s) + (beta W + b), W' = diag(gamma) W, s = 1^T W': the matmul reads the raw
  input, and the [.., in] normalised copy (one write and one read of the widest tensor of the model) is skipped.
  """
  gamma, beta = norm_params['scale'], norm_params['bias']
  kernel, bias = linear_params['kernel'], linear_params['bias']
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)  # two-pass, as PyTorch
  rstd = jax.lax.rsqrt(var + eps)
  folded = gamma[:, None] * kernel  # [in, out]
  y = jnp.einsum('...i,io->...o', x, folded, precision=matmul_precision(jnp.float32))
  return rstd * (y - mean * jnp.sum(folded, axis=0)) + (beta @ kernel + bias)


def sine_position_encoding(valid_mask: Array, num_pos_feats: int, temperature: float = 10000.0,
                           scale: float = 2 * math.pi, eps: float = 1e-6) -> Array:
  """Moment-DETR `PositionEmbeddingSine` (normalize=True) over a 1-D sequence.

  Args:
    valid_mask: [B, L] 1 = valid.
    num_pos_feats: output width.
    temperature: frequency base.
    scale: the normalised position is cumsum/(last+eps)*scale.
    eps: normaliser epsilon.

  Returns:
    [B, L, num_pos_feats], interleaved (sin, cos, sin, cos, ...).
  """
  position = jnp.cumsum(valid_mask.astype(jnp.float32), axis=1)  # [B, L]
  position = position / (position[:, -1:] + eps) * scale
  dim_t = np.arange(num_pos_feats, dtype=np.float32)
  dim_t = (temperature ** (2 * (dim_t // 2) / num_pos_feats)).astype(np.float32)
  pos = position[:, :, None] / dim_t  # [B, L, F]
  return _interleave_sin_cos(pos)


def _interleave_sin_cos(pos: Array) -> Array:
  """[..., F] -> [..., F]: sin of the even features and cos of the odd ones, interleaved."""
  stacked = jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1)  # [..., F/2, 2]
  return stacked.reshape(pos.shape[:-1] + (-1,))


def query_sine_embedding(reference_cxw: Array, hidden_dim: int, temperature: float = 10000.0,
                         scale: float = 2 * math.pi) -> Array:
  """DAB-DETR sine embedding of a (cx, w) reference point: hidden_dim/2 features per coordinate.

  The original hard-codes 128 features (= hidden_dim/2 at hidden 256); this is the generalised form.

  Args:
    reference_cxw: [..., 2] sigmoid-space (center, width).
    hidden_dim: output width d (d/2 for cx, then d/2 for w).
    temperature: frequency base.
    scale: coordinate multiplier before the division.

  Returns:
    [..., hidden_dim].
  """
  feats = hidden_dim // 2
  dim_t = np.arange(feats, dtype=np.float32)
  dim_t = (temperature ** (2 * (dim_t // 2) / feats)).astype(np.float32)
  pos_center = reference_cxw[..., 0] * scale
  pos_width = reference_cxw[..., 1] * scale
  emb_center = _interleave_sin_cos(pos_center[..., None] / dim_t)
  emb_width = _interleave_sin_cos(pos_width[..., None] / dim_t)
  return jnp.concatenate([emb_center, emb_width], axis=-1)


def inverse_sigmoid(x: Array, eps: float = 1e-3) -> Array:
  """log(x / (1-x)) with x clamped to [0, 1] and both terms clamped below at eps."""
  x = jnp.clip(x, 0.0, 1.0)
  return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


def l2_normalize(x: Array, eps: float = 1e-12, axis: int = -1) -> Array:
  """PyTorch `F.normalize(p=2)`: x / max(||x||, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def split_heads(x: Array, num_heads: int) -> Array:
  """[B, L, H*Dh] -> [B, L, H, Dh] (PyTorch's head layout: head h owns features h*Dh:(h+1)*Dh)."""
  return x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))


def merge_heads(x: Array) -> Array:
  """[B, L, H, Dh] -> [B, L, H*Dh]."""
  return x.reshape(x.shape[:-2] + (-1,))


def dot_product_attention(query: Array, key: Array, value: Array, *,
                          key_valid: Optional[Array] = None,
                          attn_masked: Optional[Array] = None,
                          scale: Optional[float] = None,
                          dropout_rate: float = 0.0,
                          dropout_rng: Optional[Array] = None,
                          dropout_impl: str = 'hash',
                          implementation: str = 'exact') -> Array:
  """Multi-head scaled dot-product attention on pre-projected, head-split inputs.

  Same layout as `jax.nn.dot_product_attention`. The value head width may differ from the query/key one (the
  DAB-DETR cross-attention has 2*Dh for q/k and Dh for v).

  Args:
    query: [B, T, H, Dqk].
    key: [B, S, H, Dqk].
    value: [B, S, H, Dv].
    key_valid: [B, S] True = attendable key (False = padding).
    attn_masked: [B, H, T, S] True = additionally masked (PyTorch bool `attn_mask`).
    scale: logit scale; default Dqk**-0.5.
    dropout_rate: dropout on the attention weights (PyTorch semantics: after the softmax).
    dropout_rng: rng for that dropout; None = no dropout.
    dropout_impl: mask generator, see `keep_mask`.
    implementation: 'exact' (einsum + softmax, matches PyTorch to fp32 rounding) or 'jax' (uses
      `jax.nn.dot_product_attention` when there is no dropout and the head widths agree, else 'exact').

  Returns:
    [B, T, H, Dv].
  """
  head_dim = query.shape[-1]
  scale = head_dim ** -0.5 if scale is None else scale
  valid = None
  if key_valid is not None:
    valid = key_valid[:, None, None, :].astype(bool)  # [B, 1, 1, S]
  if attn_masked is not None:
    allowed = jnp.logical_not(attn_masked)
    valid = allowed if valid is None else jnp.logical_and(valid, allowed)
  use_dropout = dropout_rng is not None and dropout_rate > 0.0
  if implementation == 'jax' and not use_dropout and value.shape[-1] == head_dim:
    return jax.nn.dot_product_attention(query, key, value, mask=valid, scale=scale)
  precision = matmul_precision(query.dtype)
  logits = jnp.einsum('bthd,bshd->bhts', query * jnp.asarray(scale, query.dtype), key,
                      precision=precision).astype(jnp.float32)  # [B, H, T, S]
  if valid is not None:
    # A finite fill gives exactly PyTorch's -inf result whenever a row has a valid key, and a uniform row
    # (not NaN) when it has none, e.g. an all-padding filler sample in an eval batch.
    logits = jnp.where(valid, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if use_dropout:
    weights = dropout(weights, dropout_rate, dropout_rng, dropout_impl)
  return jnp.einsum('bhts,bshd->bthd', weights.astype(value.dtype), value, precision=precision)


def multihead_attention(query: Array, key: Array, value: Array, num_heads: int, **options) -> Array:
  """`dot_product_attention` over `num_heads` heads of already-projected [B, T, H*d] inputs.  # [B, T, H*dv]

  options: those of `dot_product_attention` (key_valid, attn_masked, dropout_rate, dropout_rng, ...).
  """
  out = dot_product_attention(split_heads(query, num_heads), split_heads(key, num_heads),
                              split_heads(value, num_heads), **options)
  return merge_heads(out)


class MultiheadAttention(nn.Module):
  """PyTorch `nn.MultiheadAttention` (batch-first here): separate q/k/v in-projections, then `out_proj`.

  The PyTorch `in_proj_weight` [3d, d] is stored split as `q_proj`, `k_proj`, `v_proj` (each kernel [d, d]).

  Attributes:
    embed_dim: model width d.
    num_heads: number of heads.
    dropout: dropout on the attention weights.
    dtype: compute dtype.
    implementation: see `dot_product_attention`.
    dropout_impl: dropout mask generator, see `keep_mask`.
  """
  embed_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  implementation: str = 'exact'
  dropout_impl: str = 'hash'

  @nn.compact
  def __call__(self, query: Array, key: Array, value: Array, *, key_valid: Optional[Array] = None,
               attn_masked: Optional[Array] = None, train: bool = False) -> Array:
    d = self.embed_dim
    in_init = xavier_uniform_fused(d, 3 * d)
    zeros = nn.initializers.zeros_init()
    q = Linear(d, kernel_init=in_init, bias_init=zeros, dtype=self.dtype, name='q_proj')(query)
    k = Linear(d, kernel_init=in_init, bias_init=zeros, dtype=self.dtype, name='k_proj')(key)
    v = Linear(d, kernel_init=in_init, bias_init=zeros, dtype=self.dtype, name='v_proj')(value)
    rng = self.make_rng('dropout') if (train and self.dropout > 0.0) else None
    out = multihead_attention(q, k, v, self.num_heads, key_valid=key_valid, attn_masked=attn_masked,
                              dropout_rate=self.dropout, dropout_rng=rng, dropout_impl=self.dropout_impl,
                              implementation=self.implementation)
    return Linear(d, kernel_init=xavier_uniform, bias_init=zeros, dtype=self.dtype, name='out_proj')(out)


class ProjectionFreeAttention(nn.Module):
  """DAB-DETR's `MultiheadAttention` (amr/attention.py): no in-projection, only `out_proj` (value width -> value width).

  Queries/keys may be wider than the values (cross-attention: q/k 2d, v d); scaling is (q/k head width)**-0.5.

  Attributes:
    value_dim: width of the values and of the output.
    num_heads: number of heads.
    dropout: dropout on the attention weights.
    dtype: compute dtype.
    implementation: see `dot_product_attention`.
    dropout_impl: dropout mask generator, see `keep_mask`.
  """
  value_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  implementation: str = 'exact'
  dropout_impl: str = 'hash'

  @nn.compact
  def __call__(self, query: Array, key: Array, value: Array, *, key_valid: Optional[Array] = None,
               train: bool = False) -> Array:
    rng = self.make_rng('dropout') if (train and self.dropout > 0.0) else None
    out = multihead_attention(query, key, value, self.num_heads, key_valid=key_valid, dropout_rate=self.dropout,
                              dropout_rng=rng, dropout_impl=self.dropout_impl, implementation=self.implementation)
    return Linear(self.value_dim, kernel_init=xavier_uniform, bias_init=nn.initializers.zeros_init(),
                  dtype=self.dtype, name='out_proj')(out)
