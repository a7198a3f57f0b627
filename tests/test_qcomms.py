"""Quantized communication (TorchRec's qcomms) on both sides, and the typed variant names.

* Names: every variant name the CLI accepts parses to a `Variant` and formats back to
  itself; a malformed DMT or precision part is a DMTError naming the grammar.
* Codecs: "fp16" puts float16 on the wire forward and bfloat16 backward ("bf16": bfloat16
  both ways) and decodes exactly `x.half().float()` / `x.bfloat16().float()`.
* A real 2x2 gloo world (torchrun, emulated hosts) trains flat table-wise and DMT identity
  with and without "+fp16": the meter's cross-host embedding bytes halve, the id bytes do
  not move, and DMT's equal the count made here from the model's sizes alone:
  2 (fwd + bwd) x B x D x (H - 1) / H x 2 bytes. Training stays within the tolerance below
  of fp32 training, and is not bitwise equal to it (which shows the codecs ran).

Tolerance: each pooled element (forward) is rounded to FP16 with a relative error of at most
2^-11, each gradient element (backward) to BF16 with at most 2^-8. The model is smooth and
a few SGD steps at lr 0.05 do not amplify the rounding (measured over 20 steps: max |output
difference| about 1e-4 of max |output| for fp16, 1e-3 for bf16 both ways), so the outputs may
differ from fp32 training by at most 2^-8 x max |output|, the coarser codec's own relative
precision; a wrong decode (wrong dtype, columns or gradient scale) misses it by orders.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from torchrec.distributed.dist_data import PooledEmbeddingsAllToAll

import dmt_fx
from dmt_fx.baselines import baseline_names
from dmt_fx.bench import emulated, traffic
from dmt_fx.bench.variants import DMT, FLAT, OTHER, Variant, is_dmt, parse, with_qcomms
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.topology import Topology
from dmt_fx.models.wide import DIM, NUM_FEATURES
from dmt_fx.models.zoo import default_dlrm
from dmt_fx.runtime.qcomms import check_precision, codecs, qcomm_codecs_registry, wire_bytes
from tests.harness.launch import launch_job

TOLERANCE = 2.0 ** -8  # of max |output|: BF16's relative precision, the coarser codec


# ---------------------------------------------------------------- names


def test_every_variant_name_round_trips() -> None:
    names = [*baseline_names(), *traffic.VARIANTS, *emulated.DEFAULT_VARIANTS, "dmt", "dmt-c1", "dmt-c16+bf16",
             "flat-table_wise+fp16+pipeline", "dmt-c4+pipeline", "torchrec-2d+pipeline", "my baseline"]
    for name in names:
        assert parse(name).name == name, name
    assert parse("dmt-c4+fp16+pipeline") == Variant(DMT, "linear", 4, "fp16", True)
    assert parse("dmt-identity+bf16") == Variant(DMT, "identity", 1, "bf16")
    assert parse("flat-row_wise+fp16").unpipelined == "flat-row_wise+fp16"
    assert parse("flat-row_wise+fp16").base == "flat-row_wise" and parse("flat-row_wise").family == FLAT
    assert parse("torchrec-2d").family == OTHER and is_dmt("dmt") and not is_dmt("flat-table_wise")
    assert with_qcomms(("dmt-c4",)) == ("dmt-c4", "dmt-c4+fp16")


@pytest.mark.parametrize("name", ["dmt-cx", "dmt-c0", "dmt-foo", "dmt-c4+fp8", "flat-table_wise+int8"])
def test_malformed_variant_names_are_refused(name: str) -> None:
    with pytest.raises(DMTError) as err:
        parse(name)
    assert name in str(err.value)
    assert not is_dmt(name)


def test_qcomms_baselines_are_flat_and_in_the_default_lists() -> None:
    flat = baseline_names(FLAT)
    assert {"flat-table_wise+fp16", "flat-row_wise+fp16", "flat-table_row_wise+bf16"} <= set(flat)
    assert {"flat-table_wise+fp16", "dmt-identity+fp16", "dmt-c4+fp16"} <= set(traffic.VARIANTS)
    assert {"flat-table_wise+fp16", "dmt-identity+fp16", "dmt-c4+fp16"} <= set(emulated.DEFAULT_VARIANTS)


# ---------------------------------------------------------------- codecs


def test_precisions_and_the_registry_keep_bf16_on_cpu() -> None:
    assert wire_bytes("fp32") == (4, 4) and wire_bytes("fp16") == (2, 2) and codecs("fp32") is None
    registry = qcomm_codecs_registry("fp16")
    pair = registry["POOLED_EMBEDDINGS_ALL_TO_ALL"]
    assert (pair.forward._comm_precision.value, pair.backward._comm_precision.value) == ("fp16", "bf16")
    with pytest.raises(DMTError, match="comm_precision='int8'"):
        check_precision("int8")


@pytest.mark.parametrize("precision,forward,backward", [("fp16", torch.half, torch.bfloat16),
                                                        ("bf16", torch.bfloat16, torch.bfloat16)])
def test_the_codecs_send_16_bits(precision, forward, backward) -> None:
    """What the pooled all-to-all puts on the wire (its encode) and hands on (its decode);
    the 2x2 test below runs them over gloo (a world of one skips the codecs)."""
    pair = codecs(precision)
    x = (torch.randn(3, 5, dtype=torch.float64) * 1e3).float()
    for codec, dtype, nbytes in zip((pair.forward, pair.backward), (forward, backward), wire_bytes(precision)):
        wire = codec.encode(x)  # the cost model's bytes per element (dmt_fx.cost.wire) are the codec's
        assert wire.dtype == dtype and wire.element_size() == nbytes == 2
        assert torch.equal(codec.decode(wire), x.to(dtype).float()) and not torch.equal(codec.decode(wire), x)


def test_distribute_puts_the_codecs_on_the_peer_exchange_only(world_of_one) -> None:
    model, _ = default_dlrm()
    with pytest.raises(DMTError, match="comm_precision='fp8'"):
        dmt_fx.distribute(dmt_fx.transform(model, "1x1"), comm_precision="fp8")
    model, batch = default_dlrm()
    module, optimizer = dmt_fx.distribute(dmt_fx.transform(model, "1x1"), comm_precision="fp16")
    dists = {name: m for name, m in module.named_modules() if isinstance(m, PooledEmbeddingsAllToAll)}
    peer = {name for name, m in dists.items() if m._codecs is not None}
    assert peer and all(name.endswith("output_dist") and "lookup" not in name for name in peer), sorted(dists)
    assert all(dists[name]._codecs.backward._comm_precision.value == "bf16" for name in peer)
    module(*batch).sum().backward()
    optimizer.step()


# ---------------------------------------------------------------- a real 2x2 world

PAIRS = (("flat-table_wise", "flat-table_wise+fp16"), ("dmt-identity", "dmt-identity+fp16"))
B, H = 32, 2


def _train(tmp_path, variants: tuple[str, ...], steps: int) -> dict[str, tuple[dict, torch.Tensor]]:
    out = str(tmp_path / "qcomms")
    args = ["--target", "dmt_fx.models.wide:wide_model", "--topology", "2x2", "--variants", ",".join(variants),
            "--steps", str(steps), "--warmup", "1", "--traffic-steps", "2", "--profile-steps", "0",
            "--batch-size", str(B), "--lr", "0.05", "--record-outputs", "--profile-steps", "0", "--out", out, "--timeout-s", "60"]
    result = launch_job(Topology.parse("2x2"), args, out, deadline_s=400, grace_s=30)
    assert result.ok, result.log_tail(40)
    runs = {}
    for v in variants:
        ranks = [json.load(open(os.path.join(out, v, f"rank{r}.json"))) for r in range(4)]
        outputs = torch.cat([torch.stack(torch.load(os.path.join(out, v, f"outputs_rank{r}.pt"))) for r in range(4)],
                            dim=1)  # [steps, global batch]
        runs[v] = ranks, outputs
    return runs


def _check_close(runs: dict, fp32: str, other: str) -> float:
    (_, ref), (_, got) = runs[fp32], runs[other]
    diff = (got - ref).abs().max().item()
    assert 0 < diff <= TOLERANCE * ref.abs().max().item(), (fp32, other, diff, ref.abs().max().item())
    return diff


@pytest.mark.distributed
def test_qcomms_halve_the_cross_host_embedding_bytes_on_2x2(tmp_path) -> None:
    runs = _train(tmp_path, tuple(v for pair in PAIRS for v in pair), steps=3)
    for fp32, fp16 in PAIRS:
        for rank in range(4):
            a, b = runs[fp32][0][rank]["traffic"], runs[fp16][0][rank]["traffic"]
            assert b["cross_host_embedding_bytes"] * 2 == a["cross_host_embedding_bytes"] > 0, (fp16, rank)
            assert b["cross_host_id_bytes"] == a["cross_host_id_bytes"] > 0  # ids stay integers
            assert b["cross_host_messages"] == a["cross_host_messages"]
        _check_close(runs, fp32, fp16)
    # independent count: FP16 forward + BF16 backward, 2 bytes each, the other host's half of D per sample
    expected = 2 * B * NUM_FEATURES * DIM * (H - 1) / H * 2
    assert all(r["traffic"]["cross_host_embedding_bytes"] == expected for r in runs["dmt-identity+fp16"][0])


@pytest.mark.distributed
@pytest.mark.slow
def test_twenty_steps_with_qcomms_stay_close_to_fp32(tmp_path) -> None:
    """The numeric effect over 20 steps, for both precisions and a compressing tower (~80 s)."""
    pairs = (*PAIRS, ("flat-table_wise", "flat-table_wise+bf16"), ("dmt-identity", "dmt-identity+bf16"),
             ("dmt-c4", "dmt-c4+fp16"))
    variants = (*dict.fromkeys(v for pair in pairs for v in pair), "dmt-identity+fp16+pipeline")
    runs = _train(tmp_path, variants, steps=20)
    # the train pipeline runs the same compressed exchanges, a batch ahead
    assert torch.allclose(runs["dmt-identity+fp16+pipeline"][1], runs["dmt-identity+fp16"][1], rtol=0, atol=1e-6)
    for fp32, other in pairs:
        _check_close(runs, fp32, other)
        losses = [torch.tensor(runs[v][0][0]["losses"]) for v in (fp32, other)]
        assert (losses[0] - losses[1]).abs().max().item() <= TOLERANCE * losses[0].abs().max().item()


def test_the_analytic_traffic_halves_too() -> None:
    from dmt_fx.bench.cost_model import analytic_traffic

    sizes = {"batch": B, "width": NUM_FEATURES * DIM, "features": NUM_FEATURES}
    for name in ("flat-table_wise", "dmt-identity", "dmt-c4"):
        fp32, fp16 = (analytic_traffic(v, H, 2, **sizes) for v in (name, f"{name}+fp16"))
        assert fp16["cross_host_embedding_bytes"] * 2 == fp32["cross_host_embedding_bytes"]
        assert fp16["cross_host_id_bytes"] == fp32["cross_host_id_bytes"]
    assert analytic_traffic("dmt-identity+fp16", H, 2, **sizes)["cross_host_embedding_bytes"] == 16_384
