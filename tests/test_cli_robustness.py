"""CLI robustness: every user error exits with code 2 and exactly one clear line."""

from __future__ import annotations

import os

import pytest

from dmt_fx.cli.main import main

DLRM = "examples/torchrec_dlrm.py:build"


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dmt-fx: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("argv, text", [
    (["plan", "no_colon", "--topology", "2x2"], "without a ':factory' part"),
    (["plan", "missing.py:build", "--topology", "2x2"], "no file"),
    (["plan", DLRM, "--topology", "2y4"], "HOSTSxRANKS_PER_HOST"),
    (["plan", DLRM, "--topology", "0x4"], "positive int"),
    (["diff", DLRM, "--topology", "2x2", "--plan", "/nonexistent/plan.json"], "cannot be read"),
])
def test_user_errors(capsys, argv, text) -> None:
    assert text in _one_line_error(capsys, argv)


def test_unreadable_and_mismatched_plan_files(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "invalid JSON" in _one_line_error(capsys, ["plan", DLRM, "--topology", "2x2", "--plan", str(bad)])
    locked = tmp_path / "locked.json"
    locked.write_text("{}")
    os.chmod(locked, 0)
    if os.geteuid() != 0:  # root reads anything
        assert "cannot be read" in _one_line_error(capsys, ["plan", DLRM, "--topology", "2x2", "--plan", str(locked)])
    other = tmp_path / "other.json"
    other.write_text('{"topology": "2x4", "fingerprint": "0000000000000000-2x4", '
                     '"towers": [{"host": 0, "features": ["f0", "f1", "f2", "f3"]}]}')
    assert "made for" in _one_line_error(capsys, ["plan", DLRM, "--topology", "2x2", "--plan", str(other)])


def test_emulated_bench_without_root(capsys, monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    line = _one_line_error(capsys, ["bench", "emulated", "--steps", "1"])
    assert "root" in line
