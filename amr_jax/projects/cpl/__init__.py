"""CPL (Gaussian-based contrastive proposal learning, CVPR 2022): model, losses, optimiser, inference, checker.

The base network of MCMT; every piece (proposal head, Gaussian masks, masked reconstruction, negatives) is separate.
"""
