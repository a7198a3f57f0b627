"""Sequence tower modules: `seq_mean` and `seq_attention` reduce each
EmbeddingCollection sequence feature inside its host; the model reads the reduced vector
where its own code reduced the rows (docs/runtime.md, "Sequence tower modules").

In one process: seq_mean at c = 1 (no projection) is the model's own masked mean, so the
rewritten model equals the original (outputs, gradients, a short SGD trajectory);
seq_attention starts as seq_mean (a zero query) and learns; c > 1 sends ceil(d / c) per
feature and expands it back to d for the model; `dmt-fx plan`'s verdicts; the refusals.
On a 2x2 gloo world (one torchrun launch, tests/harness/targets/dist_sequences.py; `slow`): seq_mean c = 1 trains
exactly like the original in one process (every step's outputs and the DCP checkpoint,
1e-5); seq_attention c = 4 trains (its query and projections move) and the traffic meter's
cross-host embedding bytes equal an independent count of fixed-width rows, below the
identity run's jagged rows; bert4rec with seq_attention c = 2 trains (its encoder bypassed)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed.checkpoint as dcp

import dmt_fx
from dmt_fx import Topology
from dmt_fx.cli.report import plan_report
from dmt_fx.models.zoo import default_dlrm
from tests.harness.cases import gathered_outputs as gathered
from tests.harness.cases import job_diffs
from tests.harness.corpus.sequences import bert4rec, plain_sequence, pooled_sequence
from tests.harness.launch import launch_job
from tests.harness.sequence_jobs import TARGET, B, expected_embedding_bytes, train_original
from tests.harness.targets import dist_sequences
from tests.harness.training import LR

STEPS = 4


def _transform(kind: str, c: int = 1, factory=pooled_sequence):
    model, inputs = factory()
    return model, inputs, dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module=kind, compression=c)


def test_seq_mean_c1_is_the_models_own_mean() -> None:
    """Outputs and every parameter's gradient equal the original's; then 3 SGD steps (the
    rewritten model shares the original's parameters: train a twin)."""
    model, inputs, gm = _transform("seq_mean")
    twin, _ = pooled_sequence()
    assert torch.allclose(gm(*inputs), model(*inputs), rtol=0, atol=1e-6)
    gm(*inputs).sum().backward()
    twin(*inputs).sum().backward()
    grads = dict(twin.named_parameters())
    for name, p in gm.state_dict(keep_vars=True).items():
        assert torch.allclose(p.grad, grads[name].grad, rtol=0, atol=1e-6), name
    twin_gm = dmt_fx.transform(twin, "2x2", example_inputs=inputs, tower_module="seq_mean")
    make = dist_sequences.pooled_sequence.make_inputs
    for module in (model, twin_gm):
        module.zero_grad()
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=LR) for m in (model, twin_gm))
    for step in range(3):
        batch = make(8, step)
        for module, opt in ((model, opt_a), (twin_gm, opt_b)):
            opt.zero_grad()
            module(*batch).pow(2).mean().backward()
            opt.step()
        assert torch.allclose(model(*batch), twin_gm(*batch), rtol=0, atol=1e-5)


def test_seq_attention_starts_as_the_mean_and_learns() -> None:
    model, inputs, gm = _transform("seq_attention")
    assert torch.allclose(gm(*inputs), model(*inputs), rtol=0, atol=1e-6)  # a zero query: the mean
    gm(*inputs).sum().backward()
    queries = [p for n, p in gm.named_parameters() if n.endswith("query")]
    assert len(queries) == 2 and all(q.grad is not None and q.grad.abs().sum() > 0 for q in queries)


