"""Training: mesh/sharding helpers, train state, stage-1/stage-2 steps, the loop, checkpoints and logs.

Steps are pure `step(state, batch, rng) -> (state, metrics)` jitted over a data-parallel Mesh.
"""
