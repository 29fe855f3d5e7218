"""Compile a pure tensor function to one TorchInductor kernel, cheaply on every run after the first.

The batched NUTS engine compiles two small functions per run (a leaf of the trajectory and
the step that joins a subtree to the tree). What makes that slow is not the kernels but
Inductor's set-up in every new process; this module removes what it can of that:

* the ATen graph is handed to Inductor inside a tracing context with a shape environment,
  which is what Inductor's on-disk FX-graph cache needs (without it every process
  recompiles the C++: ~5 s on a 2-core machine);
* Inductor's per-process probe of the CPU's vector instructions (it builds and loads a test
  library in child processes for each candidate) and the hash of its own sources run in a
  background thread while the model is traced and the chains start;
* when an earlier process on this machine found every instruction set the CPU reports
  usable, the base probes are skipped (a small record in Inductor's cache directory, keyed
  on the torch version, Python, compiler settings and CPU flags; Inductor then makes the
  same choice it would have made after probing, and still runs its sub-feature probes);
* large multiply-then-sum contractions become matrix multiplies (:func:`contract_products`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import platform
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch

__all__ = ["compile_graph", "contract_products", "start_inductor_warmup"]

_WARMUP: threading.Thread | None = None
_TRUST_VEC_ISA = False


def _isa_record_path(cpu_vec_isa: Any) -> tuple[Path, str] | None:
    """Where the probe's result is kept, and the fingerprint it must match (x86 only)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    from torch._inductor import config
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    fingerprint = json.dumps([torch.__version__, sys.executable, platform.machine(),
                              sorted(cpu_vec_isa.x86_isa_checker()), str(config.cpp.cxx),
                              os.environ.get("CXX", "")])
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return Path(cache_dir()) / f"pyro_models_vec_isa_{key}.json", fingerprint


def _flag_supported(cpu_vec_isa: Any) -> list[str]:
    # What Inductor's valid_vec_isa_list returns when it trusts the CPU flags without probing.
    flags = cpu_vec_isa.x86_isa_checker()
    return [str(i) for i in cpu_vec_isa.supported_vec_isa_list if all(f in flags for f in str(i).split())]


def start_inductor_warmup(device: torch.device | str) -> None:
    """Start Inductor's per-process set-up in a background thread (once per process, CPU only).

    The imports happen here, in the calling thread: importing Inductor's circular modules
    from two threads at once is not safe. The thread runs the vector-instruction probe (or
    skips it, see the module docstring) and hashes Inductor's sources; both mostly wait on
    child processes and files. :func:`compile_graph` waits for it before compiling.

    Examples
    --------
    >>> start_inductor_warmup("cpu")  # imports Inductor here, probes in a thread
    """
    global _WARMUP, _TRUST_VEC_ISA
    if _WARMUP is not None or torch.device(device).type != "cpu":
        return
    try:
        for name in ("compile_fx", "cpp_builder", "decomposition"):
            importlib.import_module(f"torch._inductor.{name}")
        codecache = importlib.import_module("torch._inductor.codecache")
        cpu_vec_isa = importlib.import_module("torch._inductor.cpu_vec_isa")
        from torch._inductor import config
        record = _isa_record_path(cpu_vec_isa) if config.cpp.vec_isa_ok is None else None
    except Exception:  # noqa: BLE001 - compiling reports any real problem
        return
    if record is not None:
        path, fingerprint = record
        try:
            _TRUST_VEC_ISA = json.loads(path.read_text()).get("fingerprint") == fingerprint
        except (OSError, ValueError):
            _TRUST_VEC_ISA = False

    def warm() -> None:
        global _TRUST_VEC_ISA
        try:
            if not _TRUST_VEC_ISA:
                cpu_vec_isa.pick_vec_isa()  # the probe; Inductor caches it for the process
                if record is not None and [str(i) for i in cpu_vec_isa.valid_vec_isa_list()] == \
                        _flag_supported(cpu_vec_isa):
                    # Every flag-supported set passed: trusting the flags gives the same
                    # choice, and the same cache key as the processes that skip the probe.
                    _TRUST_VEC_ISA = True
                    tmp = record[0].with_suffix(f".tmp{os.getpid()}")
                    tmp.write_text(json.dumps({"fingerprint": record[1]}))
                    os.replace(tmp, record[0])
            codecache.torch_key()
        except Exception:  # noqa: BLE001 - the compile itself redoes (and reports) this work
            pass

    _WARMUP = threading.Thread(target=warm, name="pyro-models-inductor-warmup", daemon=True)
    _WARMUP.start()


