"""Split predictive uncertainty into its aleatoric and epistemic parts.

Both decompositions take per-draw predictive parameters (one row per posterior draw, or per
ensemble member, or per dropout pass), so every method that yields such draws is summarised
by the same code.

- Regression (law of total variance): ``Var[y] = E_s[scale_s^2] + Var_s[loc_s]``, aleatoric
  (expected noise variance) plus epistemic (variance of the mean).
- Classification (entropy): ``H[E_s p_s] = E_s H[p_s] + I[y; theta]``, aleatoric (expected
  entropy) plus epistemic (mutual information between the label and the parameters).
"""

from __future__ import annotations

import torch

__all__ = ["decompose_regression", "decompose_classification", "entropy"]


def decompose_regression(loc: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Predictive mean and variance split into aleatoric and epistemic parts.

    Parameters
    ----------
    loc : Tensor, shape (S, ...)
        Predictive mean of each draw.
    scale : Tensor, shape (S, ...) or broadcastable to it
        Noise standard deviation of each draw.

    Returns
    -------
    dict of str to Tensor, each of shape (...)
        ``mean``, ``aleatoric_var`` (mean noise variance), ``epistemic_var`` (variance of
        ``loc`` over draws, divisor S), and ``total_var`` (their sum).

    Examples
    --------
    >>> loc = torch.tensor([[0.0], [2.0]]); scale = torch.tensor([[1.0], [1.0]])
    >>> {k: v.item() for k, v in decompose_regression(loc, scale).items()}
    {'mean': 1.0, 'aleatoric_var': 1.0, 'epistemic_var': 1.0, 'total_var': 2.0}
    """
    if loc.dim() < 1:
        raise ValueError(f"loc must have a leading draw dimension (S, ...), got shape {tuple(loc.shape)}")
    scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device).expand_as(loc)
    mean = loc.mean(0)
    aleatoric = scale.square().mean(0)
    # Squared in place: one (S, ...) temporary instead of two (each a fresh allocation).
    epistemic = (loc - mean).square_().mean(0)
    return {"mean": mean, "aleatoric_var": aleatoric, "epistemic_var": epistemic,
            "total_var": aleatoric + epistemic}


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) along ``dim``; ``0 log 0 = 0``."""
    return -torch.special.xlogy(probs, probs).sum(dim)


def decompose_classification(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Predictive probabilities and entropy split into aleatoric and epistemic parts.

    Parameters
    ----------
    probs : Tensor, shape (S, ..., C)
        Class probabilities of each draw (rows sum to one).

    Returns
    -------
    dict of str to Tensor
        ``probs`` (..., C) the mean over draws; ``entropy`` (...) of the mean (total);
        ``expected_entropy`` (...) the mean entropy of the draws (aleatoric);
        ``mutual_info`` (...) their difference (epistemic, >= 0).

    Examples
    --------
    >>> p = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # two confident, disagreeing draws
    >>> out = decompose_classification(p)
    >>> round(out["mutual_info"].item(), 4), round(out["expected_entropy"].item(), 4)
    (0.6931, 0.0)
    """
    if probs.dim() < 2:
        raise ValueError(f"probs must be (S, ..., C), got shape {tuple(probs.shape)}")
    mean = probs.mean(0)
    total = entropy(mean)
    expected = entropy(probs).mean(0)
    # Clamp: in floating point the difference can dip a hair below zero.
    return {"probs": mean, "entropy": total, "expected_entropy": expected,
            "mutual_info": (total - expected).clamp_min(0.0)}
