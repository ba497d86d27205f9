"""The judgement: the one pipeline (check), which entries a sampled check judges (sampling), its
cost before judging (estimate), its words (explain), and where backends and judging run
(isolation: backends in worker processes; distributed: judging on a Dask cluster)."""
