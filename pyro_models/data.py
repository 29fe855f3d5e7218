"""Data contracts: declare a model's fields once, validate every batch at the boundary.

A :class:`DataSpec` lists :class:`Field` s with symbolic shapes (``("N", "D")``), a dtype
kind and whether the field is required or observed. :func:`validate_data` converts user
input (tensors, NumPy arrays, lists, scalars) to tensors and checks shapes, dtypes, bounds
and NaN/inf, raising :class:`~pyro_models.errors.DataValidationError` (a ``ValueError``) or
``TypeError`` with a message saying what was expected and what was given.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import DataValidationError

__all__ = ["Field", "DataSpec", "validate_data", "to_tensor", "check_callable_data", "move_data", "check_binary"]

_KINDS = ("float", "int", "bool")


@dataclass(frozen=True)
class Field:
    """One named input of a model.

    Parameters
    ----------
    name : str
        Keyword the model's ``forward`` receives.
    shape : tuple of (str or int)
        Symbolic shape; a string is a dimension bound on first use (``"N"``), an int is fixed.
        ``()`` is a scalar.
    dtype : {"float", "int", "bool"}
        Kind of values. Floats keep a floating tensor's dtype and turn anything else into
        ``torch.get_default_dtype()``; ints become ``torch.long``.
    required : bool
        Whether fitting needs the field. Observed fields are required to fit but optional
        for prediction.
    observed : bool
        Whether the field is data the likelihood conditions on (``None`` gives the predictive).
    lower, upper : float, optional
        Inclusive bounds on the values (e.g. counts ``lower=0``).
    doc : str
        One line shown in error messages and docs.
    """

    name: str
    shape: tuple[str | int, ...] = ()
    dtype: str = "float"
    required: bool = True
    observed: bool = False
    lower: float | None = None
    upper: float | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in _KINDS:
            raise ValueError(f"Field {self.name!r}: dtype must be one of {_KINDS}, got {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(self.shape))

    def describe(self, sizes: Mapping[str, int] | None = None) -> str:
        dims = []
        for d in self.shape:
            if isinstance(d, str) and sizes and d in sizes:
                dims.append(f"{d}={sizes[d]}")
            else:
                dims.append(str(d))
        return f"({', '.join(dims)}{',' if len(dims) == 1 else ''}) {self.dtype}"


@dataclass(frozen=True)
class DataSpec:
    """The data contract of a model: its fields and, for minibatching, its data plate.

    Parameters
    ----------
    fields : tuple of Field
    plate : str, optional
        Name of the ``pyro.plate`` over data points, used to scale minibatches.
    plate_dim : str, optional
        Symbolic dimension of that plate (the leading dim of every per-datum field).

    Examples
    --------
    >>> spec = DataSpec((Field("x", ("N", "D")), Field("y", ("N",), observed=True)),
    ...                 plate="data", plate_dim="N")
    >>> out = validate_data(spec, {"x": [[1.0, 2.0]], "y": [0.5]})
    >>> tuple(out["x"].shape), out["y"].dtype
    ((1, 2), torch.float32)
    """

    fields: tuple[Field, ...]
    plate: str | None = None
    plate_dim: str | None = None
    _by_name: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        by_name = {f.name: f for f in self.fields}
        if len(by_name) != len(self.fields):
            raise ValueError("DataSpec field names must be unique")
        object.__setattr__(self, "_by_name", by_name)

    def __getitem__(self, name: str) -> Field:
        return self._by_name[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def observed(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.observed)

    def per_datum(self) -> tuple[str, ...]:
        """Fields whose leading dimension is the data-plate dimension (they get minibatched)."""
        if self.plate_dim is None:
            return ()
        return tuple(f.name for f in self.fields if f.shape and f.shape[0] == self.plate_dim)

    def describe(self) -> str:
        lines = []
        for f in self.fields:
            role = "observed" if f.observed else ("required" if f.required else "optional")
            lines.append(f"  {f.name}: {f.describe()} [{role}]" + (f" - {f.doc}" if f.doc else ""))
        return "\n".join(lines)


def to_tensor(name: str, value: Any, kind: str | None = None) -> torch.Tensor:
    """Convert ``value`` to a tensor; ``kind`` ("float"/"int"/"bool") enforces a dtype kind."""
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, (np.ndarray, np.generic, numbers.Number, list, tuple)):
        try:
            arr = np.asarray(value)
        except Exception as exc:  # ragged lists and the like
            raise DataValidationError(f"{name}: could not convert to an array: {exc}") from None
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected numeric data, got array of dtype {arr.dtype}")
        if arr.dtype.kind == "f":
            t = torch.as_tensor(arr, dtype=torch.get_default_dtype())
        else:
            t = torch.as_tensor(arr)
    else:
        raise TypeError(
            f"{name}: expected a torch.Tensor, NumPy array, list or number, got {type(value).__name__}"
        )
    if t.is_complex():
        raise TypeError(f"{name}: complex data is not supported, got {t.dtype}")
    if kind == "float":
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
    elif kind == "int":
        if t.is_floating_point():
            raise TypeError(f"{name}: expected integer data, got {t.dtype}")
        if t.dtype != torch.long:
            t = t.long()
    elif kind == "bool":
        if t.dtype != torch.bool:
            if t.is_floating_point() or not bool(((t == 0) | (t == 1)).all()):
                raise TypeError(f"{name}: expected bool (or 0/1) data, got {t.dtype}")
            t = t.bool()
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise DataValidationError(
            f"{name}: contains {bad} NaN/inf value(s); expected finite numbers "
            f"(drop or impute missing values before fitting)"
        )
    return t


def validate_data(
    spec: DataSpec, data: Mapping[str, Any], *, require_observed: bool = True
) -> dict[str, torch.Tensor]:
    """Check ``data`` against ``spec`` and return it as tensors.

    Parameters
    ----------
    spec : DataSpec
    data : mapping of str to array-like
    require_observed : bool
        ``False`` for prediction: observed fields may be absent or ``None``.

    Returns
    -------
    dict of str to torch.Tensor
        Only the fields present (absent optional/observed fields are left out).

    Raises
    ------
    DataValidationError
        Unknown or missing keys, wrong shape, NaN/inf, out-of-bounds values.
    TypeError
        Wrong dtype kind or non-numeric input.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a dict of field name -> array, got {type(data).__name__}")
    unknown = sorted(set(data) - set(spec.names))
    if unknown:
        raise DataValidationError(
            f"unknown data key(s) {unknown}; this model declares:\n{spec.describe()}"
        )
    out: dict[str, torch.Tensor] = {}
    sizes: dict[str, int] = {}
    bound_by: dict[str, str] = {}
    for f in spec.fields:
        value = data.get(f.name)
        if value is None:
            needed = f.required and (require_observed or not f.observed)
            if needed:
                raise DataValidationError(
                    f"missing required data field {f.name!r}: expected {f.describe()}"
                    + (f" ({f.doc})" if f.doc else "")
                )
            continue
        t = to_tensor(f.name, value, f.dtype)
        if t.dim() != len(f.shape):
            raise DataValidationError(
                f"{f.name}: expected shape {f.describe(sizes)} ({len(f.shape)} dims), "
                f"got {tuple(t.shape)} {t.dtype}"
            )
        for axis, (d, n) in enumerate(zip(f.shape, t.shape)):
            if isinstance(d, int):
                if n != d:
                    raise DataValidationError(
                        f"{f.name}: expected shape {f.describe(sizes)}, got {tuple(t.shape)} "
                        f"(dim {axis} must be {d})"
                    )
            elif d in sizes and sizes[d] != n:
                raise DataValidationError(
                    f"{f.name}: expected shape {f.describe(sizes)} with {d}={sizes[d]} from "
                    f"{bound_by[d]}, got {tuple(t.shape)} {t.dtype}"
                )
            elif isinstance(d, str):
                sizes[d] = int(n)
                bound_by[d] = f.name
        if f.lower is not None and t.numel() and bool((t < f.lower).any()):
            raise DataValidationError(f"{f.name}: values must be >= {f.lower}, got min {t.min().item()}")
        if f.upper is not None and t.numel() and bool((t > f.upper).any()):
            raise DataValidationError(f"{f.name}: values must be <= {f.upper}, got max {t.max().item()}")
        out[f.name] = t
    return out


