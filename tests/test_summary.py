"""The one run summarizer (`dmt_fx.jobs.summary`), on hand-made per-rank results.

The expected numbers are worked out by hand in the comments, not recomputed with the
summarizer's formulas.
"""

from __future__ import annotations

import pytest

from dmt_fx.bench.emulated import best_flat
from dmt_fx.jobs.summary import summarize


def rank(r: int, times: list[float], cross_emb: float, losses: list[float]) -> dict:
    return {"rank": r, "topology": "2x1", "losses": losses, "step_times_s": times,
            "dense_allreduce_bytes_estimate": 4096,
            "traffic": {"steps": 3, "cross_host_id_bytes": 100.0, "cross_host_embedding_bytes": cross_emb,
                        "cross_host_messages": 2.0, "intra_host_bytes": 0.0, "by_op": {"all_to_all": {}}}}


RANKS = [rank(0, [9.0, 0.1, 0.4, 0.2, 0.3], 1000.0, [1.0, 0.9, 0.8, 0.7, 0.6]),
         rank(1, [1.0, 0.3, 0.1, 0.5, 0.1], 3000.0, [1.0, 0.9, 0.8, 0.7, 0.6])]


def test_step_times_are_the_slowest_rank_after_warmup():
    record = summarize("dmt", RANKS, warmup=1)
    # per step, the slower rank: 9.0 | 0.3, 0.4, 0.5, 0.3; the warm-up step (9.0) is left out
    assert record["step_times_s"] == [0.3, 0.4, 0.5, 0.3]
    assert record["step_time_median_s"] == pytest.approx(0.35)
    # quartiles of 0.3, 0.3, 0.4, 0.5 (exclusive method): 0.3 and 0.475
    assert record["step_time_q1_s"] == pytest.approx(0.3) and record["step_time_q3_s"] == pytest.approx(0.475)
    assert record["step_time_iqr_s"] == pytest.approx(0.175)
    assert record["timed_steps"] == 4 and record["warmup_steps"] == 1


def test_metered_steps_are_left_out_of_the_step_times():
    ranks = [{**r, "metered_steps": [1, 2]} for r in RANKS]
    record = summarize("dmt", ranks, warmup=1)
    # after warm-up: steps 1..4 = 0.3, 0.4, 0.5, 0.3; the meter watched steps 1 and 2
    assert record["step_times_s"] == [0.5, 0.3] and not record["step_times_metered"]
    # a resumed run numbers its steps from first_step: steps 3..7, metered 5 and 6 = indexes 2, 3
    resumed = [{**r, "first_step": 3, "metered_steps": [5, 6]} for r in RANKS]
    assert summarize("dmt", resumed, warmup=1)["step_times_s"] == [0.3, 0.3]
    # nothing else left: the metered steps, flagged
    everything = [{**r, "metered_steps": [1, 2, 3, 4]} for r in RANKS]
    record = summarize("dmt", everything, warmup=1)
    assert record["step_times_s"] == [0.3, 0.4, 0.5, 0.3] and record["step_times_metered"]


def test_traffic_is_the_mean_over_ranks_and_by_op_is_dropped():
    record = summarize("dmt", RANKS, warmup=1)
    assert record["cross_host_embedding_bytes"] == 2000.0  # (1000 + 3000) / 2
    assert record["cross_host_bytes"] == 2100.0  # ids 100 + embeddings 2000
    assert record["cross_host_messages"] == 2.0 and "by_op" not in record
    assert [r["cross_host_embedding_bytes"] for r in record["per_rank"]] == [1000.0, 3000.0]
    assert record["ranks"] == 2 and record["measured_steps"] == 3 and record["topology"] == "2x1"
    assert record["dense_allreduce_bytes_estimate"] == 4096


def test_losses_and_a_field_the_meter_adds_later():
    ranks = [{**r, "traffic": {**r["traffic"], "dense_allreduce_bytes": 10.0 * (i + 1)}} for i, r in enumerate(RANKS)]
    record = summarize("dmt", ranks, warmup=0)
    assert record["first_loss"] == 1.0 and record["final_loss"] == pytest.approx(0.8)  # mean of all 5 (< 10)
    assert record["dense_allreduce_bytes"] == 15.0


def test_no_measured_steps():
    record = summarize("dmt", RANKS, warmup=5)
    assert record["step_time_median_s"] == 0.0 and record["step_time_iqr_s"] == 0.0


def test_best_flat_is_the_fastest_flat_baseline():
    rows = [{"variant": v, "step_time_median_s": t} for v, t in
            (("flat-table_wise", 0.3), ("flat-row_wise", 0.2), ("torchrec-towers", 0.1), ("dmt-c4", 0.1))]
    rows = best_flat(rows)
    assert [r["is_best_flat"] for r in rows] == [False, True, False, False]  # towers are not a flat plan
    assert {r["best_flat"] for r in rows} == {"flat-row_wise"}
    assert rows[3]["speedup_vs_best_flat"] == pytest.approx(2.0)


def test_cpu_of_all_ranks_per_timed_step():
    ranks = [{**RANKS[0], "step_cpu_s": [5.0, 0.1, 0.2, 0.1, 0.2]},
             {**RANKS[1], "step_cpu_s": [5.0, 0.2, 0.1, 0.2, 0.3], "metered_steps": [2]}]
    ranks[0]["metered_steps"] = [2]
    record = summarize("dmt", ranks, warmup=1)
    # both ranks, per step: 10.0 | 0.3, 0.3, 0.3, 0.5; warm-up (step 0) and metered step 2 out
    assert record["step_cpu_all_ranks_median_s"] == pytest.approx(0.3)  # median of 0.3, 0.3, 0.5
    assert record["step_cpu_median_s"] == pytest.approx(0.2)  # the slower rank: 0.2, 0.2, 0.3


def test_training_thread_cpu_is_summarized_when_every_rank_has_it():
    ranks = [{**RANKS[0], "step_main_thread_cpu_s": [1.0, 0.1, 0.2, 0.1, 0.3]},
             {**RANKS[1], "step_main_thread_cpu_s": [1.0, 0.2, 0.1, 0.4, 0.2]}]
    # the slower rank per step after warm-up: 0.2, 0.2, 0.4, 0.3 -> median 0.25
    assert summarize("dmt", ranks, warmup=1)["step_main_thread_cpu_median_s"] == pytest.approx(0.25)
    assert summarize("dmt", RANKS, warmup=1)["step_main_thread_cpu_median_s"] is None  # older results lack it
