"""Ranks that disagree: one rank's bad batch stops every rank by name; different models are refused.

* One bad rank (dmt_fx/runtime/rank_status.py): `dmt-fx run` on 2x2 where rank 2's batch at
  step 1 is bad (an id equal to its table's size; slow: a negative length, a dense input one
  feature short, an id that would wrap into the table as an int32;
  `tests/harness/targets/dist_bad_batch.py`). Rank 2 raises InputValidationError naming its
  rank, the feature, the value and the table size; every other rank exits within 60 s of
  the fault with ONE line naming rank 2 and no gloo timeout; the CLI exits 2 and its last
  line names rank 2 and why. Each rank's exit is timed from its pid (the workers' pid files).
  A batch one sample short on rank 2 (its own checks pass): every rank raises
  BatchSizeMismatchError naming its batch and the range, where gloo's all-to-all aborted.
* Different models (dmt_fx/runtime/fingerprint.py), one 2x2 world (torch.multiprocessing):
  ranks that built the DLRM with different seeds are refused on every rank, naming the 7
  tables; ranks whose partitioner saw different example batches are refused (different
  plans); `weights_from_rank0=True` trains equal (1e-5) to single-process training of rank
  0's model; a meta-device model compares nothing and says nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.harness.launch import run_world

pytestmark = pytest.mark.distributed  # every test here starts processes

ROOT = Path(__file__).resolve().parents[1]
BAD_RANK, BAD_STEP, EXIT_WITHIN_S = 2, 1, 60
EXPECTED = {  # kind -> words rank 2's error must hold (feature, value, table size or width)
    "id": ["feature 'user_id' id 20000", "ids in [0, 20000)"],
    "wrapping_id": ["feature 'user_id' id 4294967296", "ids in [0, 20000)"],  # 2**32: 0 as an int32
    "length": ["feature 'user_id' length -1", "non-negative lengths"],
    "dense": ["dense input 'dense_features' of shape [32, 12]", "[batch, 13]"],
}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _run_bad_job(tmp_path: Path, kind: str) -> tuple[int, str, dict[int, float], str]:
    """`dmt-fx run` with rank 2's batch spoiled; (exit code, stderr, rank -> s from fault to exit, logs)."""
    out, stamp = tmp_path / "run", tmp_path / "fault_time"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DMT_FX_TIMEOUT_S": "120",
           "DMT_TEST_BAD_BATCH": f"rank={BAD_RANK},step={BAD_STEP},kind={kind}", "DMT_TEST_BAD_BATCH_STAMP": str(stamp)}
    command = [sys.executable, "-m", "dmt_fx.cli.main", "run", "tests/harness/targets/dist_bad_batch.py:build", "--topology", "2x2",
               "--steps", "3", "--baseline", "none", "--optimizer", "sgd", "--out", str(out), "--format", "json"]
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pids, gone = {}, {}
    deadline = time.monotonic() + 600
    while job.poll() is None and time.monotonic() < deadline:
        for path in (out / "dmt").glob("pid_rank*"):
            with contextlib.suppress(ValueError, OSError):
                pids.setdefault(int(path.name[len("pid_rank"):]), int(path.read_text()))
        for rank, pid in pids.items():
            if rank not in gone and not _alive(pid):
                gone[rank] = time.time()
        time.sleep(0.1)
    if job.poll() is None:
        job.kill()
    stderr = job.communicate()[1]
    fault = float(stamp.read_text()) if stamp.exists() else float("nan")
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((out / "dmt").glob("agent*.log")))
    return job.returncode, stderr, {r: t - fault for r, t in sorted(gone.items())}, logs


