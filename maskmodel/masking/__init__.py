"""Mask policies: pure functions rng -> Mask (1 = hidden)."""
from maskmodel.masking.random import Mask, mask_from_scores, num_kept, random_mask