def _inductor_compile(gm: torch.fx.GraphModule, args: list[torch.Tensor]) -> Callable:
    """``compile_fx_inner`` inside a tracing context, so that Inductor's FX-graph cache applies."""
    from torch._guards import TracingContext, tracing
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    if _WARMUP is not None:
        _WARMUP.join()  # never probe twice at once; its results are cached for the process
    fake_mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    patch = {"cpp.vec_isa_ok": True} if _TRUST_VEC_ISA else {}
    with tracing(TracingContext(fake_mode)), config.patch(patch):
        return compile_fx_inner(gm, [fake_mode.from_tensor(a, static_shapes=True) for a in args])


# Small products stay in Inductor's fused loops, where an extra matrix-multiply call would
# cost more than it saves; large ones go to a matrix multiply (a logistic regression's
# potential and gradient, 5000 x 25 features for 4 chains: 324 us before, 119 us after).
_CONTRACT_MIN_NUMEL = 1 << 15
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _shape(gm: torch.fx.GraphModule, node: Any, dtype: torch.dtype | None = None) -> tuple[int, ...] | None:
    """The static shape of a floating-point graph value (of ``dtype`` if given), else None."""
    if not isinstance(node, torch.fx.Node):
        return None
    val = node.meta.get("val")
    if val is None and node.op == "get_attr":
        val = getattr(gm, node.target, None)
    if not isinstance(val, torch.Tensor) or not val.dtype.is_floating_point:
        return None
    if dtype is not None and val.dtype != dtype:
        return None
    return tuple(int(d) for d in val.shape)


def contract_products(gm: torch.fx.GraphModule) -> int:
    """Rewrite large ``sum(a * b, dims)`` in an ATen graph as ``einsum``; return how many.

    Broadcasting models write contractions as multiply-and-sum (``(x * w).sum(-1)`` is a
    linear predictor for every chain at once), and so does the gradient of a matrix
    product. Inductor compiles these into loops over the full broadcast product; a matrix
    multiply is about twice as fast on CPU for data-sized operands (XLA makes the same
    rewrite). Operands seen through ``expand`` use their unexpanded tensor. Re-trace the
    graph afterwards so that ``einsum`` decomposes into matrix multiplies.
    """
    aten = torch.ops.aten
    graph, count = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.sum.dim_IntList or node.kwargs.get("dtype"):
            continue
        prod = node.args[0]
        if (not isinstance(prod, torch.fx.Node) or prod.target is not aten.mul.Tensor or len(prod.users) != 1
                or len(node.args) < 2 or node.args[1] is None):
            continue
        out_shape, prod_shape = _shape(gm, node), _shape(gm, prod)
        if out_shape is None or prod_shape is None or math.prod(prod_shape) < _CONTRACT_MIN_NUMEL:
            continue
        rank = len(prod_shape)
        summed = {d % rank for d in node.args[1]}
        operands = []
        for arg in prod.args:
            src = arg.args[0] if isinstance(arg, torch.fx.Node) and arg.target is aten.expand.default else arg
            shape = _shape(gm, src, dtype=node.meta["val"].dtype)  # einsum does not promote
            if shape is None or len(shape) > rank:
                break
            aligned = (1,) * (rank - len(shape)) + shape
            if any(a not in (1, p) for a, p in zip(aligned, prod_shape)):
                break
            operands.append((src, shape, [k for k in range(rank) if aligned[k] != 1]))
        else:
            if len(operands) != 2 or rank > len(_LETTERS):
                continue
            kept = [k for k in range(rank) if k not in summed and prod_shape[k] != 1]
            equation = ",".join("".join(_LETTERS[k] for k in dims) for _, _, dims in operands)
            equation += "->" + "".join(_LETTERS[k] for k in kept)
            with graph.inserting_before(node):
                squeezed = [graph.call_function(aten.reshape.default, (src, [prod_shape[k] for k in dims]))
                            for src, _, dims in operands]
                contracted = graph.call_function(aten.einsum.default, (equation, squeezed))
                new = graph.call_function(aten.reshape.default, (contracted, list(out_shape)))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            for dead in (prod, *prod.args):
                if isinstance(dead, torch.fx.Node) and not dead.users and dead.op == "call_function":
                    graph.erase_node(dead)
            count += 1
    if count:
        graph.lint()
        gm.recompile()
    return count


