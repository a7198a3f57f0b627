"""torchrun targets for tests/test_distributed_widths.py: the FM family's narrow tables.

Every rank imports this file: the factories (model, example inputs) and the batches
(`make_inputs`, the worker's hook)."""

from __future__ import annotations

from tests.harness.corpus.fm_family import (
    collections_fm,
    deepfm,
    deepfm_aligned,
    fm,
    fm_aligned,
    make_inputs,
    qr_fm,
    wide_deep,
)

__all__ = ["collections_fm", "deepfm", "deepfm_aligned", "fm", "fm_aligned", "make_inputs", "qr_fm", "wide_deep"]
