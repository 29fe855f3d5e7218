"""Out-of-distribution detection: uncertainty scores and threshold-free detection metrics.

Convention: out-of-distribution (OOD) points are the **positive** class and a **higher score
means more OOD**. Entropy and mutual information follow it as they are; for the maximum class
probability (higher = more confident = less OOD) pass ``-max_prob``.
"""

from __future__ import annotations

from typing import Any

import torch

from .metrics import _as_float, _check_classification
from .uncertainty import decompose_classification

__all__ = ["ood_scores", "auroc", "fpr_at_95_tpr"]


def ood_scores(probs_draws: Any) -> dict[str, torch.Tensor]:
    """Per-point uncertainty scores from per-draw class probabilities.

    Parameters
    ----------
    probs_draws : Tensor, shape (S, N, C)
        Class probabilities of each posterior draw / ensemble member / dropout pass.

    Returns
    -------
    dict of str to Tensor, each of shape (N,)
        ``entropy``: entropy of the mean prediction (total uncertainty, nats);
        ``mutual_info``: mutual information between label and parameters (epistemic);
        ``max_prob``: largest mean class probability (confidence; use ``-max_prob`` as an
        OOD score). From :func:`~pyro_models.evaluation.uncertainty.decompose_classification`.

    Raises
    ------
    ValueError
        Not three-dimensional, probabilities outside [0, 1] or not summing to 1, NaN.

    Examples
    --------
    >>> p = torch.tensor([[[0.9, 0.1], [1.0, 0.0]], [[0.9, 0.1], [0.0, 1.0]]])  # S=2, N=2, C=2
    >>> {k: [round(x, 4) for x in v.tolist()] for k, v in ood_scores(p).items()}
    {'entropy': [0.3251, 0.6931], 'mutual_info': [0.0, 0.6931], 'max_prob': [0.9, 0.5]}
    """
    p = _as_float(probs_draws, "probs_draws")
    if p.dim() != 3 or min(p.shape) == 0:
        raise ValueError(f"probs_draws: expected shape (S, N, C) with S, N, C >= 1, got "
                         f"{tuple(p.shape)} (a single prediction needs a draw axis: probs[None])")
    # Validate every draw's rows as probability vectors (labels are irrelevant here).
    s, n, c = p.shape
    _check_classification(p.reshape(s * n, c), torch.zeros(s * n, dtype=torch.long))
    out = decompose_classification(p)
    return {"entropy": out["entropy"], "mutual_info": out["mutual_info"],
            "max_prob": out["probs"].max(-1).values}


def _scores(scores_in: Any, scores_out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    s_in = _as_float(scores_in, "scores_in")
    s_out = _as_float(scores_out, "scores_out")
    for name, s in (("scores_in", s_in), ("scores_out", s_out)):
        if s.dim() != 1 or s.numel() == 0:
            raise ValueError(f"{name}: expected a non-empty 1-D tensor of scores, got shape "
                             f"{tuple(s.shape)}")
    dtype = torch.promote_types(s_in.dtype, s_out.dtype)
    return s_in.to(dtype), s_out.to(device=s_in.device, dtype=dtype)


def auroc(scores_in: Any, scores_out: Any) -> torch.Tensor:
    """Area under the ROC curve for separating OOD (positive) from in-distribution points.

    Equals ``P(score_out > score_in) + P(score_out = score_in) / 2`` over independent pairs:
    the Mann-Whitney statistic, computed from mid-ranks of the pooled scores in
    ``O(n log n)``.

    Parameters
    ----------
    scores_in : Tensor, shape (N_in,)
        Scores of in-distribution points.
    scores_out : Tensor, shape (N_out,)
        Scores of OOD points; higher = more OOD.

    Returns
    -------
    Tensor, shape () (float64)
        1 for perfect separation, 0.5 for a useless score.

    Examples
    --------
    >>> auroc(torch.tensor([0.1, 0.4, 0.5]), torch.tensor([0.5, 0.9])).item()  # (3 + 2.5) / 6
    0.9166666666666666
    """
    s_in, s_out = _scores(scores_in, scores_out)
    n_in, n_out = s_in.numel(), s_out.numel()
    pooled = torch.cat([s_in, s_out])
    _, inverse, counts = torch.unique(pooled, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    # Mid-rank of each distinct value: ranks 1..n, ties share the average of their ranks.
    midrank = counts.cumsum(0) - (counts - 1) / 2
    rank_sum_out = midrank[inverse[n_in:]].sum()
    return (rank_sum_out - n_out * (n_out + 1) / 2) / (n_in * n_out)


def fpr_at_95_tpr(scores_in: Any, scores_out: Any, *, tpr: float = 0.95) -> torch.Tensor:
    """False-positive rate on in-distribution points when 95% of OOD points are detected.

    With a threshold ``t`` flagging points of score ``>= t`` as OOD, this is the smallest
    ``mean(scores_in >= t)`` over thresholds with ``mean(scores_out >= t) >= tpr``; the
    best threshold is the ``ceil(tpr * N_out)``-th largest OOD score. No interpolation
    between ROC points (the value of ``roc_curve`` at the first point reaching ``tpr``).

    Parameters
    ----------
    scores_in : Tensor, shape (N_in,)
    scores_out : Tensor, shape (N_out,)
        Higher = more OOD.
    tpr : float in (0, 1]
        Required true-positive (OOD detection) rate.

    Returns
    -------
    Tensor, shape () (float64)
        Lower is better.

    Examples
    --------
    >>> s_in = torch.arange(10.0)            # 0, ..., 9
    >>> s_out = torch.arange(20.0) + 5.0     # 5, ..., 24: the 19th largest is 6
    >>> fpr_at_95_tpr(s_in, s_out).item()    # in-scores >= 6: 6, 7, 8, 9
    0.4
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr: expected a rate in (0, 1], got {tpr!r}")
    s_in, s_out = _scores(scores_in, scores_out)
    n = s_out.numel()
    # Smallest k with k / n >= tpr, as compared in floating point (like roc_curve's tpr array).
    k = min(max(int(-(-tpr * n // 1)), 1), n)
    while k > 1 and (k - 1) / n >= tpr:
        k -= 1
    while k < n and k / n < tpr:
        k += 1
    threshold = torch.sort(s_out, descending=True).values[k - 1]
    return (s_in >= threshold).to(torch.float64).mean()
