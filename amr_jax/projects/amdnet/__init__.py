"""AMDNet (TMM 2025, partially relevant video retrieval): model, losses, BertAdam optimiser, parity checker.

Spec: /work/shared/specs/amdnet.md; reference: songpipi/AMDNet at fd8b0b3 (model class `GMMFormer_Net`).
"""
