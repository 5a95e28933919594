"""Layer 4: evaluation of a frozen encoder: metrics, features, linear and few-shot probes, kNN,
and the training-time monitors."""
