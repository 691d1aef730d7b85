"""Kernels: one public entry point per op, with an `impl` switch."""
from maskmodel.kernels.attention import attention, attention_reference
