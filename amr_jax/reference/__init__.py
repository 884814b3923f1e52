"""Bridges to the original PyTorch code: parameter-name mapping and fixture loading.

`torch_names` maps PyTorch `state_dict` names <-> the Flax pytree; `fixture` loads the reference fixtures.
"""