def _check_bad_job(tmp_path: Path, kind: str) -> None:
    code, stderr, exits, logs = _run_bad_job(tmp_path, kind)
    print(f"{kind}: exit code {code}, seconds from fault to each rank's exit {exits}")
    last = stderr.strip().splitlines()[-1]
    print(f"{kind}: last line {last}")
    assert code == 2, stderr[-3000:]
    assert last.startswith("dmt-fx: error:") and f"rank {BAD_RANK} (host 1, local rank 0) refused its batch" in last
    assert all(words in last for words in EXPECTED[kind]), last
    # rank 2: the InputValidationError, naming its rank, the feature, the value and the size
    own = [line for line in logs.splitlines() if line.startswith(f"dmt-fx worker rank {BAD_RANK}:")]
    assert len(own) == 1 and f"found: rank {BAD_RANK} (host 1, local rank 0): " in own[0], own
    assert EXPECTED[kind][0] in own[0] and EXPECTED[kind][1] in logs
    for rank in set(range(4)) - {BAD_RANK}:  # the others: one line naming rank 2 and why
        said = [line for line in logs.splitlines() if line.startswith(f"dmt-fx worker rank {rank}:")]
        assert len(said) == 1 and f"rank {BAD_RANK} (host 1, local rank 0) refused its batch" in said[0], said
        assert EXPECTED[kind][0] in said[0]
    assert "timed out" not in logs.lower() and "gloo" not in logs.lower(), logs[-3000:]  # no collective timeout
    assert sorted(exits) == [0, 1, 2, 3] and all(0 <= s < EXIT_WITHIN_S for s in exits.values()), exits


def test_a_bad_id_on_one_rank_stops_every_rank_naming_it(tmp_path) -> None:
    _check_bad_job(tmp_path, "id")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["length", "dense", "wrapping_id"])
def test_a_bad_length_dense_width_or_wrapping_id_stops_every_rank(tmp_path, kind) -> None:
    # wrapping_id: refused as the int64 the batch holds, before its ids cross as int32
    _check_bad_job(tmp_path, kind)


def test_a_short_batch_on_one_rank_stops_every_rank_naming_the_sizes(tmp_path) -> None:
    """Rank 2's batch has one sample fewer (consistent in itself, so its own checks pass):
    without the agreement it aborted inside gloo's all-to-all (SIGABRT, no cause named)."""
    code, stderr, exits, logs = _run_bad_job(tmp_path, "short")
    assert code == 2, stderr[-3000:]
    for rank in range(4):
        said = [line for line in logs.splitlines() if line.startswith(f"dmt-fx worker rank {rank}:")]
        batch = 31 if rank == BAD_RANK else 32
        assert len(said) == 1 and f"a local batch of {batch} samples, while the ranks' batches range from 31 to 32" \
            in said[0], said
    assert "drop_last=True" in logs
    assert "timed out" not in logs.lower() and "gloo" not in logs.lower() and "SIGABRT" not in logs, logs[-3000:]
    assert sorted(exits) == [0, 1, 2, 3] and all(0 <= s < EXIT_WITHIN_S for s in exits.values()), exits


def test_ranks_writing_one_log_at_once_keep_their_lines_whole(tmp_path) -> None:
    """Two ranks of a host share their agent's log: each `say` must land as one whole line.
    (`print` writes the text and the newline apart, and two refusing ranks interleaved: the
    cause of a rank's line missing from the log in the bad-batch test above.)"""
    code = ("import pathlib, sys, time; from dmt_fx.jobs.worker import say\n"  # importing torch takes seconds:
            "ready = pathlib.Path(sys.argv[2]); (ready / sys.argv[1]).touch()\n"  # so start together
            "while len(list(ready.iterdir())) < 2: time.sleep(0.01)\n"
            "for i in range(2000): say(f'dmt-fx worker rank {sys.argv[1]}: error: ' + 'x' * 400)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    (tmp_path / "ready").mkdir()
    with open(tmp_path / "agent0.log", "w") as log:
        writers = [subprocess.Popen([sys.executable, "-c", code, str(rank), str(tmp_path / "ready")], cwd=ROOT,
                                    env=env, stderr=log) for rank in (0, 1)]
        assert [w.wait(timeout=120) for w in writers] == [0, 0]
    lines = (tmp_path / "agent0.log").read_text().splitlines()
    assert len(lines) == 4000 and all(re.fullmatch(r"dmt-fx worker rank [01]: error: x{400}", line) for line in lines)


# ---------------------------------------------------------------- different models

WORLD, B, LR, STEPS = 4, 8, 0.1, 3


def _init(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank % 2), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))


