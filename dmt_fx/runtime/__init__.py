"""The runtime: `distribute` and the per-rank lowering, the host tower exchange, process
groups, checkpoints and resume, the traffic meter. Imports `dmt_fx.ir`, torch and torchrec;
never a pass or the compiler."""
