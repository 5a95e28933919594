"""Layer 1: the augmentations as batched tensor ops (no config objects): the contrastive and probe
views and BCL's boosted RandAugment."""
