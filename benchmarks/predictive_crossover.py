"""Where a BNN's predictions should loop over draws instead of running under ``vmap``.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predictive_crossover.py [--draws 500]

For a few MLP shapes and numbers of prediction points, times ``FitResult.predict`` with the
per-draw loop forced on and forced off (``pyro_models.models.per_draw.LOOP_MIN_MACS`` set to 0
or to a huge number; the chunk budget follows it) and prints ``loop / vmap`` time ratios, plus
which path the shipped threshold picks. Best of 3 calls each, one process, after one warm-up
call; the fits are 2 SVI steps (only the shapes matter here).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import pyro_models
from pyro_models import SVIConfig
from pyro_models.models import per_draw
from pyro_models.models.bnn import BNNRegression

SHAPES = ((1, (50,)), (8, (50, 50)), (8, (100, 100)), (4, (20,)))
POINTS = (50, 200, 1000, 4000)


def _best(call, reps: int = 3) -> float:
    call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=500)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    shipped = per_draw.LOOP_MIN_MACS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.draws} draws; "
          f"threshold LOOP_MIN_MACS = {shipped}\n")
    print("| net | " + " | ".join(f"{n} points" for n in POINTS) + " |")
    print("|---" * (len(POINTS) + 1) + "|")
    for d, hidden in SHAPES:
        torch.manual_seed(0)
        model = BNNRegression(in_features=d, hidden_sizes=hidden)
        res = pyro_models.fit(model, {"x": torch.randn(200, d), "y": torch.randn(200)},
                              SVIConfig(num_steps=2, num_posterior_samples=args.draws), seed=0, progress=False)
        res.samples()
        numbers = sum(p.numel() for p in model.net.parameters())
        cells = []
        for n in POINTS:
            x = torch.randn(n, d)
            timed = {}
            for mode, threshold in (("loop", 0), ("vmap", 2**62)):
                per_draw.LOOP_MIN_MACS = threshold
                with torch.no_grad():
                    timed[mode] = _best(lambda: res.predict({"x": x}))
            per_draw.LOOP_MIN_MACS = shipped
            ratio = timed["loop"] / timed["vmap"]
            picks = "loop" if n * numbers >= shipped else "vmap"
            right = (picks == "loop") == (ratio <= 1)
            cells.append(f"{ratio:.2f} ({picks}{'' if right else ', slower'})")
        print(f"| {d}-{'-'.join(map(str, hidden))}-1 | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
