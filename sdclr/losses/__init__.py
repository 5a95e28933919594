"""Layer 3: the objectives as functions of features: NT-Xent and its variants, MoCo's InfoNCE over
a queue, BYOL's regression."""
