"""Data-parallel Mesh (Auto axis 'data'), shardings, and host batch -> global jax.Array placement.

Params are replicated; batches are split along 'data'; multi-host via jax.make_array_from_process_local_data.
"""
from __future__ import annotations

import itertools
import os

import jax
import numpy as np
from jax._src import distributed as jax_distributed   # the coordination-service client (no public handle)
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

_BARRIER_IDS = itertools.count()


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """1-D 'data' mesh over all devices, or over the first `num_devices` (single-process runs only)."""
  if num_devices and num_devices != jax.device_count() and jax.process_count() > 1:
    raise ValueError(f'num_devices={num_devices} needs all {jax.device_count()} devices in a multi-process run')
  devices = jax.devices() if not num_devices else jax.devices()[:num_devices]
  return jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def to_global(batch: dict, mesh) -> dict:
  """Assemble this process's numpy slice into global arrays sharded over 'data'."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() from the environment when several processes are configured.

  Reads JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (set by our launcher, or by hand);
  on Cloud TPU and SLURM/Open MPI clusters `jax.distributed.initialize()` needs no arguments.
  """
  if os.environ.get('JAX_NUM_PROCESSES') and int(os.environ['JAX_NUM_PROCESSES']) > 1:
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']))
  elif os.environ.get('AMR_JAX_AUTO_DISTRIBUTED') == '1':
    jax.distributed.initialize()


def barrier(name: str, timeout_s: float = 3600.0) -> None:
  """Every process waits here, through the coordination service (no device collective runs).

  XLA:CPU's Gloo context is set up by the first cross-process collective and gives its peers 30 s to arrive;
  a process still compiling its program (a loaded host) misses that deadline. Waiting here after compiling,
  with a long timeout, lets the first collective start together. A no-op in one process.
  """
  if jax.process_count() == 1:
    return
  client = jax_distributed.global_state.client
  client.wait_at_barrier(f'amr_jax/{name}/{next(_BARRIER_IDS)}', int(timeout_s * 1000))


def compile_together(jitted, *args, name: str) -> None:
  """In a multi-process run: compile `jitted` for `args` ahead, then meet every process at a `barrier`, so the
  program's first collective starts on all of them together. A no-op in one process (the call compiles)."""
  if jax.process_count() == 1:
    return
  jitted.lower(*args).compile()
  barrier(name)
