"""Layer 5: the pretraining loop, its resumable state, the step and BCL's loss memory."""
