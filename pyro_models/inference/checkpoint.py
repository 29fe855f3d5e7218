"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename.

A crash mid-write leaves the previous checkpoint intact. Loading uses
``torch.load(weights_only=True)``, so a checkpoint can never run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write_bytes", "save_checkpoint", "load_checkpoint", "check_resume", "fingerprint",
           "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_write_bytes(path: str | os.PathLike[str], write: Any) -> None:
    """Call ``write(file_object)`` on a temp file next to ``path`` and move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_checkpoint(directory: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically save ``state`` (tensors, numbers, strings, lists, dicts) to ``directory``."""
    path = Path(directory) / CHECKPOINT_NAME
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    return path


def load_checkpoint(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Load the checkpoint in ``directory`` (``None`` when there is none)."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def fingerprint(parts: dict[str, Any]) -> str:
    """A stable hash of what defines a run (config, model, guide, data), to refuse a mismatched resume."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in parts.items() if k != "data"}, sort_keys=True, default=str).encode())
    for k, v in sorted(parts.get("data", {}).items()):
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        else:
            h.update(repr(v).encode())
    return h.hexdigest()[:32]


def check_resume(ck: dict[str, Any], engine: str, fingerprint: str, directory: str) -> None:
    """Refuse to resume from a checkpoint of a different run."""
    if ck.get("engine") != engine or ck.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoint_dir {directory!r} holds a checkpoint of a different run (engine "
            f"{ck.get('engine')!r}); resuming needs the same model, guide, data, config and seed. "
            f"Use a new directory or delete the old checkpoint."
        )
