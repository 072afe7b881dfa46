"""The embedded dataset `synthetic`: determinism, labels, the exact locality of localized attributes (the
property that makes its boxes ground truth), clutter, and a write/read round trip through the records."""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys

import commands
import cv2
import numpy as np
import pytest

from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.data import synthetic as syn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = syn.ATTRIBUTE_NAMES


def pixel_box(box, size):
    """Normalised (ymin, xmin, ymax, xmax) -> integer pixel-edge bounds."""
    return [int(v) for v in np.round(np.asarray(box, np.float64) * size)]


def outside(mask, box, size) -> int:
    """How many True pixels of `mask` lie outside `box`."""
    y0, x0, y1, x1 = pixel_box(box, size)
    inner = np.zeros_like(mask)
    inner[y0:y1, x0:x1] = True
    return int(np.count_nonzero(mask & ~inner))


def changed(a, b):
    return np.any(a != b, axis=-1)


def test_attributes_and_regions():
    assert len(syn.ATTRIBUTES) >= 6
    assert all(a.num_values >= 3 for a in syn.ATTRIBUTES)
    assert 6 <= len(syn.COLORS) <= 8 and NAMES[0] == "color"
    assert set(syn.LOCALIZED) <= set(NAMES) and len(syn.LOCALIZED) >= 3
    assert len(set(syn.LOCALIZED.values())) == len(syn.LOCALIZED), "regions must be distinct"
    assert {"color", "pattern"} <= set(NAMES) - set(syn.LOCALIZED)


def test_same_seed_same_bytes_and_order_does_not_matter():
    first = list(syn.generate(4, seed=3, size=96))
    again = list(syn.generate(4, seed=3, size=96))
    for (id_a, img_a, lab_a, box_a), (id_b, img_b, lab_b, box_b) in zip(first, again):
        assert id_a == id_b and lab_a == lab_b
        np.testing.assert_array_equal(img_a, img_b)
        np.testing.assert_array_equal(box_a, box_b)
        assert syn.encode(img_a) == syn.encode(img_b)
    # Image 2 drawn alone is image 2 of the sequence.
    alone, _ = syn.render(syn.params_for(3, 2), 96)
    np.testing.assert_array_equal(alone, first[2][1])
    other = list(syn.generate(4, seed=4, size=96))
    assert all(not np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    assert len({img.tobytes() for _, img, _, _ in first}) == 4


def test_labels_are_in_range_and_cover_every_value():
    labels = np.array([syn.params_for(0, i).labels for i in range(800)])
    for k, attr in enumerate(syn.ATTRIBUTES):
        counts = np.bincount(labels[:, k], minlength=attr.num_values)
        assert len(counts) == attr.num_values, attr.name
        assert counts.min() > 0.5 * len(labels) / attr.num_values, (attr.name, counts)
    for i in range(50):
        schema.validate_labels(syn.params_for(1, i).labels, syn.ATTRIBUTES, f"image {i}")


def test_images_and_boxes_are_well_formed():
    for i in range(30):
        params = syn.params_for(5, i)
        assert syn.MIN_HEIGHT <= params.height <= syn.MAX_HEIGHT
        image, boxes = syn.render(params, 128)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert boxes.shape == (len(NAMES), 4) and boxes.dtype == np.float32
        garment = syn.garment_box(params, 128)
        assert np.all((garment >= 0) & (garment <= 1))
        for name, box in zip(NAMES, boxes):
            if name not in syn.LOCALIZED:
                assert np.all(box == -1), name
                continue
            assert np.all((box >= 0) & (box <= 1)) and box[0] < box[2] and box[1] < box[3], (name, box)
            assert np.all(box[:2] >= garment[:2]) and np.all(box[2:] <= garment[2:]), name
        # The boxes say where things are: collar above hem, both centred on the garment.
        collar, hem = boxes[NAMES.index("collar")], boxes[NAMES.index("hem")]
        assert collar[2] < hem[0]


# Several placements and scales, a few sizes: locality must hold exactly, whatever the rounding.
LOCALITY_CASES = [(seed, i, 128) for seed, i in itertools.product((0, 7), range(3))] + [
    (2, 0, 64),
    (2, 1, 224),
]


@pytest.mark.parametrize("seed,index,size", LOCALITY_CASES)
def test_a_localized_attribute_changes_pixels_only_inside_its_box(seed, index, size):
    base = syn.params_for(seed, index)
    for name in syn.LOCALIZED:
        k = NAMES.index(name)
        renders = [syn.render(base.with_label(name, v), size) for v in range(syn.ATTRIBUTES[k].num_values)]
        box = renders[0][1][k]
        for _, boxes in renders:
            np.testing.assert_array_equal(boxes, renders[0][1])  # the region is reserved for every value
        for (img_a, _), (img_b, _) in itertools.combinations(renders, 2):
            diff = changed(img_a, img_b)
            assert diff.any(), f"{name}: two values draw the same image"
            assert outside(diff, box, size) == 0, f"{name}: {outside(diff, box, size)} pixels outside its box"


def test_global_attributes_change_the_garment_only():
    for i in range(4):
        params = syn.params_for(11, i)
        image, boxes = syn.render(params, 128)
        garment = syn.garment_box(params, 128)
        y0, x0, y1, x1 = pixel_box(garment, 128)
        area = (y1 - y0) * (x1 - x0)
        for name in ("color", "pattern"):
            k = NAMES.index(name)
            other = (params.labels[k] + 1) % syn.ATTRIBUTES[k].num_values
            diff = changed(image, syn.render(params.with_label(name, other), 128)[0])
            assert outside(diff, garment, 128) == 0, name
            assert diff.sum() > 0.1 * area, (name, diff.sum(), area)
            # The change spans the garment: it reaches into every localized region.
            for loc in syn.LOCALIZED:
                by0, bx0, by1, bx1 = pixel_box(boxes[NAMES.index(loc)], 128)
                assert diff[by0:by1, bx0:bx1].any(), (name, loc)


def test_garment_is_drawn_in_front_of_the_clutter():
    for i in range(4):
        params = syn.params_for(12, i)
        a = syn.render(params, 128)[0]
        b = syn.render(dataclasses.replace(params, clutter_seed=params.clutter_seed + 1), 128)[0]
        # The middle of the torso (garment units x in [-0.12, 0.12], y in [0.35, 0.75]) never changes.
        m = syn._garment_matrix(params, 128)
        (cx0, cy0), (cx1, cy1) = np.array([[-0.12, 0.35], [0.12, 0.75]]) @ m[:, :2].T + m[:, 2]
        core = (slice(int(np.ceil(cy0)), int(cy1)), slice(int(np.ceil(cx0)), int(cx1)))
        np.testing.assert_array_equal(a[core], b[core])
        assert changed(a, b).sum() > 500  # and the clutter did change


def test_clutter_carries_attribute_like_evidence_outside_the_garment():
    # Saturated (palette-like) pixels outside the garment: the distractors global pooling would see.
    fractions = []
    for i in range(20):
        params = syn.params_for(13, i)
        image = syn.render(params, 128)[0]
        y0, x0, y1, x1 = pixel_box(syn.garment_box(params, 128), 128)
        outside_garment = np.ones((128, 128), bool)
        outside_garment[y0:y1, x0:x1] = False
        saturation = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1]
        if outside_garment.sum() > 2000:
            fractions.append(np.mean(saturation[outside_garment] > 100))
    assert len(fractions) >= 5 and np.median(fractions) > 0.03, fractions


