"""Quality metrics of the benchmarks, computed by the libraries where they have them.

* `normalized_entropy`: TorchRec's NE (`torchrec.metrics.ne`: cross entropy over the entropy
  of the labels' base rate), on sigmoid(logits) clamped at `ETA` as TorchRec does;
* `auc`: torchmetrics' `binary_auroc` (ties count one half);
* `adjusted_rand_index`: Hubert and Arabie's ARI. The one copy in the project: torchmetrics
  1.0.3 (the pinned version) has no clustering metrics, and scikit-learn is not a dependency.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import torch
from torchmetrics.functional.classification import binary_auroc
from torchrec.metrics.ne import compute_ne, get_ne_states

ETA = 1e-12  # TorchRec's clamp of the predicted probabilities


def normalized_entropy(labels: Any, logits: Any) -> float:
    """NE of binary `labels` (0/1) under `logits`: 1.0 for a model that predicts the base rate."""
    y = torch.as_tensor(labels, dtype=torch.float64).reshape(-1)
    p = torch.sigmoid(torch.as_tensor(logits, dtype=torch.float64).reshape(-1))
    s = get_ne_states(y, p, torch.ones_like(y), ETA)
    ne = compute_ne(s["cross_entropy_sum"], s["weighted_num_samples"], s["pos_labels"], s["neg_labels"], ETA)
    return float(ne)


def auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve; NaN when the labels hold one class only."""
    y = torch.as_tensor(labels).reshape(-1) > 0.5
    if bool(y.all()) or not bool(y.any()):
        return float("nan")
    return float(binary_auroc(torch.as_tensor(scores, dtype=torch.float64).reshape(-1), y.long()))


def adjusted_rand_index(a: Sequence[Any], b: Sequence[Any]) -> float:
    """ARI of two labelings of the same items (1.0: the same partition, about 0: chance)."""
    pairs = lambda k: k * (k - 1) / 2  # noqa: E731
    n = len(a)
    index = sum(pairs(c) for c in Counter(zip(a, b)).values())
    rows, cols = sum(pairs(c) for c in Counter(a).values()), sum(pairs(c) for c in Counter(b).values())
    expected = rows * cols / pairs(n) if n > 1 else 0.0
    top = (rows + cols) / 2
    return 1.0 if top == expected else float((index - expected) / (top - expected))
