"""Fast domains wider than a host on the emulated cluster.

`Topology.parse("2x2", ranks_per_host=1)`: 2 fast domains of 2 ranks, launched as 4
torchrun agents of 1 rank each (LOCAL_WORLD_SIZE 1). Towers map to the domains, the
intra-host groups are the domains' ranks and the peer groups the ranks with the same index
in each domain, whatever LOCAL_WORLD_SIZE says. DMT trained on that world equals
single-process training of the original model, and `bench traffic` counts as cross-domain
exactly what a 2-host 2x2 job sends across hosts.
"""

from __future__ import annotations

import pytest

from dmt_fx import Topology
from dmt_fx.bench.traffic import traffic_bench
from dmt_fx.cli.main import main, parser
from dmt_fx.cli.options import topology_of
from tests.harness.launch import launch_job
from tests.harness.zoo import STEPS, B, gathered_outputs, load_checkpoint_into_original, reference, target

DOMAINS = Topology.parse("2x2", ranks_per_host=1)


@pytest.mark.distributed
def test_two_domains_of_two_hosts_train_like_one_process(tmp_path) -> None:
    out, ckpt = str(tmp_path / "domains"), str(tmp_path / "ckpt")
    args = ["--target", target("torchrec_dlrm"), "--topology", str(DOMAINS), "--steps", str(STEPS),
            "--batch-size", str(B), "--lr", "0.1", "--out", out, "--timeout-s", "60", "--record-outputs", "--profile-steps", "0",
            "--save-checkpoint", ckpt]
    result = launch_job(DOMAINS, args, out, deadline_s=240, grace_s=60)
    assert result.ok, result.log_tail()
    assert len(result.returncodes) == 4  # one agent (torchrun host) per rank
    expected, trained = reference("torchrec_dlrm", DOMAINS.world_size)
    got = gathered_outputs(result.out_dir, DOMAINS.world_size)
    assert len(got) == STEPS
    out_diff = max((e - g).abs().max().item() for e, g in zip(expected, got))
    loaded = load_checkpoint_into_original("torchrec_dlrm", ckpt).state_dict()
    want = trained.state_dict()
    assert list(loaded) == list(want)
    param_diff = max((loaded[k] - v).abs().max().item() for k, v in want.items())
    print(f"2 domains x 2 ranks on 4 hosts of 1 rank: max output diff {out_diff:.3g}, param diff {param_diff:.3g}")
    assert out_diff <= 1e-5 and param_diff <= 1e-5, (out_diff, param_diff)
    # Every byte that leaves a domain goes to the one peer (H - 1 = 1) of the rank's peer group,
    # and the pooled embeddings cross as DMT.md counts them: B*D*(H-1)/H floats each way.
    for rank in result.ranks():
        traffic = rank["traffic"]
        assert traffic["cross_host_messages"] == traffic["cross_host_collectives"] > 0, traffic
        assert traffic["by_group"]["peer"]["cross_host_bytes"] == traffic["cross_host_bytes"], traffic
        assert traffic["cross_host_embedding_bytes"] == 2 * B * 32 * (2 - 1) / 2 * 4, traffic  # D = 32


@pytest.mark.distributed
def test_bench_traffic_counts_cross_domain_bytes_as_a_two_host_job_sends_across_hosts(tmp_path) -> None:
    kwargs = dict(variants=["dmt-identity"], steps=2, warmup=1, batch_size=8, deadline_s=240)
    (domains,) = traffic_bench(["2x2"], ranks_per_host=1, out=str(tmp_path / "domains"), **kwargs)
    (hosts,) = traffic_bench(["2x2"], out=str(tmp_path / "hosts"), **kwargs)
    assert (domains["world"], domains["ranks_per_host"], domains["num_physical_hosts"]) == \
        ("2x2 (domains of 2 hosts x 1 ranks)", 1, 4)
    assert (hosts["world"], hosts["ranks_per_host"], hosts["num_physical_hosts"]) == ("2x2", 2, 2)
    for key in ("cross_domain_bytes", "cross_domain_id_bytes", "cross_domain_embedding_bytes",
                "cross_domain_messages"):
        assert domains[key] > 0 and domains[key] == hosts[key.replace("domain", "host")], key
        assert hosts[key] == hosts[key.replace("domain", "host")], key
    assert domains["intra_domain_bytes"] == pytest.approx(hosts["intra_host_bytes"])
    print(f"cross-domain bytes per rank per step {domains['cross_domain_bytes']:.0f} "
          f"(2-host job: cross-host {hosts['cross_host_bytes']:.0f})")



def test_cli_ranks_per_host(capsys) -> None:
    """--ranks-per-host on every verb that takes a topology; a host that does not tile the
    domain is refused before the model is built, with the arithmetic."""
    for argv in (["plan", "T", "--topology", "2x2"], ["diff", "T", "--topology", "2x2"],
                 ["run", "--topology", "2x2"], ["demo", "--topology", "2x2"]):
        assert topology_of(parser().parse_args([*argv, "--ranks-per-host", "1"])) == DOMAINS, argv
    assert parser().parse_args(["bench", "traffic", "--ranks-per-host", "1"]).ranks_per_host == 1
    assert main(["plan", target("torchrec_dlrm"), "--topology", "2x2", "--ranks-per-host", "3"]) == 2
    assert "2 / 3 is not a whole number of hosts" in capsys.readouterr().err