def test_write_synthetic_round_trip(tmp_path):
    import tensorflow as tf

    from fashionsearchnet_v2.data import records

    size, seed, n = 64, 9, 40
    info = syn.write_synthetic(
        str(tmp_path / "a"),
        num_images=n,
        image_size=size,
        num_query=5,
        num_gallery=10,
        seed=seed,
        progress=False,
    )
    assert info.name == "synthetic" and info.has_boxes
    assert info.localized == syn.LOCALIZED
    assert info.extra["image_size"] == size and info.extra["num_images"] == n
    assert info.splits == {"train": n - 15, "query": 5, "gallery": 10}
    assert schema.load_dataset_info(str(tmp_path / "a")).attribute_names == NAMES

    seen = set()
    for split in schema.SPLITS:
        for serialized in tf.data.TFRecordDataset(info.shard_paths(split)):
            rec = records.parse_example(serialized, len(NAMES), with_boxes=True)
            image_id = rec["id"].numpy().decode()
            index = int(image_id.rsplit("_", 1)[1])
            params = syn.params_for(seed, index)
            assert rec["labels"].numpy().tolist() == list(params.labels), image_id
            expected, boxes = syn.render(params, size)
            np.testing.assert_allclose(rec["boxes"].numpy(), boxes)
            decoded = records.decode_image(rec["encoded"]).numpy()
            assert decoded.shape == (size, size, 3)
            assert np.abs(decoded.astype(int) - expected).mean() < 4, image_id  # JPEG q95, 4:4:4
            seen.add(image_id)
    assert seen == {syn.image_id(i) for i in range(n)}

    # Same seed, same bytes on disk; an existing output is refused without overwrite.
    again = syn.write_synthetic(
        str(tmp_path / "b"),
        num_images=n,
        image_size=size,
        num_query=5,
        num_gallery=10,
        seed=seed,
        progress=False,
    )
    for split in schema.SPLITS:
        for p, q in zip(info.shard_paths(split), again.shard_paths(split)):
            assert open(p, "rb").read() == open(q, "rb").read()
    with pytest.raises(schema.DatasetError, match="overwrite"):
        syn.write_synthetic(str(tmp_path / "a"), num_images=n, image_size=size, num_query=5, num_gallery=10)


def test_command_line_defaults_to_the_synthetic_split(tmp_path):
    # 100 images cannot hold the default split: the refusal names the defaults without drawing anything.
    cmd = [
        sys.executable,
        "-m",
        "data_prep.synthetic",
        f"--output_dir={tmp_path / 'cli'}",
        "--num_images=100",
    ]
    result = commands.run(cmd, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "500 query + 3000 gallery" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "cli").exists()


def test_converter_prints_a_summary(tmp_path, capsys):
    from data_prep import synthetic as prep

    info = prep.convert(
        str(tmp_path / "c"), num_images=12, image_size=48, num_query=2, num_gallery=3, progress=False
    )
    assert info.splits == {"train": 7, "query": 2, "gallery": 3}
    printed = capsys.readouterr().out
    assert "12 images of 48x48 px" in printed and "sleeve_length" in printed and "sides" in printed
