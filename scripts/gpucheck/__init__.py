"""The plan of ``scripts/gpu_check.py`` (``make gpu-check``), one module per concern: the sizes
and worst cases (settings), the runner under one budget (check), one module per step, each
with the commands it runs (env, default_run, speed, cuda_tests, accuracy, files), the plan's
table (plan), the Markdown (report) and the carried folder (prepare)."""
