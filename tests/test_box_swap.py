"""benchmarks/box_swap.py: a trained row evaluated with the other kind of boxes, nothing retrained and the
original untouched (issue 25: why Rank and Rank-L tie on CelebA)."""

import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import box_swap  # noqa: E402

from fashionsearchnet_v2 import configs  # noqa: E402
from fashionsearchnet_v2.trained import features, loading  # noqa: E402


def test_box_area_is_each_attributes_mean_share_of_the_image():
    boxes = np.array([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]],
                      [[0.0, 0.0, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]]])  # fmt: skip
    assert box_swap.box_area(boxes) == pytest.approx([0.75, 0.25])


def test_rank_l_with_whole_image_boxes_is_evaluated_from_a_flipped_copy(trained, tmp_path):
    workdir = os.path.join(trained.root, "work")
    src = loading.stage_dir(workdir, "stage2", "rank_l")
    before = open(os.path.join(src, "config.json"), encoding="utf-8").read()
    out = str(tmp_path / "swap")
    box_swap.main(
        ["--data_dir", trained.data_dir, "--workdir", workdir, "--out_dir", out, "--variants", "rank_l"]
    )

    # The original is only read; the copy pools the whole image.
    assert open(os.path.join(src, "config.json"), encoding="utf-8").read() == before
    assert configs.read_config(src).model.localization is True
    copy = loading.stage_dir(out, "stage2", "rank_l")
    assert configs.read_config(copy).model.localization is False
    model, _, cfg = loading.load_stage2(out, trained.info, "rank_l")
    boxes = features.extract(model, trained.info, "query", cfg.model.image_size, progress=False)["boxes"]
    np.testing.assert_allclose(boxes, np.broadcast_to([0.0, 0.0, 1.0, 1.0], boxes.shape))
    # ...while the original's AAM boxes are not the whole image (else the swap would test nothing).
    model, _, cfg = loading.load_stage2(workdir, trained.info, "rank_l")
    own = features.extract(model, trained.info, "query", cfg.model.image_size, progress=False)["boxes"]
    assert box_swap.box_area(own).mean() < 0.99

    results = os.path.join(out, "eval", "rank_l", "results.json")
    text = open(os.path.join(out, "box_swap.md"), encoding="utf-8").read()
    assert os.path.isfile(results) and "| Rank-L | whole image (swapped) |" in text
    assert "AAM boxes' mean share of the image" in text

    # Rerunning keeps the evaluation; a copy whose boxes are not swapped is refused, not overwritten.
    mtime = os.stat(results).st_mtime_ns
    box_swap.main(
        ["--data_dir", trained.data_dir, "--workdir", workdir, "--out_dir", out, "--variants", "rank_l"]
    )
    assert os.stat(results).st_mtime_ns == mtime
    other = str(tmp_path / "unswapped")
    shutil.copytree(
        src, loading.stage_dir(other, "stage2", "rank_l"), ignore=shutil.ignore_patterns("features")
    )
    with pytest.raises(SystemExit, match="not swapped"):
        box_swap.main(["--data_dir", trained.data_dir, "--workdir", workdir, "--out_dir", other])


def test_rows_with_stage_3_and_the_workdir_itself_are_refused(trained):
    workdir = os.path.join(trained.root, "work")
    with pytest.raises(SystemExit, match="without stage 3"):
        box_swap.main(
            [
                "--data_dir",
                trained.data_dir,
                "--workdir",
                workdir,
                "--out_dir",
                "/tmp/x",
                "--variants",
                "full",
            ]
        )
    with pytest.raises(SystemExit, match="must differ"):
        box_swap.main(["--data_dir", trained.data_dir, "--workdir", workdir, "--out_dir", workdir])