def check_binary(name: str, values: torch.Tensor, what: str = "values") -> None:
    """Raise :class:`DataValidationError` unless every entry of ``values`` is exactly 0 or 1.

    Examples
    --------
    >>> check_binary("y", torch.tensor([0.0, 1.0, 1.0]))
    >>> check_binary("y", torch.tensor([0.0, 0.5]))
    Traceback (most recent call last):
    ...
    pyro_models.errors.DataValidationError: y: expected binary values 0 or 1, got 1 other value(s), e.g. 0.5
    """
    bad = (values != 0) & (values != 1)
    if bool(bad.any()):
        raise DataValidationError(
            f"{name}: expected binary {what} 0 or 1, got {int(bad.sum())} other value(s), "
            f"e.g. {values[bad][0].item()}"
        )


def check_callable_data(fn: Callable[..., Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate data for a plain Pyro model callable.

    Keys must be keyword arguments of ``fn`` (unless it takes ``**kwargs``); array-likes become
    tensors and are checked for NaN/inf; ``None`` and non-array values (ints, strings) pass
    through unchanged since the callable may use them as sizes or options.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a dict of argument name -> value, got {type(data).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        params = sig.parameters
        takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        accepted = {
            n for n, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        if not takes_var_kw:
            unknown = sorted(set(data) - accepted)
            if unknown:
                raise DataValidationError(
                    f"unknown data key(s) {unknown} for model {getattr(fn, '__name__', fn)!r}; "
                    f"it accepts keyword arguments {sorted(accepted)}"
                )
        missing = sorted(
            n for n, p in params.items()
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and n not in data
        )
        if missing:
            raise DataValidationError(
                f"missing data for argument(s) {missing} of model {getattr(fn, '__name__', fn)!r}"
            )
    out: dict[str, Any] = {}
    for k, v in data.items():
        if v is None or isinstance(v, (str, bool)) or (isinstance(v, numbers.Integral)):
            out[k] = v
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise DataValidationError(f"{k}: expected a finite number, got {v}")
            out[k] = v
        elif isinstance(v, (torch.Tensor, np.ndarray, np.generic, list, tuple)):
            out[k] = to_tensor(k, v)
        else:
            out[k] = v
    return out


def move_data(data: Mapping[str, Any], device: torch.device | None) -> dict[str, Any]:
    """Move every tensor in ``data`` to ``device`` (other values unchanged)."""
    if device is None:
        return dict(data)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in data.items()}
