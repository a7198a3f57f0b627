"""TorchRec's BERT4Rec example (its structure: tests/harness/corpus/torchrec_bert4rec.py):
a sequence-only model whose forward() loops over its KeyedJaggedTensor's keys, pads the
EmbeddingCollection's rows with fbgemm's jagged_2d_to_dense, and reads the ids themselves
for the attention mask.

Plain torch.fx tracing cannot follow `for key in kjt.keys()`; the capture traces it again
with the example batch's keys fixed and checks every call's keys (compiler/capture.py).
In one process the DMT model equals the original in eval and train mode (dropout 0.1, the
same RNG draws) and in its gradients; a batch with other keys is refused by name. On a 2x2
gloo world (torchrun, one launch; 4x1 under `slow`) 3 SGD steps of the example's masked-item loss equal
single-process training: every step's logits and the DCP checkpoint (original keys).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import dmt_fx
from dmt_fx import Topology
from dmt_fx.compiler.validation import InputValidationError
from dmt_fx.jobs.launch import launch
from tests.harness import bert4rec_job as job
from tests.harness.cases import job_diffs
from tests.harness.corpus.torchrec_bert4rec import bert4rec, bert4rec_inputs, masked_item_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_dmt_model_is_the_example_model(mode) -> None:
    model, batch = bert4rec(dropout=0.1)
    twin = copy.deepcopy(model)
    gm = dmt_fx.transform(model, "2x2", example_inputs=batch)
    assert gm.meta["dmt_static_keys"] == {"input": ("item",)}
    assert [f.name for f in dmt_fx.dmt_result(gm).sites.features if f.sequence] == ["item"]
    getattr(twin, mode)()
    getattr(gm, mode)()
    torch.manual_seed(7)
    want = twin(*batch)
    masked_item_loss(want, *batch).backward()
    torch.manual_seed(7)
    got = gm(*batch)
    masked_item_loss(got, *batch).backward()
    assert torch.equal(want, got)
    grads = {k: p.grad for k, p in twin.named_parameters()}
    renamed = {k.replace("dmt_towers.tower_0.history__ec", "history.ec"): p.grad for k, p in gm.named_parameters()}
    assert set(grads) == set(renamed)
    assert all(torch.equal(grads[k], renamed[k]) for k in grads)


def test_a_batch_with_other_keys_is_refused_by_name() -> None:
    model, batch = bert4rec()
    gm = dmt_fx.transform(model, "2x2", example_inputs=batch)
    other = KeyedJaggedTensor.from_lengths_sync(keys=["items"], values=torch.tensor([3]),
                                                lengths=torch.tensor([1, 0]))
    with pytest.raises(InputValidationError) as info:
        gm(other)
    assert "['items']" in info.value.found and "['item']" in info.value.expected


@pytest.mark.distributed
@pytest.mark.parametrize("topology", ["2x2", pytest.param("4x1", marks=pytest.mark.slow)])
def test_trains_on_a_world_like_one_process(tmp_path, topology) -> None:
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, env_before or ""])
    try:
        run = launch(Topology.parse(topology), ["--out", str(tmp_path), "--topology", topology], str(tmp_path),
                     module="tests.harness.bert4rec_job", deadline_s=300, grace_s=30)
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before
    assert run.ok, run.log_tail(40)
    model, _ = bert4rec(dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=job.LR)
    expected = []
    for step in range(job.STEPS):
        batch = bert4rec_inputs(job.LOCAL_BATCH * 4, step + 1)
        logits = model(*batch)
        optimizer.zero_grad()
        (masked_item_loss(logits, *batch) / job.positions(batch[0])).backward()
        optimizer.step()
        expected.append(logits.detach().clone())
    fresh, _ = bert4rec(dropout=0.0)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # everything must come from the checkpoint
    outputs, params, _ = job_diffs(expected, str(tmp_path), 4, fresh, str(tmp_path / "ckpt"), model.state_dict())
    print(f"\n  {topology} torchrec bert4rec, {job.STEPS} SGD steps: max |diff| logits {outputs:.3g}, checkpoint {params:.3g}")
    assert outputs <= 1e-5 and params <= 1e-5