def _meta_dlrm():
    from torchrec import EmbeddingBagCollection
    from torchrec.models.dlrm import DLRM

    from dmt_fx.models import zoo

    ebc = EmbeddingBagCollection(tables=zoo._tables(), device=torch.device("meta"))
    return DLRM(embedding_bag_collection=ebc, dense_in_features=zoo.DENSE, dense_arch_layer_sizes=[64, zoo.DIM],
                over_arch_layer_sizes=[64, 32, 1], dense_device=torch.device("meta"))


def _train_rank0_weights(rank: int) -> float:
    """distribute(weights_from_rank0=True) on models of different seeds vs rank 0's model alone."""
    import dmt_fx
    from dmt_fx.jobs.data import clicks, slice_batch
    from dmt_fx.models import zoo

    reference = zoo.default_dlrm(seed=0)[0]
    ref_opt = torch.optim.SGD(reference.parameters(), lr=LR)
    model = zoo.default_dlrm(seed=rank)[0]  # different weights, the same example batch: one plan
    module, optimizer = dmt_fx.distribute(dmt_fx.transform(model, "2x2", example_inputs=zoo.make_inputs(16, 0)),
                                          optimizer_kwargs={"lr": LR}, weights_from_rank0=True)
    worst = 0.0
    for step in range(STEPS):
        inputs = zoo.make_inputs(B * WORLD, step)
        labels = clicks(inputs, step)
        expected = reference(*inputs)
        F.binary_cross_entropy_with_logits(expected, labels).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        out = module(*slice_batch(inputs, rank * B, (rank + 1) * B))
        F.binary_cross_entropy_with_logits(out, labels[rank * B:(rank + 1) * B]).backward()
        optimizer.step()
        optimizer.zero_grad()
        worst = max(worst, (out.detach() - expected.detach()[rank * B:(rank + 1) * B]).abs().max().item())
    return worst


def _models_worker(rank: int, port: int, out_dir: str) -> None:
    _init(rank, port)
    import dmt_fx
    from dmt_fx.models import zoo
    from dmt_fx.runtime.fingerprint import ModelMismatchError, check_same_model
    from dmt_fx.runtime.rank_status import status_group

    result = {}
    for case, example in (("refused", zoo.make_inputs(16, 0)), ("plan_refused", None)):
        model, own = zoo.default_dlrm(seed=rank)  # seeded per rank: four different models
        try:  # plan_refused: each rank's own example batch, from which the partitioner picks towers
            gm = dmt_fx.transform(model, "2x2", example_inputs=example or own, verify=False)  # verified elsewhere
            dmt_fx.distribute(gm, weights_from_rank0=case == "plan_refused")
            result[case] = None
        except ModelMismatchError as error:
            result[case] = str(error)
    meta, said = dmt_fx.transform(_meta_dlrm(), "2x2"), io.StringIO()
    with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_same_model(meta)  # meta: nothing to compare, nothing said
    result["meta_said"] = said.getvalue() + "".join(str(w.message) for w in caught)
    same, start = zoo.default_dlrm(seed=0)[0], time.perf_counter()
    for _ in range(20):
        check_same_model(same)
    result["check_s"] = (time.perf_counter() - start) / 20
    group, flag = status_group(timedelta(seconds=60)), torch.zeros(1, dtype=torch.int64)
    start = time.perf_counter()
    for _ in range(50):  # what the per-batch agreement adds to a step: one all-reduce of one int64
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=group)
    result["status_s"] = (time.perf_counter() - start) / 50
    result["max_diff"] = _train_rank0_weights(rank)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def test_different_models_are_refused_and_rank0_weights_train_rank0s_model(tmp_path) -> None:
    run_world(_models_worker, tmp_path, nprocs=WORLD, timeout_s=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    print({r: {k: x[k] for k in ("check_s", "status_s", "max_diff")} for r, x in enumerate(ranks)})
    print(ranks[0]["refused"], ranks[0]["plan_refused"], sep="\n")
    for result in ranks:  # every rank refuses, with the same message
        message = result["refused"]
        assert message is not None and message == ranks[0]["refused"]
        assert "7 table(s) differ across ranks" in message and "t_user_id" in message, message
        assert "numpy.random.seed" in message and "weights_from_rank0=True" in message
        assert "different tower plans" in result["plan_refused"] and "example_inputs" in result["plan_refused"]
        assert result["meta_said"] == ""
        assert result["max_diff"] <= 1e-5, result["max_diff"]