@pytest.mark.parametrize("kind", ["seq_mean", "seq_attention"])
def test_compression_sends_ceil_d_over_c_and_expands_back(kind: str) -> None:
    """c = 4 on width-6 sequences: 2 columns per feature cross hosts (what the tower modules
    return into the peer exchange), a learned 2 -> 6 layer feeds the model's (B, 6) read, and
    gradients reach the tower modules, the expansions and the tables."""
    model, inputs, gm = _transform(kind, 4)
    seen = []
    for name, module in gm.named_modules():
        if name.startswith("dmt_tower_modules.tower_") and name.count(".") == 1:
            module.register_forward_hook(lambda m, a, out: seen.append(tuple(out.values().shape)))
    out = gm(*inputs)
    assert out.shape == model(*inputs).shape and sorted(seen) == [(4, 2), (4, 2)]
    expand = [m for n, m in gm.named_modules() if n.startswith("dmt_sequence_expand.")]
    assert [(m.in_features, m.out_features) for m in expand] == [(2, 6), (2, 6)]
    out.sum().backward()
    grads = {n: p.grad for n, p in gm.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items()
               if "tower_modules" in n or "sequence_expand" in n or "sequences" in n), grads.keys()


class LastItem(torch.nn.Module):
    """Picks the last item of a [B, L] history (a plain nn.Embedding sequence)."""

    def __init__(self) -> None:
        super().__init__()
        self.items, self.dense, self.head = torch.nn.Embedding(19, 8), torch.nn.Linear(3, 8), torch.nn.Linear(16, 1)

    def forward(self, dense: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.dense(dense), self.items(history)[:, -1]], dim=1))


def last_item():
    g = torch.Generator().manual_seed(0)
    return LastItem(), (torch.rand(4, 3, generator=g), torch.randint(0, 19, (4, 5), generator=g))


def test_plan_says_whether_a_sequence_tower_module_takes_the_reduction() -> None:
    verdicts = {}
    for factory in (pooled_sequence, bert4rec, plain_sequence, last_item):
        model, inputs = factory()
        report = plan_report(dmt_fx.transform(model, "2x2", example_inputs=inputs))
        verdicts.update({(factory.__name__, s["feature"]): s["reduction"]["verdict"] for s in report["sequences"]})
    assert verdicts[("pooled_sequence", "history")].startswith("model reduces by mean")
    assert "seq_mean is exact with c=1" in verdicts[("pooled_sequence", "searches")]
    assert "model reads rows (encoder" in verdicts[("bert4rec", "history")]
    assert "changes the model" in verdicts[("plain_sequence", "history")]  # attention against a dense query
    assert "EmbeddingCollection features only" in verdicts[("plain_sequence", "clicks")]  # its mean, plain
    assert verdicts[("last_item", "items")].startswith("model picks the last item")


def test_bert4rec_encoder_is_replaced_by_the_reduction() -> None:
    """The reduced vector takes the place of the masked mean over the encoder's output: the
    rewritten model no longer calls the encoder."""
    model, inputs, gm = _transform("seq_attention", 2, bert4rec)
    assert gm(*inputs).shape == model(*inputs).shape
    assert not any("encoder" in str(n.target) or "encoder" in str(n.meta.get("nn_module_stack", ""))
                   for n in gm.graph.nodes if n.op in ("call_module", "call_function", "get_attr"))


def test_refusals_name_the_reason() -> None:
    model, inputs = plain_sequence()
    with pytest.raises(dmt_fx.DMTError, match="nn.Embedding read as \\[B, L\\] sequences"):
        dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="seq_mean")
    model, inputs = default_dlrm()
    with pytest.raises(dmt_fx.DMTError, match="without sequence"):
        dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="seq_attention")
    model, inputs = pooled_sequence()
    with pytest.raises(dmt_fx.DMTError, match="seq_mean"):  # the kinds that cannot take sequences say which can
        dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="linear", compression=2)


