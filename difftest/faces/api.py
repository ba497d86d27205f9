"""Assertions for users' own tests."""

from __future__ import annotations

from pathlib import Path

from ..values.case import Case
from ..judge.check import check_case
from ..judge.explain import gradient_text, reproduce_command, sampled_of
from ..values.outcome import BackendResult

_ALLOWED = {"torchlean": ("pass", "unsupported"), "order-free": ("pass", "order", "unsupported")}

#: Where failing cases are saved, so the failure message can name the command that replays them.
DEFAULT_SAVE_DIR = Path(".difftest") / "cases"


def assert_within_bounds(case: Case, backend, bound: str = "torchlean", save_to=DEFAULT_SAVE_DIR,
                         format=None, sample: int | None = None, seed: int = 0) -> BackendResult:
    """Run ``backend`` on ``case`` and assert every requested gradient (``case.gradients``) is
    within ``bound``.

    ``backend`` is a registered name, a :class:`~difftest.backends.Backend`, or a plain function
    ``(x, w, d, stride, padding) -> (grad_input, grad_weight, grad_bias)`` judged in ``format``
    (default: the case's format).

    ``bound="torchlean"`` requires the verdict ``pass`` (no entry beyond either bound);
    ``bound="order-free"`` also accepts ``order`` (beyond the TorchLean bound, explained by
    evaluation order). A case whose geometry the backend does not take (``unsupported``: a plain
    function of five arguments takes no dilation, groups or stride pairs, see
    :mod:`difftest.supports`) is not run and passes; draw with ``strategies.cases(...,
    extensions=backend.supports)`` not to spend examples on them. On failure the case is saved under ``save_to`` (``None``: not saved) and
    the ``AssertionError`` names each failing gradient's verdict, ratios, worst entry and the
    command that replays it (``difftest check`` for a registered backend, a Python line for a
    function). Returns the result.

    Under hypothesis, give the test ``@settings(deadline=None)`` (and a ``max_examples`` to bound
    its work): the first check in a process loads the backend and the compiled folds (a second or
    more), and larger cases take longer than hypothesis's default 200 ms deadline. Warming up
    here would not help: hypothesis times the whole test body, and an example that is slow only
    the first time fails as "unreliable test timings" when replayed.

    ``sample=N`` (and ``seed``) judges at most ``N`` entries of each gradient (a layer at a real
    resolution, :mod:`difftest.sampling`): a pass is then no certain violation among them.
    """
    from ..backends import as_backend, is_registered

    if bound not in _ALLOWED:
        raise ValueError(f"bound must be one of {list(_ALLOWED)}, got {bound!r}")
    b = as_backend(backend, format or case.format)
    (result,) = check_case(case, [b], sample=sample, seed=seed)
    bad = {g: r for g, r in result.gradients.items() if r.verdict not in _ALLOWED[bound]}
    if bad:
        asked = "" if case.all_gradients else f", requesting only {', '.join(case.gradients)}"
        lines = [f"{b.name} is not within the {bound} bound on a case of geometry {case.geometry.as_dict()}{asked}:"]
        lines += [f"  {gradient_text(b.name, g, r)}" for g, r in bad.items()]
        if save_to is not None:
            path = case.save(Path(save_to) / f"{case.case_id}.npz")
            if is_registered(b.name):
                lines.append(f"  reproduce: {reproduce_command(path, b.name, case.gradients, sampled_of(result.gradients))}")
            else:
                again = "" if sample is None else f", sample={sample}, seed={seed}"
                lines.append(f"  reproduce: difftest.check_case(difftest.Case.load({str(path)!r}), [{b.name}]{again})")
        raise AssertionError("\n".join(lines))
    return result
