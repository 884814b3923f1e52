"""Shared operations and layers used by every method: spans/IoU, NMS, attention, position encodings,
the Linear/LinearLayer family and torch-exact optimiser pieces."""
