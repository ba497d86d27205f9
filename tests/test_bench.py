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


def grouped_net():
    """A dense and a depthwise convolution (for bench --model)."""
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8))


def test_bench_model_reports_stages_layers_memory_and_the_ratio_to_torch(capsys):
    import pytest

    pytest.importorskip("torch")
    args = ["bench", "--model", f"{__name__}:grouped_net", "--input-shape", "1,3,12,12", "--backend", "nf-binary32"]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["model"]
    assert set(doc["seconds"]) >= {"exact_spec", "nf_and_torchlean", "order_free", "backend", "comparison", "capture",
                                   "total"}
    assert doc["convolutions"] == doc["layers_judged"] == 2 and doc["backends"] == ["nf-binary32"]
    dense, depthwise = doc["layers"]
    assert (dense["groups"], depthwise["groups"]) == (1, 8)
    assert dense["macs"] == 3 * 8 * 9 * 12 * 12 and depthwise["macs"] == 1 * 8 * 9 * 12 * 12
    assert all(x["seconds"] > 0 and x["ns_per_mac"] > 0 for x in doc["layers"])
    assert doc["verdicts"]["pass"] == 6 and doc["peak_rss_mib"] > 0 and "ru_maxrss" in doc["peak_memory_source"]
    assert doc["torch_float64_forward_backward_s"] > 0 and doc["ratio_to_torch"] > 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ns/MAC" in out and "torch float64 forward+backward" in out and "peak RSS" in out
