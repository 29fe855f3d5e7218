"""Compiling small tensor functions with Inductor: correct results, and cheap in later processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pyro_models.inference.graph_compile import compile_graph, contract_products


def _fn(x, y, mask):
    z = torch.where(mask, x * y, x - y)
    return z.sum(-1), torch.logaddexp(x, y), mask & (z > 0)


def _args(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.rand(4, 3, generator=g) < 0.5)


def test_compiled_graph_equals_eager_on_new_inputs():
    f = compile_graph(_fn, _args(0))
    for seed in (1, 2):
        args = _args(seed)
        for got, want in zip(f(*args), _fn(*args)):
            assert got.dtype == want.dtype and got.shape == want.shape
            if want.dtype == torch.bool:
                assert torch.equal(got, want)
            else:
                torch.testing.assert_close(got, want)


def test_non_contiguous_inputs_are_accepted():
    f = compile_graph(_fn, _args(0))
    x, y, mask = _args(4)
    xt = x.t().contiguous().t()  # same values, column-major strides
    assert not xt.is_contiguous()
    for got, want in zip(f(xt, y, mask), _fn(x, y, mask)):
        assert torch.equal(got, want) if want.dtype == torch.bool else torch.allclose(got, want)


def test_non_tensor_arguments_are_refused_by_position():
    with pytest.raises(TypeError, match=r"args \[1\] are \['float'\]"):
        compile_graph(lambda x, s: (x * s,), (torch.ones(3), 2.0))
    with pytest.raises(TypeError, match="fn must be callable"):
        compile_graph("not a function", (torch.ones(3),))


def test_inputs_that_alias_at_trace_time_stay_separate():
    # make_fx would merge two arguments that are the same tensor into one graph input.
    x = torch.randn(4, 3)
    f = compile_graph(lambda a, b: (a - b,), (x, x))
    y = torch.randn(4, 3)
    torch.testing.assert_close(f(x, y)[0], x - y)


def _traced(fn, *args):
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn, decomposition_table=select_decomp_table())(*args)


_G = torch.Generator().manual_seed(3)
_X = torch.randn(3000, 20, generator=_G)


@pytest.mark.parametrize(
    "fn, shapes",
    [
        (lambda w: ((_X * w[:, None, :]).sum(-1),), [(4, 20)]),  # a linear predictor per chain
        (lambda g: ((g[:, :, None] * _X).sum(1, keepdim=True),), [(4, 3000)]),  # its gradient
        (lambda g: ((g.unsqueeze(-1).expand(4, 3000, 20) * _X).sum(1),), [(4, 3000)]),  # through expand
        (lambda a, b: ((a * b).sum((0, 2)),), [(8, 64, 80), (8, 64, 80)]),  # two summed dims
        (lambda a, b: ((a * b).sum(-1),), [(1, 200, 300), (300,)]),  # size-1 dims on both sides
    ],
)
def test_large_multiply_sums_become_contractions_with_the_same_values(fn, shapes):
    args = tuple(torch.randn(*s, generator=_G) for s in shapes)
    gm = _traced(fn, *args)
    assert contract_products(gm) == 1
    assert not any(n.target is torch.ops.aten.sum.dim_IntList for n in gm.graph.nodes)
    torch.testing.assert_close(gm(*args)[0], fn(*args)[0], rtol=1e-5, atol=1e-4)
    again = tuple(torch.randn(*s, generator=_G) for s in shapes)
    torch.testing.assert_close(compile_graph(fn, args)(*again)[0], fn(*again)[0], rtol=1e-5, atol=1e-4)


def test_small_or_shared_products_are_left_to_inductor():
    small = _traced(lambda a, b: ((a * b).sum(-1),), torch.randn(4, 10), torch.randn(4, 10))
    assert contract_products(small) == 0

    def shared(a, b):
        p = a * b
        return p.sum(-1), p.exp()

    assert contract_products(_traced(shared, torch.randn(400, 100), torch.randn(400, 100))) == 0
    # Mixed precision: the multiply promotes, einsum would not.
    mixed = (torch.randn(400, 100), torch.randn(400, 100, dtype=torch.float64))
    assert contract_products(_traced(lambda a, b: ((a * b).sum(-1),), *mixed)) == 0


_CHILD = textwrap.dedent(
    """
    import json, sys, torch
    import torch._inductor.cpu_vec_isa as cpu_vec_isa
    from torch._dynamo.utils import counters
    probes = []
    original = cpu_vec_isa.VecISA.check_build
    def counting(self, code):
        probes.append(str(self))
        return original(self, code)
    cpu_vec_isa.VecISA.check_build = counting
    from pyro_models.inference import graph_compile
    graph_compile.start_inductor_warmup("cpu")
    def fn(x, y):
        return (torch.sin(x) * y + x.exp().sum(-1, keepdim=True),)
    args = (torch.linspace(0, 1, 12).reshape(4, 3), torch.linspace(1, 2, 12).reshape(4, 3))
    f = graph_compile.compile_graph(fn, args)
    assert torch.allclose(f(*args)[0], fn(*args)[0])
    print(json.dumps({"hit": counters["inductor"]["fxgraph_cache_hit"],
                      "miss": counters["inductor"]["fxgraph_cache_miss"],
                      "trust": graph_compile._TRUST_VEC_ISA, "probes": probes}))
    """
)


def _child(cache_dir) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop("TORCHINDUCTOR_VEC_ISA_OK", None)
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reuses_the_compiled_kernel(tmp_path):
    """Regression: without a tracing context Inductor bypassed its cache ('No shape env')."""
    first = _child(tmp_path)
    second = _child(tmp_path)
    assert first["miss"] == 1 and first["hit"] == 0
    assert second["hit"] == 1 and second["miss"] == 0
    if first["trust"]:
        # Every instruction set the CPU reports passed the probe: later processes skip the
        # base probes (Inductor still runs its sub-feature probes, e.g. AVX512-VNNI code).
        assert second["trust"] and len(second["probes"]) < len(first["probes"])
    else:
        assert second["probes"] == first["probes"], "the probe may only be skipped after one that found every set usable"
