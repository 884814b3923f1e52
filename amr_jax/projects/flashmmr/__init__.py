"""FlashMMR with its post-verification head: model, verifier, losses, post-processing, task, checker."""
