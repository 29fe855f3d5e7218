"""Many NUTS chains as one batched computation over a leading chain dimension.

The algorithm is NumPyro's iterative multinomial NUTS (``numpyro/infer/hmc_util.py``:
``build_tree``, ``_iterative_build_subtree``, ``warmup_adapter``,
``find_reasonable_step_size``), the same sampler as Pyro's recursive kernel and Stan's up to
which U-turn checks are made:

* each iteration doubles a trajectory in a random direction until it makes a U-turn,
  diverges (energy error > ``max_delta_energy``) or reaches ``max_tree_depth``;
* the proposal moves to a new subtree with probability ``min(1, w_new / w_old)`` at the top
  level (biased progressive sampling) and ``w_new / (w_old + w_new)`` inside subtrees
  (multinomial sampling);
* U-turns are checked on the whole tree and, inside each subtree, on every sub-subtree
  closed by the new leaf (momentum checkpoints, as in NumPyro's iterative version), plus
  Stan's extra checks across the two halves of every merge (first leaf of one half with
  the first of the other, last with last), which stop trajectories that loop back;
* warmup follows Stan: dual averaging of the log step size towards ``target_accept`` and a
  diagonal (or dense) mass matrix estimated by Welford's method in windows of 75 / 25, 50,
  100, ... / 50 iterations, with a step-size search at the start and after each window.

All chains advance in lockstep: every chain's tree reaches the same depth at the same time,
so leaves are built for all chains with ONE batched potential + gradient call, and masks
freeze the chains whose tree (or subtree) has already stopped. Each chain keeps its own
step size, mass matrix and adaptation state, so chains stay independent in distribution.

Speed: with ``compile=True`` a whole leaf (leapfrog, potential, gradient, multinomial update
and U-turn checks) and the step that joins a subtree to the tree are each traced to one ATen
graph and compiled by TorchInductor (:mod:`.graph_compile`), which removes the Python
overhead that dominates small models. The first compile on a machine takes ~10-20 s on CPU;
Inductor keeps the kernels on disk, so later runs of the same model load them in about a
second.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from .batched_potential import BatchedPotential, ModelNotVectorizableError
from .checkpoint import check_resume, load_checkpoint, save_checkpoint
from .config import MCMCConfig
from .engine_common import Callbacks, progress_bar
from .graph_compile import compile_graph, start_inductor_warmup

__all__ = ["BatchedNUTS", "adaptation_schedule", "run_batched_mcmc", "ModelNotVectorizableError"]

PotentialFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

STAT_NAMES = ("diverging", "energy", "tree_depth", "n_steps", "step_size", "acceptance_rate", "lp")

# Dual-averaging constants of Hoffman & Gelman (2014), as in Stan, Pyro and NumPyro.
_DA_T0, _DA_KAPPA, _DA_GAMMA = 10.0, 0.75, 0.05


def adaptation_schedule(num_warmup: int) -> list[tuple[int, int]]:
    """Stan's warmup windows as inclusive ``(start, end)`` iteration pairs.

    A fast initial buffer (75), slow windows doubling from 25 during which the mass matrix
    is estimated, and a fast terminal buffer (50); scaled down for short warmups.

    Examples
    --------
    >>> adaptation_schedule(1000)
    [(0, 74), (75, 99), (100, 149), (150, 249), (250, 449), (450, 949), (950, 999)]
    >>> adaptation_schedule(10)
    [(0, 9)]
    """
    if num_warmup < 20:
        return [(0, num_warmup - 1)] if num_warmup > 0 else []
    start_buf, end_buf, init_win = 75, 50, 25
    if start_buf + end_buf + init_win > num_warmup:
        start_buf = int(0.15 * num_warmup)
        end_buf = int(0.1 * num_warmup)
        init_win = num_warmup - start_buf - end_buf
    windows = [(0, start_buf - 1)]
    end_start = num_warmup - end_buf
    size, start = init_win, start_buf
    while start < end_start:
        cur_start, cur_size = start, size
        # Slow windows double, but the last one absorbs what is left before the end buffer.
        if 3 * cur_size <= end_start - cur_start:
            size = 2 * cur_size
        else:
            cur_size = end_start - cur_start
        start = cur_start + cur_size
        windows.append((cur_start, start - 1))
    windows.append((end_start, num_warmup - 1))
    return windows


def _checkpoint_masks(n: int, levels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Which momentum checkpoints leaf ``n`` of a subtree writes and checks (NumPyro's scheme).

    Checkpoint ``i`` holds the first leaf of the i-th open sub-subtree; leaf ``n`` closes the
    sub-subtrees counted by its trailing one bits and is U-turn-checked against each.
    """
    idx_max = bin(n >> 1).count("1")
    num_subtrees = bin((~n & (n + 1)) - 1).count("1")
    idx_min = idx_max - num_subtrees + 1
    lv = torch.arange(levels, device=device)
    write = (lv == idx_max) & (n % 2 == 0)
    check = (lv >= idx_min) & (lv <= idx_max)
    return write.view(levels, 1, 1), check.view(levels, 1)


