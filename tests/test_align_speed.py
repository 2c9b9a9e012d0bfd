"""align_speed and src/speed.py: warm-up excluded, memory net of weights, the CUDA path chosen
on a CUDA device (selection only: this machine has none), the stage's tidy table."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from src.data.paths import align_table
from src.eval import align_speed
from src.speed import (
    CudaEventTimer,
    CudaPeak,
    RssPeak,
    WallTimer,
    measure,
    memory_for,
    timer_for,
    weights_bytes,
)


def test_cuda_device_selects_events_and_the_allocator_peak():
    cuda = torch.device("cuda:0")
    assert isinstance(timer_for(cuda), CudaEventTimer) and timer_for(cuda).device == cuda
    assert isinstance(memory_for(cuda), CudaPeak)
    assert isinstance(timer_for(torch.device("cpu")), WallTimer)
    assert isinstance(memory_for(torch.device("cpu")), RssPeak)


def test_warmup_runs_are_not_timed():
    calls = []
    m = measure(lambda: calls.append(1), torch.device("cpu"), warmup=3, iters=4)
    assert len(calls) == 7 and len(m.seconds) == 4
    with pytest.raises(ValueError):
        measure(lambda: None, torch.device("cpu"), warmup=0, iters=1)


def test_peak_memory_is_net_of_the_weights():
    big = torch.nn.Linear(4096, 4096)  # 64 MiB of weights, resident before the baseline
    x = torch.randn(1, 4096)
    with torch.inference_mode():
        m = measure(lambda: big(x), torch.device("cpu"), warmup=1, iters=3)
    assert weights_bytes(big) == (4096 * 4096 + 4096) * 4
    assert m.peak_bytes < 16 * 2**20  # the call's own memory, far below the weights

    def allocates():  # an activation of 96 MiB, touched
        return torch.ones(96 * 2**20 // 4).sum()

    m = measure(allocates, torch.device("cpu"), warmup=1, iters=2)
    assert 80 * 2**20 < m.peak_bytes < 200 * 2**20


def test_summary_percentiles_and_throughput():
    from src.speed import Measured

    s = Measured([0.1, 0.2, 0.3, 0.4, 0.5], 2**20, "x").summary(items=4)
    assert s["latency_ms_p50"] == pytest.approx(300)
    assert s["latency_ms_p95"] == pytest.approx(480)
    assert s["throughput_per_s"] == pytest.approx(4 / 0.3)
    assert s["peak_mem_net_mb"] == 1


def test_stage_writes_a_row_per_component_and_batch_size(tmp_path, capsys):
    out = tmp_path / "speed"
    argv = ["--out_dir", str(out), "--encoders", "efficientnet-lite0", "--llms", "--batch_sizes",
            "1", "2", "--warmup", "1", "--iters", "2", "--device", "cpu"]  # fmt: skip
    assert align_speed.main(argv) == 0
    table = pd.read_csv(align_table(out, "speed"))
    assert sorted(set(zip(table.component, table.batch_size, strict=True))) == [
        ("encoder", 1), ("encoder", 2), ("preprocess", 1), ("preprocess", 2),
        ("projector", 1), ("projector", 2),
    ]  # fmt: skip
    assert (table.latency_ms_p95 >= table.latency_ms_p50).all()
    assert (table.throughput_per_s * table.latency_ms_p50 / 1000).round(6).tolist() == (
        table.batch_size.astype(float).tolist()
    )
    enc = table[table.component == "encoder"].iloc[0]
    assert enc.memory_measure == "rss_increase_over_post_load" and enc["dtype"] == "float32"
    assert enc.weights_mb == pytest.approx(17.9, abs=0.5)  # EfficientNet-Lite0's 4.7M params
    assert (table[table.component == "preprocess"].device == "cpu").all()
    runs = pd.read_csv(align_table(out, "speed_runs"))
    assert len(runs) == 6 * 2  # every timed run, warm-up excluded
    assert (out / "manifest.json").exists()
    assert "speed.csv" in capsys.readouterr().out
    assert align_speed.main([*argv, "--warmup", "0"]) == 2

    from src.reporting.align_maps_figures import speed_dashboard_plot

    (tmp_path / "results" / "align").mkdir(parents=True)
    (tmp_path / "results" / "align" / "speed").symlink_to(out)
    plot = speed_dashboard_plot(tmp_path / "results")
    assert plot.data.latency_ms_p50.tolist() == pytest.approx(table.latency_ms_p50.tolist())
