"""Checkpoints are atomic, never unpickle code, and resume an interrupted run exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pyro_models
from pyro_models import MCMCConfig, SVIConfig
from pyro_models.inference.checkpoint import CHECKPOINT_NAME, atomic_write_bytes, save_checkpoint

DATA = {"y": [0.3, 1.2, 0.8, 1.9, 1.1]}


class Interrupt:
    """Simulates Ctrl-C after a given number of steps."""

    def __init__(self, at: int, key: str = "step") -> None:
        self.at, self.key = at, key

    def on_step(self, info):
        if info.get(self.key) == self.at and info.get("chain", 1) == 1:
            raise KeyboardInterrupt


def test_svi_resume_reproduces_uninterrupted_run(tmp_path):
    cfg = SVIConfig(num_steps=200, lr=0.05, checkpoint_every=50, lr_schedule="cosine")
    full = pyro_models.fit("normal_normal", DATA, cfg, seed=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        pyro_models.fit("normal_normal", DATA, cfg, seed=3, progress=False, checkpoint_dir=tmp_path,
                        callbacks=[Interrupt(120)])
    ck = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ck["step"] == 120
    resumed = pyro_models.fit("normal_normal", DATA, cfg, seed=3, progress=False, checkpoint_dir=tmp_path)
    assert resumed.losses == full.losses
    for (n1, p1), (n2, p2) in zip(full.guide.named_parameters(), resumed.guide.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_svi_minibatch_resume(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 2, generator=g)
    data = {"x": x, "y": x @ torch.tensor([1.0, -1.0]) + 0.1 * torch.randn(100, generator=g)}
    cfg = SVIConfig(num_steps=60, lr=0.05, batch_size=32, checkpoint_every=10)
    full = pyro_models.fit("linear_regression", data, cfg, seed=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        pyro_models.fit("linear_regression", data, cfg, seed=1, progress=False, checkpoint_dir=tmp_path,
                        callbacks=[Interrupt(25)])
    resumed = pyro_models.fit("linear_regression", data, cfg, seed=1, progress=False, checkpoint_dir=tmp_path)
    assert resumed.losses == full.losses


def test_mcmc_resume_reproduces_uninterrupted_run(tmp_path):
    cfg = MCMCConfig(num_chains=2, num_warmup=100, num_samples=150, checkpoint_every=40)
    full = pyro_models.fit("normal_normal", DATA, cfg, seed=4, progress=False)
    # Interrupt chain 2 during sampling (iteration 100 + 90).
    with pytest.raises(KeyboardInterrupt):
        pyro_models.fit("normal_normal", DATA, cfg, seed=4, progress=False, checkpoint_dir=tmp_path,
                        callbacks=[Interrupt(190, key="iteration")])
    ck = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ck["chains"][0]["complete"] and ck["chains"][1]["done"] == 90
    resumed = pyro_models.fit("normal_normal", DATA, cfg, seed=4, progress=False, checkpoint_dir=tmp_path)
    a, b = full.samples()["mu"], resumed.samples()["mu"]
    assert a.shape == b.shape == (2, 150)
    assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert torch.equal(full.sample_stats["diverging"], resumed.sample_stats["diverging"])


def test_completed_run_is_reloaded_not_rerun(tmp_path):
    cfg = SVIConfig(num_steps=30, checkpoint_every=10)
    first = pyro_models.fit("normal_normal", DATA, cfg, seed=2, progress=False, checkpoint_dir=tmp_path)
    calls = []
    again = pyro_models.fit("normal_normal", DATA, cfg, seed=2, progress=False, checkpoint_dir=tmp_path,
                            callbacks=[lambda info: calls.append(info)])
    assert calls == [] and again.losses == first.losses


def test_mismatched_checkpoint_is_refused(tmp_path):
    pyro_models.fit("normal_normal", DATA, SVIConfig(num_steps=10), seed=0, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different run"):
        pyro_models.fit("normal_normal", DATA, SVIConfig(num_steps=20), seed=0, progress=False,
                        checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different run"):
        pyro_models.fit("normal_normal", DATA, MCMCConfig(num_chains=1, num_warmup=5, num_samples=5),
                        seed=0, progress=False, checkpoint_dir=tmp_path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    save_checkpoint(tmp_path, {"step": 1})
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def failing(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / CHECKPOINT_NAME, failing)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    assert [p.name for p in Path(tmp_path).iterdir()] == [CHECKPOINT_NAME]


def test_checkpoint_with_code_is_not_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"engine": "svi", "x": Evil()}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(Exception, match="[Ww]eights only"):
        pyro_models.fit("normal_normal", DATA, SVIConfig(num_steps=5), seed=0, progress=False,
                        checkpoint_dir=tmp_path)


def test_svi_resume_keeps_guide_buffers(tmp_path):
    """SWAG's collected trajectory lives in buffers, not parameters: a resume must not lose it."""
    cfg = SVIConfig(num_steps=200, lr=0.05, checkpoint_every=50, num_posterior_samples=20)
    opts = ("swag", {"rank": 4, "swa_start": 0.25})
    full = pyro_models.fit("normal_normal", DATA, cfg, guide=opts, seed=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        pyro_models.fit("normal_normal", DATA, cfg, guide=opts, seed=3, progress=False, checkpoint_dir=tmp_path,
                        callbacks=[Interrupt(120)])
    resumed = pyro_models.fit("normal_normal", DATA, cfg, guide=opts, seed=3, progress=False, checkpoint_dir=tmp_path)
    assert int(resumed.guide.num_collected) == int(full.guide.num_collected) == 150
    for (n1, b1), (n2, b2) in zip(full.guide.named_buffers(), resumed.guide.named_buffers()):
        assert n1 == n2 and torch.allclose(b1, b2, atol=1e-6)
