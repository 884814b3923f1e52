"""amr_jax: JAX/Flax moment retrieval (MR) and highlight detection (HD).

AMR (ICCV 2025) on its TR-DETR base, plus evaluators, data layer and trainer shared by further models.
"""
__version__ = "0.1.0"
