"""Layer 3: the images and splits of a run: CIFAR-style arrays, image files and lists, the long-
tailed splits, image banks, and load_run_data."""
