"""Process-wide JAX settings for our entry points: the persistent compilation cache.

XLA's CPU compile of the full AMR step takes minutes; caching it makes reruns and resumes start quickly.
"""
import os
import pathlib


def enable_compilation_cache(cache_dir: str | None = None) -> str:
  """Turns on JAX's persistent cache (AMR_JAX_CACHE or ~/.cache/amr_jax/xla); returns the directory."""
  import jax  # pylint: disable=import-outside-toplevel
  cache_dir = cache_dir or os.environ.get('AMR_JAX_CACHE') or str(pathlib.Path.home() / '.cache' / 'amr_jax' / 'xla')
  pathlib.Path(cache_dir).mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return cache_dir
