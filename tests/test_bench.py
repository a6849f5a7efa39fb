"""bench.py: each benchmark runs on tiny inputs and returns figures that make sense."""
import math
from pathlib import Path

import bench


def test_the_shards_benchmark_trains_from_the_shards_it_writes_in_bounded_memory(tiny_vqgan, tmp_path):
    figures = bench.bench_shards(40, tmp_path, tiny_vqgan, steps=3)
    assert all(math.isfinite(v) and v > 0 for v in figures.values()), figures
    assert figures["peak_rss_mb"] < 8000  # a tiny model and 40 pictures: far below any machine's memory
    assert (tmp_path / "shards" / "images-00000.npy").exists()


def test_the_decode_benchmark_runs_on_the_shipped_model(capsys):
    bench.bench_decode(Path(bench.__file__).parent / "checkpoints/shapes", 1, 2)
    assert "compiled decode" in capsys.readouterr().out


def test_the_grid_benchmark_gives_our_step_s_speed_over_the_reference_s_at_each_shape(capsys):
    ratios = bench.bench_grid(1, 1, grid=[(1, 16, 2, 32, 4)])
    assert list(ratios) == [(1, 16, 2, 32, 4)] and 0 < ratios[1, 16, 2, 32, 4] < math.inf
    assert f"worst: {min(ratios.values()):.2f}x" in capsys.readouterr().out
