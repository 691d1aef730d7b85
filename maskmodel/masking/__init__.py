"""Mask policies: pure functions rng -> Mask (1 = hidden)."""
from maskmodel.masking.block import block_mask, num_hidden_blocks
from maskmodel.masking.multiblock import MultiBlockMasks, multiblock_mask
from maskmodel.masking.random import (Mask, coarse_random_mask, mask_from_scores,
                                      num_kept, num_kept_coarse, random_mask)
