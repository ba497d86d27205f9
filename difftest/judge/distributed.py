"""Judging on a Dask cluster (``--scheduler ADDRESS`` on ``run`` and ``model``).

The oracle, the NF replay, the bounds and the comparison are pure CPU work on numbers; only the
backend needs the machine under test. So a run can keep its backends where the hardware is and
send the judging away: each case's backends run here (in their workers, :mod:`difftest.isolation`),
and their raw outputs (:class:`difftest.check.BackendRun`) go with the case to a worker of a Dask
distributed cluster, which runs :func:`difftest.check.judge_runs` and sends the verdicts back. The
results are recorded here, into the local result directory, as usual: nothing else changes.

``difftest model`` keeps several layers in flight (:data:`IN_FLIGHT` per cluster thread): the next
layer's backends run while the cluster judges the last ones; ``run`` waits for each case's
verdicts (hypothesis decides the next case from them), so it gains from a cluster when its
judging, not its backends, is what takes the time — a GPU runner with few cores.

The cluster's workers need difftest installed (the same version: the case and the runs travel
as pickles) and nothing else; they need no backend, GPU or framework. Dask comes with the
``dask`` extra (``pip install -e ".[dask]"``).
"""

from __future__ import annotations

from ..errors import DifftestError

#: Layers ``difftest model`` keeps in flight per thread of the cluster.
IN_FLIGHT = 2
#: Seconds to wait for the scheduler to answer before giving up.
CONNECT_TIMEOUT = 20


def _judge_remotely(case, runs, oracle, sample):
    """On a cluster worker: the verdicts, without the raw outputs (the caller holds them)."""
    from .check import judge_runs

    results = judge_runs(case, runs, oracle, sample)
    for r in results:
        r.outputs = None
    return results


class Cluster:
    """A connection to a Dask scheduler that judges cases (:meth:`submit`, :meth:`judge`)."""

    def __init__(self, address: str):
        try:
            from distributed import Client
        except ImportError:
            raise DifftestError("--scheduler needs Dask distributed: pip install -e \".[dask]\" (or dask[distributed]) "
                                "here and on the cluster's workers") from None
        self.address = address
        try:
            self.client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise DifftestError(f"cannot reach the Dask scheduler at {address}: {exc}; start one (dask scheduler, "
                                "then dask worker ADDRESS on each machine) or check the address") from None

    @property
    def threads(self) -> int:
        """Threads over the cluster's workers now (at least 1)."""
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - an answer about capacity is advice only
            return 1

    def submit(self, case, runs, oracle: str = "exact", sample=None):
        """Send ``case``'s ``runs`` to be judged; a future of :func:`collect`'s argument."""
        future = self.client.submit(_judge_remotely, case, runs, oracle, sample, pure=False)
        return future, runs

    def collect(self, pending) -> list:
        """The verdicts of a :meth:`submit`, with the raw outputs put back."""
        future, runs = pending
        try:
            results = future.result()
        except Exception as exc:  # a worker died or the judging raised there: the run cannot go on
            raise DifftestError(f"the Dask cluster at {self.address} failed to judge a case: "
                                f"{type(exc).__name__}: {exc}") from None
        for r, run in zip(results, runs):
            r.outputs = run.outputs
        return results

    def judge(self, case, runs, oracle: str = "exact", sample=None) -> list:
        return self.collect(self.submit(case, runs, oracle, sample))

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a connection that went away
            pass

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(address: str | None) -> Cluster | None:
    """A :class:`Cluster` for ``address``, or None (judge in this process)."""
    if address is None:
        return None
    if not isinstance(address, str) or not address.strip():
        raise DifftestError(f"--scheduler takes a Dask scheduler address (tcp://HOST:8786), got {address!r}")
    return Cluster(address.strip())
