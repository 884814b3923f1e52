"""Multi-run workflows over the trainer and predictor: Boost mining, the learning checks, the demo chains.

The layer above `amr_jax.train`; launch scripts are thin mains over these."""
