"""Sequence (unpooled) embeddings in one process: torchrec EmbeddingCollection
and nn.Embedding read as [B, L] ids are tower units; the rewritten model returns what the
original returns (the same Dict[str, JaggedTensor], the same [B, L, D] rows), with equal
gradients, training trajectories (SGD and Adagrad) and checkpoints (original keys, both
ways). What stays refused names the module, the reason and a fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import dmt_fx
from dmt_fx.ir import ops
from dmt_fx.ir.errors import DMTError, UnsupportedEmbeddingError
from dmt_fx.runtime.distribute import check_distributable
from dmt_fx.runtime.plain import PlainKJT, plain_groups, plain_lookups
from tests.harness.corpus.sequences import bert4rec, plain_sequence, pooled_sequence
from tests.harness.training import train_original

FACTORIES = {"pooled_sequence": pooled_sequence, "bert4rec": bert4rec, "plain_sequence": plain_sequence}
OPTIMIZERS = ("sgd", "adagrad")


def _train(model: nn.Module, make, optimizer: str, steps: int = 3) -> list[torch.Tensor]:
    return train_original(model, make, 8, steps, optimizer, lr=0.1)[0]


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("topology", ["2x2", pytest.param("4x1", marks=pytest.mark.slow)])
def test_outputs_and_gradients_equal_the_original(name: str, topology: str) -> None:
    model, batch = FACTORIES[name]()
    gm = dmt_fx.transform(model, topology, example_inputs=batch)
    assert any(f.sequence for f in dmt_fx.dmt_result(gm).sites.features)
    batch = FACTORIES[name].make_inputs(8, 5)  # another batch, empty sequences included
    expected = model(*batch)
    expected.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = gm(*batch)
    got.sum().backward()
    assert torch.equal(got, expected)
    for n, p in model.named_parameters():  # gm shares the parameters
        assert torch.equal(p.grad, grads[n]), n


# CI: one model per optimizer (bert4rec's transform takes seconds); every pair under `slow`.
TRAINING = [pytest.param(n, o, marks=[] if (n, o) in (("pooled_sequence", "sgd"), ("plain_sequence", "adagrad"))
                         else [pytest.mark.slow]) for n in FACTORIES for o in OPTIMIZERS]


@pytest.mark.parametrize("name, optimizer", TRAINING)
def test_training_and_checkpoints_equal_the_original(name: str, optimizer: str) -> None:
    factory = FACTORIES[name]
    model, batch = factory()
    reference, _ = factory()
    gm = dmt_fx.transform(model, "2x2", example_inputs=batch)
    assert list(gm.state_dict()) == list(reference.state_dict())
    got, expected = _train(gm, factory.make_inputs, optimizer), _train(reference, factory.make_inputs, optimizer)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    state, want = gm.state_dict(), reference.state_dict()
    assert list(state) == list(want) and all(torch.equal(state[k], want[k]) for k in want)
    fresh, _ = factory(seed=7)
    fresh.load_state_dict(gm.state_dict())  # DMT -> original
    other, _ = factory(seed=8)
    gm_other = dmt_fx.transform(other, "2x2", example_inputs=batch)
    gm_other.load_state_dict(reference.state_dict())  # original -> DMT
    probe = factory.make_inputs(8, 9)
    assert torch.equal(fresh(*probe), reference(*probe)) and torch.equal(gm_other(*probe), reference(*probe))


def test_the_model_reads_the_collections_own_jagged_tensors() -> None:
    """The merge hands the model a Dict[str, JaggedTensor] in the collection's key order, the
    towers' JaggedTensors themselves (lengths, offsets and values as the original's)."""
    part_a = {"b": "jt_b"}
    part_b = {"c": "jt_c", "a": "jt_a"}
    assert list(ops.merge_jagged_dicts((part_a, part_b), ("a", "b", "c")).items()) == [
        ("a", "jt_a"), ("b", "jt_b"), ("c", "jt_c")]
    model, batch = pooled_sequence()
    gm = dmt_fx.transform(model, "2x2", example_inputs=batch)
    towers = [t.features for t in dmt_fx.tower_plan(gm).towers]
    assert {"history", "searches"} & set(towers[0]) and {"history", "searches"} & set(towers[1])


def test_plan_records_sequence_features_and_mean_lengths() -> None:
    model, batch = pooled_sequence()
    sites = dmt_fx.dmt_result(dmt_fx.transform(model, "2x2", example_inputs=batch)).sites
    kjt = batch[2]
    for key, count in zip(kjt.keys(), kjt.length_per_key()):
        feature = sites.feature(key)
        assert feature.sequence and feature.mean_length == pytest.approx(count / kjt.stride())
    assert not sites.feature("user").sequence


def test_nn_embedding_on_one_id_per_sample_stays_pooled() -> None:
    """[B] / [B, 1] ids keep the pooled path (one id per bag); [B, L > 1] ids are sequences."""
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.one, self.seq = nn.Embedding(9, 4), nn.Embedding(9, 4)

        def forward(self, dense, a, b):
            return torch.cat([dense, self.one(a).squeeze(1), self.seq(b).mean(1)], dim=1).sum(1, keepdim=True)

    inputs = (torch.rand(4, 2), torch.randint(0, 9, (4, 1)), torch.randint(0, 9, (4, 3)))
    gm = dmt_fx.transform(Two(), "2x1", example_inputs=inputs)
    result = dmt_fx.dmt_result(gm)
    assert [lk.feature for lk in plain_lookups(gm, result)] == ["one"]
    assert [lk.feature for lk in plain_lookups(gm, result, sequence=True)] == ["seq"]
    check_distributable(gm)


# ---------------------------------------------------------------- what stays refused


def test_a_compressing_tower_module_on_sequence_features_is_refused() -> None:
    model, batch = pooled_sequence()
    with pytest.raises(DMTError) as info:
        dmt_fx.transform(model, "2x2", example_inputs=batch, tower_module="linear", compression=2)
    error = info.value
    assert "history" in error.found and "sequence" in error.found, str(error)
    assert any("identity" in fix for fix in error.fixes)


def test_padding_idx_on_a_sequence_table_is_distributable() -> None:
    """padding_idx on nn.Embedding read as [B, L] ids: the rank drops the padding ids before
    the lookup and puts zero rows in their places (trained on a world in
    tests/test_distributed_sequences.py: plain_sequence's `clicks`)."""
    from torchrec.sparse.jagged_tensor import JaggedTensor

    from dmt_fx.runtime.sequence_lowering import PlainSequenceKJT, sequence_rows

    model, batch = plain_sequence()
    gm = dmt_fx.transform(model, "2x1", example_inputs=batch)
    check_distributable(gm)
    lookups = plain_lookups(gm, dmt_fx.dmt_result(gm), sequence=True)
    clicks = next(lk for lk in lookups if lk.feature == "clicks")
    assert clicks.padding_idx == 0
    ids = torch.tensor([[0, 3, 0], [5, 0, 2]])
    kjt = PlainSequenceKJT([clicks])(ids)
    assert kjt.lengths().tolist() == [1, 2] and kjt.values().tolist() == [3, 5, 2]
    rows = {"clicks": JaggedTensor(values=model.clicks(kjt.values()), lengths=kjt.lengths())}
    assert torch.equal(sequence_rows(rows, "clicks", ids, 0), model.clicks(ids))


def test_sequence_ids_unseen_by_the_transform_are_refused_with_the_fix() -> None:
    """Without example inputs the symbolic capture keeps no shapes: the lookup is planned
    pooled, and the rank refuses [B, L] ids before any exchange, saying how to fix it."""
    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = nn.Embedding(20, 4)

        def forward(self, dense, ids):
            return torch.cat([dense, self.seq(ids).sum(1)], dim=1).sum(1, keepdim=True)

    gm = dmt_fx.transform(Seq(), "2x1")
    to_kjt = PlainKJT(plain_groups(plain_lookups(gm, dmt_fx.dmt_result(gm)))[0])
    with pytest.raises(DMTError) as info:
        to_kjt(torch.randint(0, 20, (4, 3)))
    assert "'seq'" in info.value.found and any("example_inputs" in fix for fix in info.value.fixes)
    inputs = (torch.rand(4, 3), torch.randint(0, 20, (4, 3)))
    seen = dmt_fx.transform(Seq(), "2x1", example_inputs=inputs)  # the fix works
    assert plain_lookups(seen, dmt_fx.dmt_result(seen), sequence=True)
    check_distributable(seen)


def test_a_managed_collision_embedding_collection_is_refused_by_name() -> None:
    class MC(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            ec = EmbeddingCollection([EmbeddingConfig(name="t", embedding_dim=4, num_embeddings=10,
                                                      feature_names=["f"])])
            self.mc = ManagedCollisionEmbeddingCollection.__new__(ManagedCollisionEmbeddingCollection)
            nn.Module.__init__(self.mc)
            self.mc._embedding_module = ec

        def forward(self, kjt):
            return self.mc(kjt)

    with pytest.raises(UnsupportedEmbeddingError) as info:
        dmt_fx.transform(MC(), "2x1")
    assert "ManagedCollisionEmbeddingCollection" in info.value.found and "'mc'" in info.value.found
    assert any("_embedding_module" in fix for fix in info.value.fixes)


def test_dmt_fx_plan_shows_sequence_features() -> None:
    """`dmt-fx plan`'s report lists the sequence features with their mean lengths, and its
    output-exchange estimate counts one row per id for them."""
    from dmt_fx.cli.report import plan_report
    from dmt_fx.cli.tables import plan_extras

    model, batch = pooled_sequence()
    gm = dmt_fx.transform(model, "2x2", example_inputs=batch)
    data = plan_report(gm, batch_size=8)
    lengths = {s["feature"]: s["mean_length"] for s in data["sequences"]}
    kjt = batch[2]
    assert lengths == {k: n / kjt.stride() for k, n in zip(kjt.keys(), kjt.length_per_key())}
    assert any("sequence features" in str(getattr(extra, "title", "")) for extra in plan_extras(data))
    sites, plan = dmt_fx.dmt_result(gm).sites, dmt_fx.tower_plan(gm)
    for tower in plan.towers:
        rows = sum(sites.feature(f).dim * (sites.feature(f).mean_length if sites.feature(f).sequence else 1)
                   for f in tower.features)
        out = next(c for c in data["collectives"] if c["tower"] == tower.index and "output" in c["kind"])
        assert out["bytes_per_step"] == round(8 * rows * 4 / 2)


def test_plan_auto_on_a_sequence_model() -> None:
    """plan="auto" counts a sequence feature's rows back per sample (dim x mean length) and
    gives an exact identity plan."""
    model, batch = pooled_sequence()
    gm = dmt_fx.transform(model, "2x2", example_inputs=batch, plan="auto")
    assert torch.equal(gm(*batch), model(*batch))
    assert sorted(f for t in dmt_fx.tower_plan(gm).towers for f in t.features) == ["history", "item", "searches",
                                                                                   "user"]


def test_an_untraceable_sequence_model_is_refused_not_exported() -> None:
    """torch.export would take the EmbeddingCollection apart into its tables' aten ops (ids
    without their sequences): a symbolic-tracing failure is refused with its place and fix."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from dmt_fx import CaptureError

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ec = EmbeddingCollection([EmbeddingConfig(name="t", embedding_dim=4, num_embeddings=10,
                                                           feature_names=["f"])])

        def forward(self, kjt):
            return torch.stack([v.sum() for v in self.ec(kjt)["f"].to_dense()])  # a Python loop over samples

    kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1, 2, 3]), torch.tensor([2, 1]))
    with pytest.raises(CaptureError) as info:
        dmt_fx.transform(Loop(), "2x1", example_inputs=(kjt,))
    assert "EmbeddingCollection" in info.value.expected and info.value.fixes


def test_an_embedding_collection_key_read_by_two_tables_is_refused_by_name() -> None:
    """One process runs it; distribute cannot (the sequence exchange returns one jagged tensor per
    key): check_distributable names the collection, the key and the fix before any process starts."""
    class SharedKey(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ec = EmbeddingCollection(tables=[
                EmbeddingConfig(name=t, embedding_dim=4, num_embeddings=10, feature_names=[k])
                for t, k in (("t1", "f"), ("t2", "f"), ("t3", "g"))])

        def forward(self, kjt):
            out = self.ec(kjt)
            return out["f@t1"].values().sum() + 2 * out["f@t2"].values().sum() + out["g"].values().sum()

    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f", "g"], values=torch.tensor([1, 2, 3, 4, 5]),
                                              lengths=torch.tensor([2, 0, 1, 2]))
    model = SharedKey()
    gm = dmt_fx.transform(model, "2x1", example_inputs=(kjt,))
    assert torch.equal(gm(kjt), model(kjt))
    with pytest.raises(DMTError) as info:
        check_distributable(gm)
    assert "EmbeddingCollection 'ec'" in info.value.found and "['f']" in info.value.found
    assert any("its own feature names" in fix for fix in info.value.fixes)


def test_adam_on_the_cpu_and_the_train_pipeline_are_refused_with_fixes_that_work(world_of_one) -> None:
    """Sequence tables on TorchRec's DENSE kernel (CPU Adam) and DMTTrainPipeline over a
    sequence exchange are refused before any step, naming the modules; the fixes named
    (Adagrad, no pipeline) then train exactly like the original."""
    import torch.nn.functional as F

    from dmt_fx.runtime.pipeline import DMTTrainPipeline

    model, batch = pooled_sequence()
    gm = dmt_fx.transform(model, "1x1", example_inputs=batch)
    with pytest.raises(DMTError) as info:
        dmt_fx.distribute(gm, optimizer_class=torch.optim.Adam, optimizer_kwargs={"lr": 0.01})
    assert "DENSE kernel" in info.value.found and "'sequences'" in info.value.found, info.value.found
    assert any("Adagrad" in fix for fix in info.value.fixes)
    module, optimizer = dmt_fx.distribute(gm, optimizer_class=torch.optim.Adagrad, optimizer_kwargs={"lr": 0.1})
    with pytest.raises(DMTError) as info:
        DMTTrainPipeline(module, optimizer)
    assert "sequence (unpooled) features, read by ['sequences']" in info.value.found, info.value.found
    assert "--pipeline" in info.value.found
    assert any("leave out --pipeline" in fix for fix in info.value.fixes)
    twin, _ = pooled_sequence()
    reference = torch.optim.Adagrad(twin.parameters(), lr=0.1)
    for _ in range(2):  # the fix: the module and the optimizer, called directly
        labels = torch.zeros(module(*batch).shape)
        for net, opt in ((module, optimizer), (twin, reference)):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(net(*batch), labels).backward()
            opt.step()
    assert torch.allclose(module(*batch), twin(*batch), atol=1e-5)