def _velocity(minv: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    # Inverse mass times momentum; minv (C, D) diagonal or (C, D, D) dense, r (..., C, D).
    if minv.dim() == 2:
        return minv * r
    return torch.einsum("ced,...cd->...ce", minv, r)


def _kinetic(minv: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return 0.5 * (_velocity(minv, r) * r).sum(-1)


def _is_turning(minv: torch.Tensor, r_left: torch.Tensor, r_right: torch.Tensor, r_sum: torch.Tensor,
                v_right: torch.Tensor | None = None) -> torch.Tensor:
    # Betancourt's generalised criterion (2017, A.4.2) with the endpoint momenta removed from
    # the sum, as NumPyro and Pyro do.
    rho = r_sum - 0.5 * (r_left + r_right)
    v_right = _velocity(minv, r_right) if v_right is None else v_right
    return ((_velocity(minv, r_left) * rho).sum(-1) <= 0) | ((v_right * rho).sum(-1) <= 0)


def _make_leaf(potential_and_grad: PotentialFn, max_delta_energy: float) -> Callable[..., tuple]:
    """One leaf of a subtree for every chain: leapfrog, multinomial update, U-turn checks.

    Branch-free (masks, no Python control flow on values) so that it can be traced to one
    graph and compiled. ``active`` marks chains still growing this subtree; the others'
    state passes through unchanged. Points are packed as ``(C, 3, D)`` = (z, r, grad) and
    proposals as ``(C, 2, D)`` = (z, grad) with ``(C, 2)`` = (potential, energy), which keeps
    the number of tensors (and of operations in eager mode) small.
    """

    def leaf(front, eps, minv, energy0, active, w_sub, rsum_sub, acc_sub, n_sub, prop, prop_e,
             turn_sub, div_sub, r_ck, rs_ck, rp_ck, write, check, u):
        zf, rf, gf = front.unbind(1)
        half = 0.5 * eps
        r_half = rf - half * gf
        z_new = zf + eps * _velocity(minv, r_half)
        pe_new, g_new = potential_and_grad(z_new)
        r_new = r_half - half * g_new
        v_new = _velocity(minv, r_new)
        energy = pe_new + 0.5 * (v_new * r_new).sum(-1)
        delta = energy - energy0
        delta = torch.where(torch.isnan(delta), torch.full_like(delta, math.inf), delta)
        div = delta > max_delta_energy
        acc = torch.exp(-delta).clamp(max=1.0)
        w_leaf = torch.where(active, -delta, torch.full_like(delta, -math.inf))
        # Multinomial sampling inside the subtree; NaN arises only for the first leaf when its
        # weight is -inf, and the first leaf is always taken.
        p = torch.sigmoid(w_leaf - w_sub)
        take = active & ((u < p) | torch.isnan(p))
        prop = torch.where(take.view(-1, 1, 1), torch.stack((z_new, g_new), 1), prop)
        prop_e = torch.where(take.unsqueeze(-1), torch.stack((pe_new, energy), 1), prop_e)
        w_sub = torch.logaddexp(w_sub, w_leaf)
        am = active.to(rf.dtype)
        rsum_sub = rsum_sub + am.unsqueeze(-1) * r_new
        acc_sub = acc_sub + am * acc
        n_sub = n_sub + am
        front = torch.where(active.view(-1, 1, 1), torch.stack((z_new, r_new, g_new), 1), front)
        div_sub = div_sub | (active & div)
        # ``None`` masks (eager runs only) skip work known to be void: even leaves close no
        # sub-subtree, odd leaves write no checkpoint.
        if write is not None:
            r_ck = torch.where(write, r_new, r_ck)
            rs_ck = torch.where(write, rsum_sub, rs_ck)
            rp_ck = torch.where(write, rf, rp_ck)  # the leaf before a checkpoint ends its left neighbour
        if check is not None:
            sub_rsum = rsum_sub - rs_ck + r_ck
            turn = _is_turning(minv, r_ck, r_new, sub_rsum, v_new)
            # Stan's extra checks across the two halves A | B of each closed sub-subtree:
            # (first of A, first of B) over rho_A + r_first_B, and (last of A, last of B) over
            # rho_B + r_last_A. B starts at the next checkpoint, or at this leaf for the smallest.
            top = check & ~torch.cat((check[1:], torch.zeros_like(check[:1])))
            topc = top.unsqueeze(-1)
            nxt = torch.cat((r_ck[1:], r_ck[:1]))
            r_b0 = torch.where(topc, r_new, nxt)
            s_before_b = torch.where(topc, rsum_sub - r_new, torch.cat((rs_ck[1:], rs_ck[:1])) - nxt)
            r_a_end = torch.where(topc, rf, torch.cat((rp_ck[1:], rp_ck[:1])))
            rho_a = s_before_b - (rs_ck - r_ck) + r_b0
            rho_b = rsum_sub - s_before_b + r_a_end
            turn = turn | _is_turning(minv, r_ck, r_b0, rho_a) | _is_turning(minv, r_a_end, r_new, rho_b, v_new)
            turn = (turn & check).any(0) & active
            turn_sub = turn_sub | turn
            active = active & ~turn
        active = active & ~div
        return (front, active, w_sub, rsum_sub, acc_sub, n_sub, prop, prop_e, turn_sub, div_sub,
                r_ck, rs_ck, rp_ck)

    return leaf


def _merge_subtree(minv, left, right, prop, prop_e, weight, r_sum, turning, diverging, sum_acc, num, depth,
                   grow_right, near, front, w_sub, rsum_sub, acc_sub, n_sub, s_prop, s_prop_e, turn_sub,
                   div_sub, r_first, active, u):
    """Join a finished subtree to the tree, for every chain (branch-free, like the leaf).

    ``left`` ... ``depth`` are the tree's fields (see ``_Tree``), ``near`` the end the subtree
    grew from, ``front`` its far end, ``r_first`` the momentum of its first leaf and ``u`` a
    uniform per chain for the progressive-sampling choice. Returns the new tree fields and
    the chains that keep growing.
    """
    rc = grow_right.view(-1, 1, 1)
    # Stan's extra checks across old tree | new subtree.
    r_far = torch.where(rc, left, right)[:, 1]
    extra = (_is_turning(minv, r_far, r_first, r_sum + r_first)
             | _is_turning(minv, near[:, 1], front[:, 1], rsum_sub + near[:, 1]))
    # The subtree joins on the side it grew (frozen chains have front = their end).
    left = torch.where(rc, left, front)
    right = torch.where(rc, front, right)
    r_sum = r_sum + rsum_sub
    # Biased progressive sampling: favour the new subtree, never a turning/divergent one.
    p = torch.where(turn_sub | div_sub, torch.zeros_like(w_sub), (w_sub - weight).exp().clamp(max=1.0))
    take = active & (u < p)
    prop = torch.where(take.view(-1, 1, 1), s_prop, prop)
    prop_e = torch.where(take.unsqueeze(-1), s_prop_e, prop_e)
    weight = torch.logaddexp(weight, w_sub)
    sum_acc = sum_acc + acc_sub
    num = num + n_sub
    depth = depth + active
    turn = turn_sub | extra | _is_turning(minv, left[:, 1], right[:, 1], r_sum)
    turning = turning | (active & turn)
    diverging = diverging | div_sub
    active = active & ~turning & ~diverging
    return left, right, prop, prop_e, weight, r_sum, turning, diverging, sum_acc, num, depth, active


@dataclass
class _Tree:
    left: torch.Tensor  # (C, 3, D): z, r, grad at the left end
    right: torch.Tensor  # (C, 3, D)
    prop: torch.Tensor  # (C, 2, D): z, grad of the proposal
    prop_e: torch.Tensor  # (C, 2): potential, energy of the proposal
    weight: torch.Tensor
    r_sum: torch.Tensor
    turning: torch.Tensor
    diverging: torch.Tensor
    sum_acc: torch.Tensor
    num: torch.Tensor
    depth: torch.Tensor


class BatchedNUTS:
    """NUTS for C chains at once, given a batched potential ``q (C, D) -> (U (C,), grad (C, D))``.

    Parameters
    ----------
    potential_and_grad : callable
        Maps ``q`` (C, D) to the potential energy (C,) and its gradient (C, D); row ``c`` must
        depend on ``q[c]`` only.
    initial_params : Tensor (C, D)
        Starting points (unconstrained), one row per chain.
    num_warmup : int
        Adaptation iterations (the schedule of :func:`adaptation_schedule`).
    max_tree_depth : int
        Maximum number of trajectory doublings (at most ``2**max_tree_depth - 1`` leapfrogs).
    target_accept : float
        Dual-averaging target for the mean acceptance probability of a trajectory.
    step_size : float
        Initial step size (refined by a doubling/halving search when adapting).
    adapt_step_size, adapt_mass_matrix, dense_mass : bool
    max_delta_energy : float
        Energy error beyond which a trajectory is flagged divergent and stopped.
    seed : int
        Seeds a private generator: the run is reproducible and leaves the global RNG alone.
    compile : bool
        Trace one leaf to an ATen graph and compile it with TorchInductor (falls back to
        eager with a warning if that fails).

    Examples
    --------
    >>> import torch
    >>> scale = torch.tensor([1.0, 3.0])
    >>> def pot(q):  # independent Normal(0, scale)
    ...     return 0.5 * ((q / scale) ** 2).sum(-1), q / scale**2
    >>> nuts = BatchedNUTS(pot, torch.zeros(4, 2), num_warmup=50, seed=0)
    >>> for _ in range(50):
    ...     _ = nuts.step()
    >>> draws = torch.stack([nuts.step()["z"] for _ in range(150)])  # (150, 4, 2)
    >>> bool((draws.std((0, 1)) - scale).abs().max() < 0.5)
    True
    """

    def __init__(
        self,
        potential_and_grad: PotentialFn,
        initial_params: torch.Tensor,
        *,
        num_warmup: int,
        max_tree_depth: int = 10,
        target_accept: float = 0.8,
        step_size: float = 1.0,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = True,
        dense_mass: bool = False,
        max_delta_energy: float = 1000.0,
        seed: int = 0,
        compile: bool = False,
    ) -> None:
        if initial_params.dim() != 2:
            raise ValueError(f"initial_params must have shape (C, D), got {tuple(initial_params.shape)}")
        if isinstance(num_warmup, bool) or not isinstance(num_warmup, int) or num_warmup < 0:
            raise ValueError(f"num_warmup must be an int >= 0, got {num_warmup!r}")
        if isinstance(max_tree_depth, bool) or not isinstance(max_tree_depth, int) or max_tree_depth < 1:
            raise ValueError(f"max_tree_depth must be an int >= 1, got {max_tree_depth!r}")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
        if not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        self.potential_and_grad = potential_and_grad
        self.num_warmup = num_warmup
        self.max_tree_depth = max_tree_depth
        self.target_accept = float(target_accept)
        self.adapt_step_size = adapt_step_size
        self.adapt_mass_matrix = adapt_mass_matrix
        self.dense_mass = dense_mass
        self.max_delta_energy = float(max_delta_energy)
        z = initial_params.detach().clone()
        self.num_chains, self.dim = z.shape
        self.dtype, self.device = z.dtype, z.device
        self._gen = torch.Generator(device=self.device).manual_seed(int(seed))
        self._finfo = torch.finfo(self.dtype)
        c, d = z.shape
        self.z = z
        self.pe, self.grad = potential_and_grad(z)
        eye = torch.eye(d, dtype=self.dtype, device=self.device)
        self.inverse_mass_matrix = eye.expand(c, d, d).clone() if dense_mass else torch.ones_like(z)
        self._set_mass_sqrt()
        self.step_size = torch.full((c,), float(step_size), dtype=self.dtype, device=self.device)
        self.iteration = 0
        self._windows = adaptation_schedule(num_warmup)
        self._window_idx = 0
        self._welford_reset()
        self._masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._leaf_eager = _make_leaf(potential_and_grad, self.max_delta_energy)
        self._leaf = self._leaf_eager
        self._merge = _merge_subtree
        self._compile_requested = compile
        self._merge_compile_requested = compile
        if compile:
            start_inductor_warmup(self.device)
        if num_warmup > 0 and adapt_step_size:
            self.step_size = self._find_reasonable_step_size(self.step_size)
        self._da_init(self.step_size)

    # ------------------------------------------------------------------ mass matrix
    def _set_mass_sqrt(self) -> None:
        minv = self.inverse_mass_matrix
        if minv.dim() == 2:
            self._mass_sqrt = minv.rsqrt()
            return
        # r = L^{-T} eps with minv = L L^T gives cov(r) = minv^{-1} = M.
        chol = torch.linalg.cholesky(minv)
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device).expand_as(minv)
        self._mass_sqrt = torch.linalg.solve_triangular(chol, eye, upper=False).mT.contiguous()

    def _momentum(self) -> torch.Tensor:
        eps = torch.randn(self.z.shape, generator=self._gen, dtype=self.dtype, device=self.device)
        if self._mass_sqrt.dim() == 2:
            return eps * self._mass_sqrt
        return torch.einsum("cde,ce->cd", self._mass_sqrt, eps)

    def _welford_reset(self) -> None:
        c, d = self.z.shape
        self._w_n = 0
        self._w_mean = torch.zeros(c, d, dtype=self.dtype, device=self.device)
        shape = (c, d, d) if self.dense_mass else (c, d)
        self._w_m2 = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _welford_update(self, z: torch.Tensor) -> None:
        self._w_n += 1
        delta_pre = z - self._w_mean
        self._w_mean = self._w_mean + delta_pre / self._w_n
        delta_post = z - self._w_mean
        if self.dense_mass:
            self._w_m2 = self._w_m2 + delta_post.unsqueeze(-1) * delta_pre.unsqueeze(-2)
        else:
            self._w_m2 = self._w_m2 + delta_pre * delta_post

    def _welford_final(self) -> torch.Tensor:
        n = self._w_n
        cov = self._w_m2 / (n - 1)
        # Stan's regularisation: shrink towards 1e-3 * identity, strongly for short windows.
        cov = (n / (n + 5.0)) * cov
        shrink = 1e-3 * (5.0 / (n + 5.0))
        if self.dense_mass:
            cov = cov + shrink * torch.eye(self.dim, dtype=self.dtype, device=self.device)
            # Keep the old matrix for a chain whose estimate is not positive definite.
            _, info = torch.linalg.cholesky_ex(cov)
            cov = torch.where((info == 0).view(-1, 1, 1), cov, self.inverse_mass_matrix)
            return cov
        return cov + shrink

    # ------------------------------------------------------------------ step size
    def _da_init(self, step_size: torch.Tensor) -> None:
        self._da_mu = math.log(10.0) + step_size.log()
        self._da_x = torch.zeros_like(step_size)
        self._da_xavg = torch.zeros_like(step_size)
        self._da_gavg = torch.zeros_like(step_size)
        self._da_t = 0

    def _da_update(self, accept_prob: torch.Tensor, final: bool) -> None:
        self._da_t += 1
        t = self._da_t
        g = self.target_accept - accept_prob
        self._da_gavg = (1 - 1 / (t + _DA_T0)) * self._da_gavg + g / (t + _DA_T0)
        self._da_x = self._da_mu - (t ** 0.5) / _DA_GAMMA * self._da_gavg
        w = t ** (-_DA_KAPPA)
        self._da_xavg = (1 - w) * self._da_xavg + w * self._da_x
        log_step = self._da_xavg if final else self._da_x
        self.step_size = log_step.exp().clamp(self._finfo.tiny, self._finfo.max)

    def _leapfrog(self, z, r, g, eps):
        minv = self.inverse_mass_matrix
        r = r - 0.5 * eps * g
        z = z + eps * _velocity(minv, r)
        pe, g = self.potential_and_grad(z)
        r = r - 0.5 * eps * g
        return z, r, pe, g

    def _find_reasonable_step_size(self, step_size: torch.Tensor) -> torch.Tensor:
        """Double or halve each chain's step size until one leapfrog's acceptance crosses 0.8.

        NumPyro's loop, run for all chains at once; a chain stops at its first crossing.
        """
        target = math.log(0.8)
        minv = self.inverse_mass_matrix
        step = step_size.clone()
        last = torch.zeros_like(step)
        direction = torch.zeros_like(step)
        tiny, big = self._finfo.tiny, self._finfo.max
        for _ in range(1000):
            not_extreme = ((step > tiny) | (direction >= 0)) & ((step < big) | (direction <= 0))
            running = not_extreme & ((last == 0) | (direction == last))
            if not bool(running.any()):
                break
            step = torch.where(running, step * 2.0 ** direction, step)
            r = self._momentum()
            _, r_new, pe_new, _ = self._leapfrog(self.z, r, self.grad, step.unsqueeze(-1))
            delta = (pe_new + _kinetic(minv, r_new)) - (self.pe + _kinetic(minv, r))
            new_dir = torch.where(target < -delta, 1.0, -1.0).to(step.dtype)
            last = torch.where(running, direction, last)
            direction = torch.where(running, new_dir, direction)
        return step

    # ------------------------------------------------------------------ compilation
    def _maybe_compile(self, args: tuple) -> None:
        self._compile_requested = False
        self._leaf = self._compiled_or_eager(self._leaf_eager, args, "leaf")

    @staticmethod
    def _compiled_or_eager(fn: Callable[..., tuple], args: tuple, what: str) -> Callable[..., tuple]:
        try:
            return compile_graph(fn, args)
        except Exception as exc:  # noqa: BLE001 - compilation is an optimisation only
            warnings.warn(
                f"compiling the NUTS {what} with TorchInductor failed ({type(exc).__name__}: "
                f"{str(exc)[:300]}); running it eagerly (same draws, slower)",
                RuntimeWarning,
                stacklevel=4,
            )
            return fn

    def _mask(self, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        m = self._masks.get(n)
        if m is None:
            write, check = _checkpoint_masks(n, self.max_tree_depth, self.device)
            if self._leaf is self._leaf_eager and not self._compile_requested:
                write, check = (write, None) if n % 2 == 0 else (None, check)
            m = self._masks[n] = (write, check)
        return m

    # ------------------------------------------------------------------ one iteration
    def _build_tree(self, r0: torch.Tensor, energy0: torch.Tensor) -> _Tree:
        c, d = self.z.shape
        minv = self.inverse_mass_matrix
        dev, dt = self.device, self.dtype
        zeros = torch.zeros(c, dtype=dt, device=dev)
        false = torch.zeros(c, dtype=torch.bool, device=dev)
        point = torch.stack((self.z, r0, self.grad), 1)
        t = _Tree(point, point, torch.stack((self.z, self.grad), 1), torch.stack((self.pe, energy0), 1),
                  zeros, r0, false, false, zeros, zeros, torch.zeros(c, dtype=torch.long, device=dev))
        active = torch.ones(c, dtype=torch.bool, device=dev)
        levels = self.max_tree_depth
        r_ck = torch.zeros(levels, c, d, dtype=dt, device=dev)
        rs_ck = torch.zeros_like(r_ck)
        rp_ck = torch.zeros_like(r_ck)
        neg_inf = torch.full((c,), -math.inf, dtype=dt, device=dev)
        for depth in range(self.max_tree_depth):
            right = torch.rand(c, generator=self._gen, dtype=dt, device=dev) < 0.5
            rc = right.view(-1, 1, 1)
            eps = torch.where(right, self.step_size, -self.step_size).unsqueeze(-1)
            size = 2 ** depth
            uniforms = torch.rand(size, c, generator=self._gen, dtype=dt, device=dev).unbind(0)
            # Subtree state; its proposal starts as the tree's (always replaced by leaf 0).
            near = torch.where(rc, t.right, t.left)
            state = (near, eps, minv, energy0, active, neg_inf,
                     torch.zeros_like(r0), zeros, zeros, t.prop, t.prop_e, false, false, r_ck, rs_ck, rp_ck)
            out = None
            for n in range(size):
                args = state + self._mask(n) + (uniforms[n],)
                if self._compile_requested:
                    self._maybe_compile(args)
                out = self._leaf(*args)
                state = (out[0],) + state[1:4] + out[1:]
                if n + 1 < size and not bool(out[1].any()):
                    break
            (front, _, w_sub, rsum_sub, acc_sub, n_sub, s_prop, s_prop_e, turn_sub, div_sub,
             r_ck, rs_ck, rp_ck) = out
            u = torch.rand(c, generator=self._gen, dtype=dt, device=dev)
            margs = (minv, t.left, t.right, t.prop, t.prop_e, t.weight, t.r_sum, t.turning, t.diverging,
                     t.sum_acc, t.num, t.depth, right, near, front, w_sub, rsum_sub, acc_sub, n_sub, s_prop,
                     s_prop_e, turn_sub, div_sub, r_ck[0], active, u)
            if self._merge_compile_requested:
                self._merge = self._compiled_or_eager(_merge_subtree, margs, "merge")
                self._merge_compile_requested = False
            *fields, active = self._merge(*margs)
            t = _Tree(*fields)
            if not bool(active.any()):
                break
        return t

    def step(self) -> dict[str, torch.Tensor]:
        """Run one NUTS iteration for every chain (adapting while in warmup).

        Returns
        -------
        dict of str to Tensor
            ``z`` (C, D) the new state, and per-chain (C,) statistics ``diverging``,
            ``energy``, ``tree_depth``, ``n_steps``, ``step_size`` (used by this iteration),
            ``acceptance_rate`` and ``lp`` (log density, i.e. minus the potential).
        """
        r0 = self._momentum()
        energy0 = self.pe + _kinetic(self.inverse_mass_matrix, r0)
        step_used = self.step_size
        t = self._build_tree(r0, energy0)
        self.z, self.grad = t.prop[:, 0].contiguous(), t.prop[:, 1].contiguous()
        self.pe = t.prop_e[:, 0].contiguous()
        accept = t.sum_acc / t.num
        it = self.iteration
        if it < self.num_warmup:
            self._adapt(it, accept)
        self.iteration += 1
        return {"z": self.z, "diverging": t.diverging, "energy": t.prop_e[:, 1], "tree_depth": t.depth,
                "n_steps": t.num.long(), "step_size": step_used, "acceptance_rate": accept, "lp": -self.pe}

    def _adapt(self, it: int, accept: torch.Tensor) -> None:
        if self.adapt_step_size:
            self._da_update(accept, final=it == self.num_warmup - 1)
        if not self._windows:
            return
        nwin = len(self._windows)
        middle = 0 < self._window_idx < nwin - 1
        if self.adapt_mass_matrix and middle:
            self._welford_update(self.z)
        if it == self._windows[self._window_idx][1]:
            self._window_idx += 1
            if middle:
                if self.adapt_mass_matrix:
                    self.inverse_mass_matrix = self._welford_final()
                    self._set_mass_sqrt()
                    self._welford_reset()
                if self.adapt_step_size:
                    self.step_size = self._find_reasonable_step_size(self.step_size)
                    self._da_init(self.step_size)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue sampling after warmup (CPU tensors)."""
        return {
            "z": self.z.cpu(), "pe": self.pe.cpu(), "grad": self.grad.cpu(),
            "step_size": self.step_size.cpu(), "inverse_mass_matrix": self.inverse_mass_matrix.cpu(),
            "iteration": self.iteration, "rng": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken after warmup."""
        dev = self.device
        self.z, self.pe, self.grad = state["z"].to(dev), state["pe"].to(dev), state["grad"].to(dev)
        self.step_size = state["step_size"].to(dev)
        self.inverse_mass_matrix = state["inverse_mass_matrix"].to(dev)
        self._set_mass_sqrt()
        self.iteration = int(state["iteration"])
        self._gen.set_state(state["rng"])


# ---------------------------------------------------------------------------------------------
# The engine behind fit(..., MCMCConfig(backend="batched"))


def _verification_points(q0: torch.Tensor, seed: int) -> torch.Tensor:
    """Distinct points near the initial ones: at least two, so that batching errors show."""
    g = torch.Generator(device=q0.device).manual_seed(seed + 7919)
    k = max(2, min(q0.shape[0], 4))
    base = q0[torch.arange(k, device=q0.device) % q0.shape[0]]
    noise = torch.randn(base.shape, generator=g, dtype=base.dtype, device=base.device)
    return base + 0.5 * noise


def build_batched_potential(adapter: Any, data: dict[str, Any], config: MCMCConfig, *, seed: int,
                            device: torch.device) -> BatchedPotential:
    """Initialise the chains and check that the model batches; raise ModelNotVectorizableError if not."""
    pyro.set_rng_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.*deprecated", category=DeprecationWarning)
        pot = BatchedPotential(adapter.fn, data, num_chains=config.num_chains,
                               max_plate_nesting=adapter.sites.max_plate_nesting,
                               init_strategy=config.init_strategy)
    pot.verify(_verification_points(pot.initial_params, seed))
    return pot


def run_batched_mcmc(
    adapter: Any,
    data: dict[str, Any],
    config: MCMCConfig,
    *,
    seed: int,
    device: torch.device,
    progress: bool,
    checkpoint_dir: str | None,
    callbacks: Callbacks,
    fingerprint: str,
    potential: BatchedPotential | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run all chains of ``config`` as one batch; return constrained draws and sample stats.

    Returns
    -------
    draws : dict of str to Tensor (chain, draw, *site_shape)
        Constrained latent draws (CPU).
    stats : dict of str to Tensor (chain, draw)
        ``diverging``, ``energy``, ``tree_depth``, ``n_steps``, ``step_size``,
        ``acceptance_rate``, ``lp``.

    Raises
    ------
    ModelNotVectorizableError
        Before any sampling, when the model cannot be batched over chains.
    """
    if config.jit_compile:
        start_inductor_warmup(device)
    with warnings.catch_warnings(), pyro.validation_enabled(False):
        pot = potential if potential is not None else build_batched_potential(
            adapter, data, config, seed=seed, device=device)
        return _sample(pot, config, seed=seed, device=device, progress=progress,
                       checkpoint_dir=checkpoint_dir, callbacks=callbacks, fingerprint=fingerprint)


def _sample(pot, config, *, seed, device, progress, checkpoint_dir, callbacks, fingerprint):
    c, ns, thin = config.num_chains, config.num_samples, config.thin
    total = config.num_warmup + ns * thin
    ck = load_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if ck is not None:
        check_resume(ck, "mcmc_batched", fingerprint, checkpoint_dir)
    draws = torch.empty(ns, c, pot.dim, dtype=pot.dtype)
    stats = {k: torch.empty(ns, c, dtype=torch.bool if k == "diverging" else
                            (torch.long if k in ("tree_depth", "n_steps") else pot.dtype)) for k in STAT_NAMES}
    done = 0
    if ck is not None and ck["done"] > 0:
        done = int(ck["done"])
        draws[:done] = ck["draws"]
        for k in STAT_NAMES:
            stats[k][:done] = ck["stats"][k]
    if done < ns:
        nuts = BatchedNUTS(
            pot.potential_and_grad, pot.initial_params, num_warmup=config.num_warmup,
            max_tree_depth=config.max_tree_depth, target_accept=config.target_accept,
            step_size=config.step_size, adapt_step_size=config.adapt_step_size,
            adapt_mass_matrix=config.adapt_mass_matrix, dense_mass=config.dense_mass,
            seed=seed, compile=config.jit_compile,
        )
        if done > 0:
            nuts.load_state_dict(ck["sampler"])

        def snapshot(complete: bool) -> dict[str, Any]:
            return {"engine": "mcmc_batched", "fingerprint": fingerprint, "done": done, "complete": complete,
                    "draws": draws[:done].clone(), "stats": {k: v[:done].clone() for k, v in stats.items()},
                    "sampler": nuts.state_dict()}

        bar = progress_bar(progress, total, f"{c} chains (batched NUTS)")
        bar.update(nuts.iteration)
        try:
            for it in range(nuts.iteration, total):
                out = nuts.step()
                bar.update(1)
                post = it - config.num_warmup
                if post >= 0 and post % thin == thin - 1:
                    draws[done] = out["z"].detach().cpu()
                    for k in STAT_NAMES:
                        stats[k][done] = out[k].detach().cpu()
                    done += 1
                    if checkpoint_dir is not None and done % config.checkpoint_every == 0 and done < ns:
                        callbacks.checkpoint(save_checkpoint(checkpoint_dir, snapshot(False)))
                if bar.n % 50 == 0 and not bar.disable:
                    ndiv = int(stats["diverging"][:done].sum())
                    bar.set_postfix(step=f"{float(out['step_size'].mean()):.3g}",
                                    acc=f"{float(out['acceptance_rate'].mean()):.2f}", div=ndiv)
                if callbacks:
                    vals = {k: out[k].detach().cpu().tolist() for k in STAT_NAMES}
                    phase = "warmup" if post < 0 else "sampling"
                    for ch in range(c):
                        callbacks.step({"engine": "mcmc", "chain": ch, "iteration": it + 1,
                                        "num_iterations": total, "phase": phase,
                                        **{k: vals[k][ch] for k in STAT_NAMES}})
        except (KeyboardInterrupt, SystemExit):
            if checkpoint_dir is not None and done > 0:
                save_checkpoint(checkpoint_dir, snapshot(False))
            raise
        finally:
            bar.close()
        if checkpoint_dir is not None:
            callbacks.checkpoint(save_checkpoint(checkpoint_dir, snapshot(True)))
    # Unconstrained (draw, chain, D) -> constrained (chain, draw, *site_shape).
    flat = draws.transpose(0, 1).reshape(c * ns, pot.dim).to(pot.device)
    with torch.no_grad():
        cons = pot.constrain(flat)
    out_draws = {k: v.reshape((c, ns) + tuple(v.shape[1:])).cpu() for k, v in cons.items()}
    out_stats = {k: v.transpose(0, 1).contiguous() for k, v in stats.items()}
    return out_draws, out_stats
