"""Execute, refresh and check the tutorial notebooks.

Every notebook in ``tutorials/`` is listed once, in reading order, in :data:`NOTEBOOKS`; the
test suite (``tests/test_tutorials.py``) fails when a notebook is missing from that list,
and runs each listed notebook in smoke mode.

Usage (from the repository root)::

    .venv/bin/python tutorials/run_notebooks.py --check            # listing + public-API check
    .venv/bin/python tutorials/run_notebooks.py --smoke            # every notebook, tiny budgets
    .venv/bin/python tutorials/run_notebooks.py --smoke 02_ab_testing.ipynb
    .venv/bin/python tutorials/run_notebooks.py --full             # re-run all, write outputs
    .venv/bin/python tutorials/run_notebooks.py --full 01 03       # by unique prefix

Smoke mode sets ``PYRO_MODELS_SMOKE=1``; each notebook reads it in its first code cell and
shrinks its budgets (few SVI steps, few draws). Smoke runs execute a copy of the notebook and
leave the committed file untouched; ``--full`` executes in place and writes the outputs,
stripped of volatile metadata (timings, kernel versions) so that diffs stay small. Both run
each notebook in a fresh ``python3`` kernel (the one ipykernel installed into this
interpreter's environment) with a temporary working directory, so files a notebook writes
never land in the repository.

Tutorials use only the public API of ``pyro_models``: :func:`private_access` flags
``from pyro_models... import _name``, ``import pyro_models._x`` and any ``obj._attr`` in
code cells, and ``--check`` fails on them.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Every tutorial notebook, in reading order. A new notebook is added here (and nowhere
#: else): the tests execute each entry in smoke mode and fail on a notebook not listed.
NOTEBOOKS: list[str] = [
    "01_conjugate_updating.ipynb",
    "02_ab_testing.ipynb",
    "03_map_is_regularisation.ipynb",
    "04_regression_with_nuts.ipynb",
    "05_hierarchical_models.ipynb",
    "06_vi_vs_mcmc.ipynb",
    "07_bnn_regression.ipynb",
    "08_classification_you_can_trust.ipynb",
    "09_gaussian_processes.ipynb",
    "10_vaes.ipynb",
    "11_active_learning.ipynb",
    "12_writing_a_guide.ipynb",
]

#: The environment variable notebooks read to pick smoke budgets.
SMOKE_ENV = "PYRO_MODELS_SMOKE"
#: Seconds one cell may run before the execution is abandoned.
SMOKE_CELL_TIMEOUT = 300
FULL_CELL_TIMEOUT = 1200
KERNEL_NAME = "python3"

# The language_info fields a kernel reports that do not change between runs; its "version"
# (the interpreter's patch release) does, so it is dropped.
_STABLE_LANGUAGE_INFO = ("name", "pygments_lexer", "codemirror_mode", "file_extension", "mimetype",
                         "nbconvert_exporter")


# ------------------------------------------------------------------------------ listing
def present() -> list[str]:
    """File names of the notebooks in ``tutorials/``, sorted."""
    return sorted(p.name for p in HERE.glob("*.ipynb"))


def unlisted() -> list[str]:
    """Notebooks in ``tutorials/`` that :data:`NOTEBOOKS` does not list."""
    return [n for n in present() if n not in NOTEBOOKS]


def missing() -> list[str]:
    """Entries of :data:`NOTEBOOKS` with no file in ``tutorials/``."""
    return [n for n in NOTEBOOKS if not (HERE / n).is_file()]


def duplicates() -> list[str]:
    """Entries listed more than once in :data:`NOTEBOOKS`."""
    return sorted({n for n in NOTEBOOKS if NOTEBOOKS.count(n) > 1})


# ------------------------------------------------------------------------------ public API
def _strip_magics(source: str) -> str:
    # IPython lines (%magic, !shell) are not Python; blank them so tokenize keeps line numbers.
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _is_package(module: str) -> bool:
    return module == "pyro_models" or module.startswith("pyro_models.")


def _private(dotted: str) -> bool:
    """Any component of a dotted name is private (``_x``), dunders (``__x__``) excepted."""
    return any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in dotted.split("."))


def private_access_in_source(source: str) -> list[str]:
    """Private names a code cell reaches for: ``from pyro_models.x import _y``, ``a._b``.

    Strings and comments are ignored (the parsed code, not its text, is inspected); dunder
    names such as ``obj.__class__`` are allowed.

    Parameters
    ----------
    source : str
        The code of one cell.

    Returns
    -------
    list of str
        One ``"line N: ..."`` description per offending access (empty when clean).

    Examples
    --------
    >>> private_access_in_source("from pyro_models.models.conjugate import _lbeta")
    ['line 1: imports private name _lbeta from pyro_models.models.conjugate']
    >>> private_access_in_source("x = res._draws  # private")
    ['line 1: private attribute ._draws']
    >>> private_access_in_source("s = 'a._b'; n = type(x).__name__")
    []
    """
    try:
        tree = ast.parse(_strip_magics(source))
    except SyntaxError as exc:
        return [f"cannot parse the cell ({exc.msg}, line {exc.lineno})"]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            if _private(module):
                found.append((node.lineno, f"imports from private module {module}"))
            if _is_package(module):
                found += [(node.lineno, f"imports private name {a.name} from {module}")
                          for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"imports private module {a.name}") for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            found.append((node.lineno, f"private attribute .{node.attr}"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def private_access(path: Path) -> list[str]:
    """:func:`private_access_in_source` over every code cell of a notebook, naming the cell."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    found = []
    for idx, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for item in private_access_in_source(cell.source):
            found.append(f"{path.name} cell {idx}: {item}")
    return found


