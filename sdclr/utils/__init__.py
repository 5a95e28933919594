"""Layer 0: helpers with no knowledge of the method: process groups, numerics, progress bars,
schedules, tracking, RNG state, signals, paths."""
