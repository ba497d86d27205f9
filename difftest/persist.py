"""A campaign's persistence: every judged case becomes result lines, reproducers and raw outputs.

:class:`CampaignRecorder` turns the typed results of one case into ``results.jsonl`` lines
(:class:`~difftest.outcome.ResultRecord`), writes the case file of every case with a non-``pass``
result, and the backend's raw outputs with the per-entry error and bounds for each non-``pass``
result, so a report can draw it from the files alone. Nothing is buffered: a line is on disk
when :meth:`record` returns.
"""

from __future__ import annotations

import json
from pathlib import Path

from .expectations import EXPECTED
from .outcome import FindingKey, ResultRecord
from .results import ResultsWriter


class CampaignRecorder:
    """Writes one campaign's result directory as it goes."""

    def __init__(self, out: Path, seed: int, shard: tuple[int, int], expectations=None):
        self.writer = ResultsWriter(out, fresh=True)
        kept = Path(out) / EXPECTED
        try:
            if expectations is not None and expectations.entries:
                tmp = kept.with_suffix(".tmp")
                tmp.write_text(json.dumps(expectations.to_dict(), indent=2) + "\n")
                tmp.replace(kept)
            else:
                kept.unlink(missing_ok=True)
        except BaseException:
            self.writer.close()  # release the directory's lock
            raise
        self.seed = seed
        self.shard = f"{shard[0]}/{shard[1]}"
        self._env_ids: dict[str, str] = {}

    def record(self, case, results, phase: str, round_no: int, finding: FindingKey | None = None,
               largest_case: dict | None = None) -> str | None:
        """One line per backend result on ``case``; files for the non-``pass`` ones. Returns the
        case file written (relative to the directory), or None when all passed."""
        case_file = None
        if any(r.verdict != "pass" for r in results):
            case_file = self.writer.save_case(case, case.case_id)
        for r in results:
            if r.backend not in self._env_ids:
                self._env_ids[r.backend] = self.writer.environment(r.environment)
            rec = ResultRecord.of(
                r, case.case_id, case.geometry.as_dict(), phase=phase, seed=self.seed, shard=self.shard,
                round=round_no, environment_id=self._env_ids[r.backend], finding=finding, largest_case=largest_case,
                timings={"backend_s": r.seconds,
                         "model_s": sum(r.timings.get(k, 0.0) for k in ("exact_s", "nf_and_torchlean_s", "order_free_s")),
                         **r.timings},
            )
            if r.verdict != "pass":
                rec.case_file = case_file
                if r.outputs is not None:
                    rec.outputs_file = self.writer.save_outputs(case.case_id, r)
            self.writer.write(rec)
        return case_file

    def campaign(self, info: dict) -> None:
        self.writer.campaign(info)

    def close(self) -> None:
        self.writer.close()
