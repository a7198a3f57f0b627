"""The test harness: the code tests share, none of it a test itself.

- `equivalence`: the one single-process equivalence checker (original vs transformed:
  outputs, gradients, buffers, bitwise or within a tolerance).
- `training`: the one reference training loop (the original trained in one process on
  the global batches a job sees), and its per-rank variant for mode-dependent models.
- `launch`: the one launcher for worlds (torchrun jobs through `dmt_fx.jobs.launch`, a
  file of cases in one launch, torch.multiprocessing worlds).
- `cases`: a (model, plan) case of a launch checked against `training`.
- `zoo`: the `examples/` models as worker targets, trained in one process.
- `random_models`, `random_styles`, `property`: Hypothesis generators of models and plans.
- `corpus/`: models written by others, as users write them.
- `targets/`: worker TARGET files (`path/to/file.py:factory`) the ranks import.
- `user_job`, `exit_soak`: the user-style job and the exit soak around it.
"""
