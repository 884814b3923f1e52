"""Flax linen networks of amr_jax.

`AMR` / `AMRModelConfig` (amr.py) and the shared building blocks (layers.py).
"""
from amr_jax.models.amr import AMR, AMRModelConfig

__all__ = ['AMR', 'AMRModelConfig']
