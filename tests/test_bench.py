"""The benchmark command runs and reports every stage (timings are its output, not assertions)."""

import json

from difftest.cli import main


def test_bench_reports_stages_torch_ratio_memory_and_campaign_rate(capsys):
    assert main(["bench", "--layer", "small", "--repeat", "1", "--campaign-examples", "10", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    layer = doc["layer"]
    assert set(layer["seconds"]) >= {"exact_spec", "nf_and_torchlean", "order_free", "comparison", "total"}
    assert layer["nf_verdicts"] == {"grad_input": "pass", "grad_weight": "pass", "grad_bias": "pass"}
    assert layer["macs_per_gradient"] == 8 * 8 * 9 * 16 * 16 and layer["peak_rss_mib"] > 0
    assert layer["torch_float64_backward_s"] > 0 and layer["ratio_to_torch"] > 0
    assert doc["campaign"]["cases"] > 0 and doc["machine"]["cpu_count"] >= 1


def test_bench_table_output(capsys):
    assert main(["bench", "--layer", "small", "--repeat", "1", "--campaign-examples", "10"]) == 0
    out = capsys.readouterr().out
    assert "nf_and_torchlean" in out and "torch float64 backward" in out and "cases/s" in out
