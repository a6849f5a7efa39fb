"""bench.py: each benchmark runs on tiny inputs and returns figures that make sense."""
import dataclasses
import math

import bench


def test_the_shards_benchmark_trains_from_the_shards_it_writes_in_bounded_memory(tiny_vqgan, tmp_path):
    figures = bench.bench_shards(40, tmp_path, tiny_vqgan, steps=3)
    assert all(math.isfinite(v) and v > 0 for v in figures.values()), figures
    assert figures["peak_rss_mb"] < 8000  # a tiny model and 40 pictures: far below any machine's memory
    assert (tmp_path / "shards" / "images-00000.npy").exists()


def test_the_grid_benchmark_gives_our_step_s_speed_over_the_reference_s_at_each_shape(capsys):
    ratios = bench.bench_grid(1, 1, grid=[(1, 16, 2, 32, 4)])
    assert list(ratios) == [(1, 16, 2, 32, 4)] and 0 < ratios[1, 16, 2, 32, 4] < math.inf
    assert f"worst: {min(ratios.values()):.2f}x" in capsys.readouterr().out


def test_the_plan_compiles_the_step_from_shapes_and_counts_the_flops_the_model_counts():
    import pytest
    import train
    import upgen
    mcfg = upgen.UPGenConfig(image_codes=32, image_tokens=16, text_vocab=40, text_tokens=8, width=32, depth=2,
                             heads=2, mlp=64)
    figures = bench.plan(mcfg, train.TrainConfig(batch=8, accum=2), devices=1)
    # the model's count takes every parameter but the embedding for a matmul weight: biases and norms are 4% here
    assert figures["flops"] == pytest.approx(figures["model_flops"], rel=0.05)
    assert figures["params"] == 4 * figures["n_params"]  # float32
    assert 2 * figures["params"] <= figures["optimizer"] < 2 * figures["params"] + 64  # Adam's two moments, a count
    assert 0 < figures["temporaries"] and figures["params"] + figures["optimizer"] < figures["total"]
    recomputed = bench.plan(mcfg, train.TrainConfig(batch=8, remat=True), devices=1)
    assert 1.1 < recomputed["flops"] / recomputed["model_flops"] < 1.4  # the blocks' forward pass, run again
    deeper = dataclasses.replace(mcfg, width=64, depth=4, mlp=128)  # unrolled without remat, looped with it
    kept, recomputed = (bench.plan(deeper, train.TrainConfig(batch=16, remat=remat), devices=1)
                        for remat in (False, True))
    assert recomputed["temporaries"] < 0.8 * kept["temporaries"]  # remat keeps each block's input, not its insides


def test_a_plan_whose_batch_does_not_split_over_the_devices_exits_with_one_line():
    import pytest
    with pytest.raises(SystemExit, match=r"^error: --batch 100 must split into --devices 8 x --accum 1 equal micro"):
        bench.main(["--plan", "--batch", "100", "--devices", "8"])