def compile_graph(fn: Callable[..., tuple], args: tuple) -> Callable[..., tuple]:
    """Trace ``fn`` to an ATen graph and compile it with TorchInductor.

    ``fn`` maps tensors to a tuple of tensors without Python control flow on their values;
    tracing runs through any Python it calls (Pyro's included), so a model's potential is
    inlined. The graph is handed to Inductor directly (no TorchDynamo frame, so no guards
    or recompilation on each call); if that private entry point fails, ``torch.compile`` on
    the traced graph is used instead. The compiled function is checked against ``fn`` on
    ``args`` before it is returned; shapes and dtypes are fixed to those of ``args``.

    Raises
    ------
    TypeError
        If ``fn`` is not callable or an argument is not a tensor.
    RuntimeError
        If the compiled function disagrees with ``fn`` on ``args``.

    Examples
    --------
    >>> f = compile_graph(lambda x, y: (x * y + 1,), (torch.ones(3), torch.ones(3)))
    >>> f(torch.ones(3), 2 * torch.ones(3))[0]
    tensor([3., 3., 3.])
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    bad = [i for i, a in enumerate(args) if not isinstance(a, torch.Tensor)]
    if bad:
        raise TypeError(f"compile_graph traces tensors only; args {bad} are "
                        f"{[type(args[i]).__name__ for i in bad]} (close over other values in fn)")
    # make_fx maps tensors to graph inputs by identity: inputs that are the same tensor at
    # trace time (the NUTS tree starts with several) would be merged into one placeholder.
    args = tuple(a.clone() for a in args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pyro.validation_enabled(False):
            try:
                from torch._inductor.decomposition import select_decomp_table

                gm = make_fx(fn, decomposition_table=select_decomp_table())(*args)
                if contract_products(gm):
                    gm = make_fx(gm, decomposition_table=select_decomp_table())(*args)
                gm.graph.eliminate_dead_code()
                gm.recompile()
                inner = _inductor_compile(gm, list(args))

                def compiled(*a: torch.Tensor) -> tuple:
                    # The generated code asserts the traced (contiguous) strides and consumes
                    # (clears) the list it is given. Inputs are nearly always contiguous, so
                    # they go as they are; the graph never writes its inputs, so a failed
                    # stride check can simply be retried with contiguous copies.
                    try:
                        return tuple(inner(list(a)))
                    except AssertionError:
                        return tuple(inner([x.contiguous() for x in a]))

                got = compiled(*args)
            except Exception:  # noqa: BLE001 - try the public entry point instead
                gm = make_fx(fn)(*args)
                gm.graph.eliminate_dead_code()
                gm.recompile()
                compiled = torch.compile(gm, dynamic=False, fullgraph=True)
                got = compiled(*args)
    want = fn(*args)
    for a, b in zip(got, want):
        if a.dtype == torch.bool:
            ok = torch.equal(a, b)
        else:
            ok = torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)
        if not ok:
            raise RuntimeError("the compiled graph disagrees with the eager one")
    return compiled
