"""Debiased linear CKA between features' embeddings (a diagnostic next to the interaction affinity).

    affinity(i, j) = debiased linear CKA(E_i, E_j)
                   = HSIC_1(K_i, K_j) / sqrt(HSIC_1(K_i, K_i) HSIC_1(K_j, K_j)),  K_i = E_i E_i^T,

with HSIC_1 the unbiased HSIC estimator (Song et al. 2012; "debiased CKA", Nguyen et al.
2021), clipped to [0, 1]; E_i is the (batch x d_i) matrix of feature i's pooled
embeddings: the strength of the linear dependence of two features' embeddings, defined for
different dims, invariant to rotation and scale (below 4 samples the biased CKA is used).
"""

from __future__ import annotations

from typing import Mapping

import torch


class _Stats:
    """What the HSIC estimators need of one feature's embeddings E (n x d), centred."""

    def __init__(self, e: torch.Tensor) -> None:
        self.x = e - e.mean(dim=0, keepdim=True)
        n = self.x.shape[0]
        self.diag = (self.x * self.x).sum(dim=1)  # K_ii
        self.rows = self.x @ self.x.sum(dim=0) - self.diag  # row sums of K with a zeroed diagonal
        self.total = float(self.rows.sum())
        self.gram = self.x.T @ self.x  # for the biased estimator (n < 4)
        self.n = n


def _hsic(a: _Stats, b: _Stats, cross: torch.Tensor) -> float:
    """Unbiased HSIC_1 (without the constant 1/(n(n-3)), which cancels in CKA); `cross` = X_a^T X_b."""
    n = a.n
    trace = float((cross * cross).sum()) - float(a.diag @ b.diag)  # tr(K~_a K~_b)
    return trace + a.total * b.total / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(a.rows @ b.rows)


def _cka(a: _Stats, b: _Stats, self_a: float, self_b: float) -> float:
    if a.n != b.n or a.n < 2:
        return 0.0
    cross = a.x.T @ b.x
    if a.n < 4:  # biased linear CKA
        num = float((cross * cross).sum())
        den = float(torch.linalg.matrix_norm(a.gram)) * float(torch.linalg.matrix_norm(b.gram))
        return min(max(num / den, 0.0), 1.0) if den > 0 else 0.0
    if self_a <= 0 or self_b <= 0:
        return 0.0
    return min(max(_hsic(a, b, cross) / (self_a * self_b) ** 0.5, 0.0), 1.0)


def feature_affinity(embeddings: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], float]:
    """Debiased linear CKA between every two features (see the module docstring).

    Symmetric: both (a, b) and (b, a) are keys, with the same value; no (a, a) entries."""
    names = list(embeddings)
    stats = {n: _Stats(embeddings[n].detach().to(torch.float64).reshape(embeddings[n].shape[0], -1))
             for n in names}
    self_hsic = {n: (_hsic(s, s, s.gram) if s.n >= 4 else 0.0) for n, s in stats.items()}
    out: dict[tuple[str, str], float] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            value = round(_cka(stats[a], stats[b], self_hsic[a], self_hsic[b]), 12)
            out[(a, b)] = out[(b, a)] = value
    return out
