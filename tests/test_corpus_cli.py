"""`dmt-fx diff` and `dmt-fx plan` work on every corpus model, in process.

For each entry (as `tests.harness.corpus.targets:<slug>`): `plan --format json` describes every
feature once, lists the quotient-remainder pairs and the joint tables split by field (row
ranges covering the weight), and the warnings; `diff` renders. The rich `plan` rendering is
checked on the models whose plan has composites, joint splits or warnings."""

from __future__ import annotations

import json

import pytest

from dmt_fx.cli.main import main
from tests.harness.corpus import CORPUS, Entry
from tests.harness.corpus.targets import slug

TOPOLOGY = "2x2"


def _target(entry: Entry) -> str:
    return f"tests.harness.corpus.targets:{slug(entry.name)}"


def _plan_json(capsys: pytest.CaptureFixture, entry: Entry) -> dict:
    capsys.readouterr()
    assert main(["plan", _target(entry), "--topology", TOPOLOGY, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def _check_plan(data: dict, entry: Entry) -> None:
    features = [f for t in data["towers"] for f in t["features"]]
    assert len(features) == len(set(features)) and features
    for joint in data["joint_tables"]:  # the fields' row ranges cut the weight, each in a tower
        rows = [f["rows"] for f in joint["fields"]]
        assert rows[0][0] == 0 and all(a[1] == b[0] for a, b in zip(rows, rows[1:])), rows
        assert all(f["feature"] in features for f in joint["fields"])
    for pair in data["composites"]:
        assert len(pair["tables"]) == 2, pair  # a quotient-remainder bag: weight_q and weight_r
    assert bool(entry.warns) == bool(data["warnings"]), data["warnings"]


@pytest.mark.parametrize("entry", [pytest.param(e, id=slug(e.name)) for e in CORPUS])
def test_plan_and_diff(capsys: pytest.CaptureFixture, entry: Entry) -> None:
    data = _plan_json(capsys, entry)
    _check_plan(data, entry)
    assert main(["diff", _target(entry), "--topology", TOPOLOGY]) == 0
    out = capsys.readouterr().out
    assert "nodes inserted" in out and "peer_input_exchange" in out
    if data["joint_tables"] or data["composites"] or data["warnings"]:
        assert main(["plan", _target(entry), "--topology", TOPOLOGY]) == 0
        shown = capsys.readouterr().out
        for joint in data["joint_tables"]:
            assert "joint tables split by field" in shown and joint["table"] in shown
            first = joint["fields"][0]
            assert f"{first['rows'][0]}..{first['rows'][1] - 1}" in shown
        if data["composites"]:
            assert "composite embeddings" in shown and "weight_q" in shown and "weight_r" in shown
        for warning in data["warnings"]:
            assert "WARNING" in shown and entry.warns in warning
