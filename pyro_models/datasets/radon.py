"""The Minnesota radon data (Gelman & Hill), shipped with the package.

919 houses in 85 Minnesota counties from the US EPA's National Residential Radon Survey, the
running example of Gelman & Hill (2007), *Data Analysis Using Regression and
Multilevel/Hierarchical Models*, chapters 12-13 (``srrs2.dat``, Minnesota rows). The copy here
is posteriordb's ``radon_mn`` data set (github.com/stan-dev/posteriordb, commit
``28f8d3d6e975315f42aa274a8399f21e07a43b30``, ``posterior_database/data/data/radon_mn.json.zip``;
posteriordb is BSD-3-Clause) with three of its columns, in its row order:

- ``county_idx``: the house's county, **0-based** here (posteriordb/Stan count from 1).
- ``floor_measure``: floor of the measurement, 0 = basement, 1 = first floor.
- ``log_radon``: log radon activity, log(pCi/L) (a reading of 0 was recorded as 0.1 before
  the log, so the minimum is log(0.1)).

Floats are written with Python's shortest round-trip ``repr`` and read back bit-for-bit
(``load_radon(dtype=torch.float64)`` equals posteriordb's JSON values exactly). The
county-level uranium covariate ``log_uppm`` is not shipped (no model here uses it).

Examples
--------
>>> from pyro_models.datasets import load_radon
>>> data = load_radon()
>>> {k: (tuple(v.shape), v.dtype) for k, v in data.items()}  # doctest: +NORMALIZE_WHITESPACE
{'county_idx': ((919,), torch.int64), 'floor_measure': ((919,), torch.float32),
 'log_radon': ((919,), torch.float32)}
>>> int(data["county_idx"].max()) + 1 == RADON_NUM_COUNTIES
True
"""

from __future__ import annotations

import csv
import io
from importlib import resources

import torch
from torch import Tensor

__all__ = ["load_radon", "RADON_NUM_COUNTIES", "RADON_NUM_HOUSES"]

#: Number of counties in the Minnesota radon data (county_idx takes values 0..84).
RADON_NUM_COUNTIES: int = 85
#: Number of houses (rows) in the Minnesota radon data.
RADON_NUM_HOUSES: int = 919

_FILE = "radon_mn.csv"
_HEADER = ["county_idx", "floor_measure", "log_radon"]


def _read_rows() -> tuple[list[int], list[float], list[float]]:
    text = resources.files(__package__).joinpath(_FILE).read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header != _HEADER:
        raise RuntimeError(
            f"packaged {_FILE} is damaged: expected header {_HEADER}, got {header}; "
            "reinstall pyro-models"
        )
    county, floor, log_radon = [], [], []
    for row in reader:
        county.append(int(row[0]))
        floor.append(float(row[1]))
        log_radon.append(float(row[2]))  # float() is correctly rounded: exact round trip
    if len(county) != RADON_NUM_HOUSES:
        raise RuntimeError(
            f"packaged {_FILE} is damaged: expected {RADON_NUM_HOUSES} rows, got {len(county)}; "
            "reinstall pyro-models"
        )
    return county, floor, log_radon


def load_radon(*, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Load the Minnesota radon data in the data contract of the ``"radon"`` models.

    Reads the CSV shipped inside the package (no network, no external files). The number of
    counties is :data:`RADON_NUM_COUNTIES` (85), the default ``num_counties`` of
    :class:`pyro_models.models.radon.Radon`.

    Parameters
    ----------
    dtype : torch.dtype
        Floating dtype of ``floor_measure`` and ``log_radon`` (default ``torch.float32``;
        ``torch.float64`` reproduces posteriordb's values exactly).

    Returns
    -------
    dict of str to Tensor
        ``county_idx``: (919,) int64 in [0, 85); ``floor_measure``: (919,) ``dtype``, 0 or 1;
        ``log_radon``: (919,) ``dtype``. Fresh tensors on every call.

    Raises
    ------
    TypeError
        ``dtype`` is not a floating torch dtype.

    Examples
    --------
    >>> d = load_radon(dtype=torch.float64)
    >>> round(float(d["log_radon"].mean()), 4), int(d["floor_measure"].sum())
    (1.2648, 153)
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype (e.g. torch.float32), got {dtype!r}")
    county, floor, log_radon = _read_rows()
    return {
        "county_idx": torch.tensor(county, dtype=torch.long),
        "floor_measure": torch.tensor(floor, dtype=torch.float64).to(dtype),
        "log_radon": torch.tensor(log_radon, dtype=torch.float64).to(dtype),
    }
