"""Cases: the inputs of one Conv2D backward, validated, and their ``.npz`` reproducer files.

A case's arrays are the **spec values** (exact reals held in float64). The runtime values a
backend and the NF model compute with are the same arrays when they are representable in the
format; with ``round_inputs`` they are the arrays rounded into the format, and the eps of each
tensor grows by its exact maximal rounding error (Lean's ``approxT`` hypotheses ``epsX``,
``epsK``, ``epsδ``, one number per tensor).
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import CaseFileError, InvalidCase, NotRepresentable, UnsupportedFormat
from .formats import BINARY32, Format, get_format
from .fparith import add_up
from .geometry import GRADIENTS, Geometry, gradient_subset

#: Largest magnitude a case value may have. The model has no overflow; the vectorised engine
#: emulates it in float64, whose range must hold every product and partial sum.
MAX_MAGNITUDE = 2.0**480

TENSORS = ("input", "weight", "grad_output")
EPS_NAMES = {"input": "eps_input", "weight": "eps_weight", "grad_output": "eps_grad_output"}


@dataclass(frozen=True)
class RuntimeInputs:
    """What a backend of ``format`` computes with, and the eps hypotheses that link it to the spec."""

    format: Format
    input: np.ndarray
    weight: np.ndarray
    grad_output: np.ndarray
    eps_input: float
    eps_weight: float
    eps_grad_output: float
    rounded: bool


@dataclass(frozen=True, eq=False)
class Case:
    """One Conv2D backward problem: spec arrays, geometry, format, eps hypotheses and the
    gradients requested of a backend (``gradients``: a tuple in ``GRADIENTS`` order, default all
    three; frameworks run other kernels when only some are requested)."""

    input: np.ndarray
    weight: np.ndarray
    grad_output: np.ndarray
    stride: "int | tuple[int, int]" = 1
    padding: "int | tuple[int, int]" = 0
    format: Format = BINARY32
    eps_input: float = 0.0
    eps_weight: float = 0.0
    eps_grad_output: float = 0.0
    round_inputs: bool = False
    gradients: tuple[str, ...] = GRADIENTS
    dilation: "int | tuple[int, int]" = 1
    groups: int = 1
    geometry: Geometry = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", get_format(self.format))
        object.__setattr__(self, "gradients", gradient_subset(self.gradients))
        arrays = {}
        for name in TENSORS:
            arrays[name] = _as_float64(name, getattr(self, name))
            object.__setattr__(self, name, arrays[name])
        for name in EPS_NAMES.values():
            v = getattr(self, name)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise InvalidCase(f"{name} must be a number, got {v!r}") from None
            if not (math.isfinite(v) and v >= 0):
                raise InvalidCase(f"{name} must be finite and >= 0, got {v}")
            object.__setattr__(self, name, v)
        v = self.groups
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer, float)) or int(v) != v or v < 1:
            raise InvalidCase(f"groups must be an integer >= 1, got {v!r}")
        geometry = _geometry_of(arrays, self.stride, self.padding, self.dilation, int(v))
        object.__setattr__(self, "geometry", geometry)
        # normalised once, by the geometry: the case's stride, padding, dilation and groups are its
        for name in ("stride", "padding", "dilation", "groups"):
            object.__setattr__(self, name, getattr(geometry, name))
        # The case's own format must hold its values (or round them, with --round-inputs).
        self.runtime(self.format)

    # --- runtime values -------------------------------------------------------------

    def runtime(self, fmt: Format | str | None = None) -> RuntimeInputs:
        """Runtime values and eps for a backend of format ``fmt`` (default: the case's).

        Raises :class:`NotRepresentable` naming the first offending element when a value is not
        in ``fmt`` and the case was not made with ``round_inputs``.
        """
        fmt = self.format if fmt is None else get_format(fmt)
        cache = self.__dict__.setdefault("_runtimes", {})  # a case is immutable: round it once per format
        if fmt not in cache:
            cache[fmt] = self._runtime(fmt)
        return cache[fmt]

    def __getstate__(self) -> dict:
        """What a copy or a pickle holds: the case, not its cached runtime values."""
        return {k: v for k, v in self.__dict__.items() if k != "_runtimes"}

    def _runtime(self, fmt: Format) -> RuntimeInputs:
        if not fmt.vectorised:
            raise UnsupportedFormat(
                f"format {fmt.name} cannot be emulated exactly in float64 (radix 2, precision <= 26 "
                "with emin >= -537, or binary64); the exact scalar functions in difftest.lean "
                "handle any format"
            )
        out: dict[str, np.ndarray] = {}
        eps: dict[str, float] = {}
        rounded = False
        for name in TENSORS:
            spec = getattr(self, name)
            runtime = fmt.round_array(spec)
            given = getattr(self, EPS_NAMES[name])
            if np.array_equal(runtime, spec):
                out[name], eps[name] = spec, given
                continue
            if not self.round_inputs:
                bad = np.argwhere(runtime != spec)[0]
                idx = tuple(int(i) for i in bad)
                raise NotRepresentable(
                    f"{name}{list(idx)} = {float(spec[idx])!r} is not representable in {fmt.name} "
                    f"(nearest: {float(runtime[idx])!r}); give values of the format, or use "
                    "--round-inputs to round them and judge with the exact rounding errors as eps"
                )
            # runtime - spec is exact in float64 (same binade, multiple of spec's quantum).
            err = float(np.max(np.abs(runtime - spec)))
            out[name], eps[name], rounded = runtime, float(add_up(np.float64(given), np.float64(err))), True
        return RuntimeInputs(
            format=fmt,
            input=out["input"],
            weight=out["weight"],
            grad_output=out["grad_output"],
            eps_input=eps["input"],
            eps_weight=eps["weight"],
            eps_grad_output=eps["grad_output"],
            rounded=rounded,
        )

    # --- files --------------------------------------------------------------------------

    @property
    def all_gradients(self) -> bool:
        """Whether every gradient is requested (then files and ids are as before subsets existed)."""
        return self.gradients == GRADIENTS

    def save(self, path: str | Path) -> Path:
        """Write the reproducer ``.npz`` (arrays, stride, padding, format, eps; ``gradients`` — a
        string array — only when not all three are requested; ``dilation`` and ``groups`` only
        when not 1). A per-axis stride, padding or dilation is an array ``[h, w]``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        subset = {} if self.all_gradients else {"gradients": np.array(self.gradients)}
        if self.dilation != 1:
            subset["dilation"] = np.array(self.dilation, dtype=np.int64)
        if self.groups != 1:
            subset["groups"] = np.int64(self.groups)
        if self.round_inputs:  # the arrays are spec values to be rounded: replays round them too
            subset["round_inputs"] = np.bool_(True)
        with open(path, "wb") as f:
            np.savez(
                f,
                input=self.input,
                weight=self.weight,
                grad_output=self.grad_output,
                stride=np.array(self.stride, dtype=np.int64),
                padding=np.array(self.padding, dtype=np.int64),
                format=np.str_(self.format.name),
                eps_input=np.float64(self.eps_input),
                eps_weight=np.float64(self.eps_weight),
                eps_grad_output=np.float64(self.eps_grad_output),
                **subset,
            )
        return path

    @classmethod
    def load(cls, path: str | Path, *, format: str | None = None, round_inputs: bool | None = None,
             gradients=None) -> "Case":
        """Read a case file. ``format`` overrides the file's own (default ``binary32``),
        ``gradients`` the file's requested gradients (default all three), ``round_inputs`` the
        file's own (default: false; a file saved from a case made with ``round_inputs`` — a
        ``difftest model`` layer — rounds its values again when loaded)."""
        path = Path(path)
        if path.is_dir():
            raise CaseFileError(f"{path} is a directory, not a case file; give an .npz case file "
                                "(a result directory keeps its reproducers in cases/)")
        if not path.is_file():
            raise CaseFileError(f"case file {str(path)!r} does not exist")
        if not zipfile.is_zipfile(path):
            raise CaseFileError(f"{path} is not a readable case file: a case file is an .npz archive written by "
                                "numpy.savez (see 'Case files' in the README)")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            why = "it holds object arrays" if "pickle" in str(exc).lower() else str(exc)
            raise CaseFileError(
                f"{path} is not a readable case file (.npz of numeric arrays written by numpy.savez): {why}"
            ) from None
        missing = [k for k in (*TENSORS, "stride", "padding") if k not in data]
        if missing:
            raise CaseFileError(
                f"{path} lacks {', '.join(missing)}; a case file holds arrays input, weight, "
                "grad_output and stride, padding (an integer or a pair [h, w]; optional: dilation, "
                "groups, format, eps_input, eps_weight, eps_grad_output, gradients)"
            )
        kwargs = {name: data[name] for name in TENSORS}
        for name in ("stride", "padding", "dilation"):
            if name in data:
                kwargs[name] = _axis_value(path, name, data[name])
        if "groups" in data:
            kwargs["groups"] = _scalar(path, "groups", data["groups"], int)
        for name in EPS_NAMES.values():
            if name in data:
                kwargs[name] = _scalar(path, name, data[name], float)
        fmt_name = format if format is not None else (
            _scalar(path, "format", data["format"], str) if "format" in data else BINARY32.name
        )
        if gradients is None and "gradients" in data:
            gradients = _gradients(path, data["gradients"])
        if round_inputs is None:
            round_inputs = _scalar(path, "round_inputs", data["round_inputs"], bool) if "round_inputs" in data else False
        return cls(**kwargs, format=get_format(fmt_name), round_inputs=round_inputs,
                   gradients=GRADIENTS if gradients is None else gradients)

    @cached_property
    def case_id(self) -> str:
        """A content hash: equal cases have equal ids, on any machine (a case requesting every
        gradient has the id it had before requested gradients existed)."""
        h = hashlib.sha256()
        h.update(f"{self.format.name}|{self.stride}|{self.padding}|{self.eps_input!r}|{self.eps_weight!r}|"
                 f"{self.eps_grad_output!r}|{self.round_inputs}".encode())
        if not self.all_gradients:
            h.update(f"|gradients={','.join(self.gradients)}".encode())
        if not self.geometry.plain:
            h.update(f"|dilation={self.dilation}|groups={self.groups}".encode())
        for name in TENSORS:
            a = getattr(self, name)
            h.update(repr(a.shape).encode())
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        """Shapes and settings, not the arrays (a real layer's case has millions of values)."""
        g = self.geometry
        subset = "" if self.all_gradients else f", gradients={self.gradients}"
        general = "" if g.plain else f", dilation={self.dilation}, groups={self.groups}"
        return (f"Case(input {g.input_shape}, weight {g.weight_shape}, stride={self.stride}, padding={self.padding}{general}, "
                f"format={self.format.name}{subset}, case_id={self.case_id})")

    def _repr_pretty_(self, printer, cycle) -> None:
        """The same for hypothesis's and IPython's pretty printers (they print a dataclass's fields)."""
        printer.text(repr(self))

    def describe(self) -> dict:
        """Plain-JSON description (geometry, format, eps, requested gradients); arrays are left out."""
        return {
            "geometry": self.geometry.as_dict(),
            "format": self.format.name,
            "eps_input": self.eps_input,
            "eps_weight": self.eps_weight,
            "eps_grad_output": self.eps_grad_output,
            "round_inputs": self.round_inputs,
            "gradients": list(self.gradients),
            "batch_extension": self.geometry.N > 1,
            "extensions": list(self.geometry.extensions),
        }


def _as_float64(name: str, value) -> np.ndarray:
    try:
        a = np.asarray(value)
    except Exception as exc:  # pragma: no cover - numpy raises many kinds here
        raise InvalidCase(f"{name} is not an array: {exc}") from None
    if a.dtype.kind not in "fiub":
        raise InvalidCase(f"{name} must hold real numbers, got dtype {a.dtype}")
    if a.ndim != 4:
        raise InvalidCase(
            f"{name} must have rank 4 ({_LAYOUT[name]}), got shape {tuple(a.shape)}"
        )
    a64 = a.astype(np.float64)
    if a.dtype.kind in "iu" and not np.array_equal(a64.astype(a.dtype), a):
        raise InvalidCase(f"{name} holds integers that float64 cannot represent exactly")
    finite = np.isfinite(a64)
    if not finite.all():
        idx = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise InvalidCase(f"{name}{list(idx)} = {float(a64[idx])} is not finite; the NF model has no NaN or infinity")
    if a64.size and (a64.max() > MAX_MAGNITUDE or a64.min() < -MAX_MAGNITUDE):  # reductions: no temporaries
        idx = tuple(int(i) for i in np.argwhere(np.abs(a64) > MAX_MAGNITUDE)[0])
        raise InvalidCase(f"{name}{list(idx)} = {float(a64[idx])!r} exceeds the supported magnitude 2^480")
    a64 = np.ascontiguousarray(a64)
    a64.setflags(write=False)
    return a64


_LAYOUT = {"input": "N, C, H, W", "weight": "O, C, kH, kW", "grad_output": "N, O, out_h, out_w"}


def _geometry_of(arrays: dict[str, np.ndarray], stride, padding, dilation, groups: int) -> Geometry:
    N, C, H, W = arrays["input"].shape
    O, C2, kH, kW = arrays["weight"].shape
    g = Geometry(N=N, C=C, H=H, W=W, O=O, kH=kH, kW=kW, stride=stride, padding=padding, dilation=dilation, groups=groups)
    if C2 * groups != C:
        per_group = f" (C/groups with groups={groups})" if groups != 1 else ""
        raise InvalidCase(
            f"weight has {C2} input channels (shape {arrays['weight'].shape}) but input has {C} "
            f"(shape {arrays['input'].shape}); the weight's second axis must be {C // groups}{per_group}"
        )
    if arrays["grad_output"].shape != g.grad_output_shape:
        raise InvalidCase(
            f"grad_output has shape {arrays['grad_output'].shape}; expected {g.grad_output_shape} "
            f"(N, O, out_h, out_w) for input {g.input_shape}, weight {g.weight_shape}, {g.text()}"
        )
    return g


def _gradients(path: Path, value: np.ndarray) -> tuple[str, ...]:
    """A case file's ``gradients``: a string array, or one comma-separated string."""
    if value.dtype.kind != "U" or value.ndim > 1:
        raise CaseFileError(f"{path}: gradients must be a string array or a comma-separated string, "
                            f"got {value.dtype} of shape {value.shape}")
    try:
        return gradient_subset(",".join(str(v) for v in np.atleast_1d(value)))
    except InvalidCase as exc:
        raise CaseFileError(f"{path}: {exc}") from None


def _axis_value(path: Path, name: str, value: np.ndarray):
    """A case file's stride, padding or dilation: an integer scalar or an integer pair ``[h, w]``."""
    if value.ndim == 0:
        return _scalar(path, name, value, int)
    if value.shape != (2,) or value.dtype.kind not in "iuf":
        raise CaseFileError(f"{path}: {name} must be an integer or a pair [h, w] of integers, "
                            f"got {value.dtype} of shape {value.shape}")
    return tuple(_scalar(path, name, v, int) for v in value)


def _scalar(path: Path, name: str, value: np.ndarray, kind: type):
    if value.ndim != 0:
        raise CaseFileError(f"{path}: {name} must be a scalar, got shape {value.shape}")
    v = value.item()
    if kind is int and not (isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer())):
        raise CaseFileError(f"{path}: {name} must be an integer, got {v!r}")
    if kind is float and not isinstance(v, (int, float)):
        raise CaseFileError(f"{path}: {name} must be a number, got {v!r}")
    if kind is str and not isinstance(v, str):
        raise CaseFileError(f"{path}: {name} must be a string, got {v!r}")
    if kind is bool and not isinstance(v, (bool, np.bool_)):
        raise CaseFileError(f"{path}: {name} must be a boolean, got {v!r}")
    return kind(v)
