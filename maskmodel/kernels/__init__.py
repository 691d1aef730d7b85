"""Kernels: one public entry point per op, with an `impl` switch."""
from maskmodel.kernels.attention import attention, attention_reference
from maskmodel.kernels.matching import token_matching, token_matching_reference