def check() -> list[str]:
    """Problems with the tutorials folder (empty list when all is well).

    Every ``tutorials/*.ipynb`` must be listed in :data:`NOTEBOOKS` exactly once, every
    listed file must exist, and no code cell may touch private names of the package.
    """
    problems = [f"{n} is in tutorials/ but not listed in NOTEBOOKS (tutorials/run_notebooks.py)"
                for n in unlisted()]
    problems += [f"{n} is listed in NOTEBOOKS but tutorials/{n} does not exist" for n in missing()]
    problems += [f"{n} is listed more than once in NOTEBOOKS" for n in duplicates()]
    for name in present():
        problems += private_access(HERE / name)
    return problems


# ------------------------------------------------------------------------------ execution
def _kernel_env(smoke: bool) -> dict[str, str]:
    env = dict(os.environ)
    env[SMOKE_ENV] = "1" if smoke else "0"
    if smoke:
        # Smoke runs go in parallel (one per pytest-xdist worker): one thread each, unless the
        # caller says otherwise, so that they do not oversubscribe the cores.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
    # Figures render inline whatever the caller's backend; a GUI backend would block.
    env.pop("MPLBACKEND", None)
    return env


def strip_volatile(nb: object) -> None:
    """Drop metadata that changes from run to run (timings, kernel version), in place."""
    meta = nb.metadata  # type: ignore[attr-defined]
    for key in ("widgets", "papermill", "execution"):
        meta.pop(key, None)
    meta["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": KERNEL_NAME}
    info = meta.get("language_info", {})
    meta["language_info"] = {k: info[k] for k in _STABLE_LANGUAGE_INFO if k in info}
    for cell in nb.cells:  # type: ignore[attr-defined]
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                out.get("metadata", {}).pop("execution", None)


def execute(path: Path, *, smoke: bool, timeout: int | None = None, write: bool = False) -> float:
    """Run a notebook top to bottom in a fresh kernel; raise on the first failing cell.

    Parameters
    ----------
    path : Path
        The notebook.
    smoke : bool
        Set ``PYRO_MODELS_SMOKE=1`` so the notebook uses tiny budgets.
    timeout : int, optional
        Seconds per cell (default :data:`SMOKE_CELL_TIMEOUT` or :data:`FULL_CELL_TIMEOUT`).
    write : bool
        Write the executed notebook (outputs, stripped metadata) back to ``path``; otherwise
        the file is left as it was.

    Returns
    -------
    float
        Wall-clock seconds, kernel start included.

    Raises
    ------
    nbclient.exceptions.CellExecutionError
        A cell raised; the message shows the cell and the traceback.
    """
    import nbformat
    from nbclient import NotebookClient
    from traitlets.config import Config

    nb = nbformat.read(path, as_version=4)
    if timeout is None:
        timeout = SMOKE_CELL_TIMEOUT if smoke else FULL_CELL_TIMEOUT
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pyro-models-tutorial-") as workdir:
        # IPC sockets in the temporary folder: local only, and no warning from the kernel about
        # unencrypted TCP.
        config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(workdir, "kernel")}})
        client = NotebookClient(
            nb, timeout=timeout, kernel_name=KERNEL_NAME, allow_errors=False, record_timing=False,
            resources={"metadata": {"path": workdir}}, config=config,
        )
        client.execute(env=_kernel_env(smoke))
    elapsed = time.perf_counter() - start
    if write:
        strip_volatile(nb)
        nbformat.validate(nb)
        tmp = path.with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, path)  # atomic: an interrupted run never leaves half a notebook
    return elapsed


def _select(names: Sequence[str]) -> list[str]:
    """Listed notebooks matching ``names``: a file name, its stem, or a unique prefix (``02``)."""
    if not names:
        return list(NOTEBOOKS)
    chosen = []
    for n in names:
        hits = [nb for nb in NOTEBOOKS if nb == n or nb == n + ".ipynb"] or [nb for nb in NOTEBOOKS if nb.startswith(n)]
        if len(hits) != 1:
            why = "matches no" if not hits else f"matches {len(hits)}"
            raise SystemExit(f"{n!r} {why} notebook listed in NOTEBOOKS; listed: {', '.join(NOTEBOOKS)}")
        chosen.append(hits[0])
    return chosen


def main(argv: Iterable[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--smoke", action="store_true", help="execute copies with tiny budgets; fail on any error")
    mode.add_argument("--full", action="store_true", help="execute in place with full budgets and save outputs")
    mode.add_argument("--check", action="store_true", help="every notebook listed, every listed file present, public API only")
    parser.add_argument("names", nargs="*",
                        help="notebooks to run (default: all listed): file name, stem or unique prefix such as 02")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell")
    args = parser.parse_args(list(argv) if argv is not None else None)

    if args.check:
        problems = check()
        for p in problems:
            print(f"FAIL {p}")
        if not problems:
            print(f"ok: {len(NOTEBOOKS)} notebooks listed, all present, public API only")
        return 1 if problems else 0

    failed = []
    for name in _select(args.names):
        print(f"{'smoke' if args.smoke else 'full'}: {name} ...", flush=True)
        try:
            seconds = execute(HERE / name, smoke=args.smoke, timeout=args.timeout, write=args.full)
        except Exception as exc:  # report every notebook, then fail
            failed.append(name)
            print(f"FAILED {name}: {type(exc).__name__}: {exc}", flush=True)
        else:
            print(f"ok {name}: {seconds:.1f} s", flush=True)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
