"""MCMT (IJMLC 2025): multi-proposal collaboration and multi-task training on the exact CPL base.

Recipe: /work/shared/specs/mcmt.md (no public code; every guess a config switch)."""
