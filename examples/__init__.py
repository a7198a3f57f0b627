"""Model zoo of recommendation models used to exercise dmt_fx.

Each module exposes ``build(seed) -> (model, example_inputs)`` and
``make_inputs(batch_size, seed) -> tuple`` (positional args for ``forward``).
"""

from __future__ import annotations

ZOO: dict[str, str] = {
    "torchrec_dlrm": "examples.torchrec_dlrm",
    "torchrec_dlrm_dcn": "examples.torchrec_dlrm_dcn",
    "torchrec_dlrm_projection": "examples.torchrec_dlrm_projection",
    "weighted_shared": "examples.weighted_shared",
    "two_collections": "examples.two_collections",
    "reference_dlrm": "examples.reference_dlrm",
    "plain_embedding": "examples.plain_embedding",
}
