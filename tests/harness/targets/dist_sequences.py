"""torchrun targets for tests/test_distributed_sequences.py: sequence (unpooled) embeddings.

Every rank imports this file: the factories (model, example inputs) and their batches
(`make_inputs`, each factory's attribute: the worker's hook)."""

from __future__ import annotations

from tests.harness.corpus.sequences import bert4rec, plain_sequence, pooled_sequence

__all__ = ["bert4rec", "plain_sequence", "pooled_sequence"]
