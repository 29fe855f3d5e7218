"""Pieces shared by the SVI and MCMC engines: progress bars, callbacks, RNG state."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = ["progress_bar", "Callbacks", "rng_state", "set_rng_state"]


def progress_bar(enabled: bool, total: int, desc: str) -> tqdm:
    """A tqdm bar, off when ``enabled`` is false or stderr is not a terminal (CI logs, pipes)."""
    on = bool(enabled) and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not on, leave=False, dynamic_ncols=True)


class Callbacks:
    """Duck-typed callbacks: any object with some of ``on_step(info)``,
    ``on_checkpoint(path)``, ``on_fit_end(result)``. A plain function is treated as ``on_step``."""

    def __init__(self, callbacks: Iterable[Any]) -> None:
        if callbacks is None:
            callbacks = ()
        if callable(callbacks) and not hasattr(callbacks, "__iter__"):
            callbacks = (callbacks,)
        self._cbs = list(callbacks)
        for cb in self._cbs:
            if not (callable(cb) or any(hasattr(cb, m) for m in ("on_step", "on_checkpoint", "on_fit_end"))):
                raise TypeError(
                    f"callback {cb!r} has none of on_step/on_checkpoint/on_fit_end and is not callable"
                )

    def __bool__(self) -> bool:
        return bool(self._cbs)

    def step(self, info: dict[str, Any]) -> None:
        for cb in self._cbs:
            if hasattr(cb, "on_step"):
                cb.on_step(info)
            elif callable(cb) and not hasattr(cb, "on_checkpoint") and not hasattr(cb, "on_fit_end"):
                cb(info)

    def checkpoint(self, path: Any) -> None:
        for cb in self._cbs:
            if hasattr(cb, "on_checkpoint"):
                cb.on_checkpoint(path)

    def fit_end(self, result: Any) -> None:
        for cb in self._cbs:
            if hasattr(cb, "on_fit_end"):
                cb.on_fit_end(result)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