def test_plan_auto_prices_the_sequence_kind(monkeypatch) -> None:
    """plan="auto" with tower_module="seq_mean": identity candidates send d x mean length
    floats per sample for each sequence feature, the kind's ceil(d / c); pooled features send
    d in both; c > 1 is refused for quality; the model built is the winner's (kind and c)."""
    from dmt_fx.compiler.auto_plan import choose

    model, inputs = pooled_sequence()
    priced: list[tuple[str, int, tuple, list]] = []
    evaluate = choose.evaluate

    def spy(setup, groups, c, kind, widths, *args, **kwargs):
        priced.append((kind, c, tuple(tuple(g) for g in groups), list(widths)))
        return evaluate(setup, groups, c, kind, widths, *args, **kwargs)

    monkeypatch.setattr(choose, "evaluate", spy)
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="seq_mean", plan="auto")
    sites = gm.meta["dmt"].sites
    sequences = {f.name: (f.dim, f.mean_length) for f in sites.features if f.sequence}
    assert sequences and all(length > 1 for _, length in sequences.values())
    for kind, c, groups, widths in priced:
        for group, width in zip(groups, widths):
            pooled = sum(sites.feature(f).dim for f in group if f not in sequences)
            if kind == "identity":
                expected = pooled + sum(d * n for f, (d, n) in sequences.items() if f in group)
            else:
                expected = pooled + sum(-(-d // c) for f, (d, _) in sequences.items() if f in group)
            assert width == pytest.approx(expected), (kind, c, group)
    assert {(kind, c) for kind, c, _, _ in priced} >= {("identity", 1), ("seq_mean", 1), ("seq_mean", 8)}
    auto = gm.meta["dmt_auto"]
    winner = auto.candidates[auto.winner]
    assert (auto.tower_module, auto.compression) == (winner.tower_module, winner.compression)
    assert (auto.tower_module, auto.compression) == ("seq_mean", 1)  # fewer bytes across hosts: the kind wins
    assert all(c.refused.startswith("quality") for c in auto.candidates if c.compression > 1)  # measured NE loss
    seq_towers = [m for m in gm.modules() if type(m).__name__ == "SequenceTower"]
    assert seq_towers and all(m.spec.compression == auto.compression for m in seq_towers)
    assert gm(*inputs).shape == model(*inputs).shape


# ---------------------------------------------------------------- 2x2 gloo world

CASES = {"seq_mean-c1": ("seq_mean", 1), "seq_attention-c4": ("seq_attention", 4), "identity": ("identity", 1)}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sequence-towers")
    specs = [{"name": name, "args": ["--tower-module", kind, "--compression", str(c), "--save-checkpoint",
                                     str(tmp / f"{name}.ckpt")]} for name, (kind, c) in CASES.items()]
    specs.append({"name": "bert4rec-seq_attention-c2", "args": ["--target", f"{TARGET}:bert4rec", "--tower-module",
                                                              "seq_attention", "--compression", "2"]})
    (tmp / "cases.json").write_text(json.dumps(specs))
    out = str(tmp / "out")
    args = ["--target", f"{TARGET}:pooled_sequence", "--topology", "2x2", "--steps", str(STEPS), "--batch-size",
            str(B), "--lr", str(LR), "--optimizer", "sgd", "--out", out, "--timeout-s", "60", "--record-outputs",
            "--profile-steps", "0", "--cases", str(tmp / "cases.json")]
    result = launch_job(Topology.parse("2x2"), args, out, deadline_s=600, grace_s=60)
    assert result.ok, result.log_tail(80)
    return tmp


@pytest.mark.distributed
@pytest.mark.slow  # one 2x2 torchrun launch: ~60-100 s on this machine
def test_seq_mean_c1_trains_like_the_original_on_2x2(launched) -> None:
    expected, trained = train_original("pooled_sequence", "sgd", 4, steps=STEPS)
    want = trained.state_dict()
    outputs, params, _ = job_diffs(expected, str(launched / "out" / "seq_mean-c1"), 4,
                                   dist_sequences.pooled_sequence(123)[0], str(launched / "seq_mean-c1.ckpt"), want)
    print(f"  2x2 seq_mean c=1 vs single process: max |diff| outputs {outputs:.3g}, parameters {params:.3g}")
    assert outputs <= 1e-5 and params <= 1e-5, (outputs, params)


def _metered(launched, name: str) -> tuple[float, range]:
    per_rank = [json.load(open(launched / "out" / name / f"rank{r}.json")) for r in range(4)]
    steps = per_rank[0]["metered_steps"]
    return sum(r["traffic"]["cross_host_embedding_bytes"] for r in per_rank), range(steps[0], steps[-1] + 1)


def fixed_width_bytes(c: int) -> float:
    """Independent count: every rank receives, from the other hosts, B rows of their pooled
    features (dim) and of their sequence features (ceil(dim / c) each, whatever the lengths),
    forward, and sends as many gradient floats back; fp32 (per step: no lengths in it)."""
    model, inputs = pooled_sequence()
    result = dmt_fx.dmt_result(dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="seq_mean",
                                                 compression=c))
    host_of = {f: t.host for t in result.plan.towers for f in t.features}
    topo = Topology.parse("2x2")
    return float(sum(2 * 4 * B * (-(-f.dim // c) if f.sequence else f.dim) for rank in range(topo.world_size)
                     for f in result.sites.features if host_of[f.name] != topo.host_of(rank)))


@pytest.mark.distributed
@pytest.mark.slow  # one 2x2 torchrun launch: ~60-100 s on this machine
def test_reduced_exchange_is_fixed_width_on_2x2(launched) -> None:
    got, _ = _metered(launched, "seq_attention-c4")
    want = fixed_width_bytes(4)
    jagged, identity_steps = _metered(launched, "identity")
    assert jagged == expected_embedding_bytes("pooled_sequence", "2x2", identity_steps)
    print(f"  2x2 cross-host embedding bytes/step: identity (jagged) {jagged:g}, seq_attention c=4 {got:g} "
          f"(count {want:g})")
    assert got == want and got < jagged


@pytest.mark.distributed
@pytest.mark.slow  # one 2x2 torchrun launch: ~60-100 s on this machine
def test_seq_attention_learns_on_2x2(launched) -> None:
    """The job's checkpoint holds the tower modules' trained query and projections: moved
    from their start (zero query), finite."""
    state = {"dmt_tower_modules.tower_0.pools.0.pool.query": torch.zeros(6),
             "dmt_tower_modules.tower_1.pools.0.pool.query": torch.zeros(6)}
    dcp.load(state, checkpoint_id=str(launched / "seq_attention-c4.ckpt"))
    assert all(torch.isfinite(q).all() and q.abs().sum() > 0 for q in state.values()), state


@pytest.mark.distributed
@pytest.mark.slow  # the same launch
def test_bert4rec_trains_with_its_encoder_bypassed_on_2x2(launched) -> None:
    """The rewrite leaves the encoder's parameters unread: the world's DDP must not wait for
    their gradients (runtime/sequence_towers.py `freeze_unread`); every step ran."""
    outputs = gathered(str(launched / "out" / "bert4rec-seq_attention-c2"), 4)
    assert len(outputs) == STEPS and all(torch.isfinite(o).all() for o in outputs)


def test_variant_names_for_the_benches() -> None:
    """`dmt-seqmean-c<N>` / `dmt-seqattn-c<N>` name the sequence kinds for `bench traffic`,
    `dmt-fx run --variants` and the worker (jobs/worker.py maps them to --tower-module)."""
    from dmt_fx.bench import variants

    for name, kind, c in (("dmt-seqmean-c4", "seq_mean", 4), ("dmt-seqattn-c1", "seq_attention", 1)):
        parsed = variants.parse(name)
        assert (parsed.kind, parsed.compression, parsed.name, variants.is_dmt(name)) == (kind, c, name, True)
    with pytest.raises(dmt_fx.DMTError, match="dmt-seqmean-c<N>"):
        variants.parse("dmt-seqmean-cx")
