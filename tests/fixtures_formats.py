"""Writers of tiny fixture copies of each dataset, in the exact formats the converters read as
distributed (CRLF and padded columns for CelebA, one-hot blocks for Shopping100k, string ids for
iMaterialist, ...), plus 8x8 images, corrupt images and helpers to read converted records back.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

CELEBA_FLAGS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def write_image(path: str, value: int = 128) -> str:
    """An 8x8 JPEG, its grey level set by `value` so images differ."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.full((8, 8, 3), value % 256, np.uint8)
    image[0, 0] = (0, 0, 255)
    assert cv2.imwrite(path, image)
    return path


def write_corrupt(path: str) -> str:
    """A file named like an image that no decoder reads."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"this is not an image\n" * 4)
    return path


def write_text(path: str, lines, newline: str = "\n") -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(line + newline for line in lines))
    return path


# ---------------------------------------------------------------------------------------- CelebA


def celeba_row(name: str, on=()) -> str:
    """A list_attr_celeba.txt row: flags in `on` are 1, the rest -1, each padded to width 2 and
    joined by one space, so a 1 is preceded by two spaces as in the distributed file."""
    values = " ".join(f"{1 if flag in on else -1:2d}" for flag in CELEBA_FLAGS)
    return f"{name} {values}"


def write_celeba(root: str, rows, *, count: int | None = None, partition=None, images=(), corrupt=()):
    """rows: [(image name, flags that are on)]; count: line 1 (default: the number of rows);
    partition: {name: 0/1/2} written as list_eval_partition.txt; images/corrupt: names to create."""
    lines = [str(len(rows) if count is None else count), " ".join(CELEBA_FLAGS) + " "]
    lines += [celeba_row(name, on) for name, on in rows]
    write_text(os.path.join(root, "list_attr_celeba.txt"), lines, newline="\r\n")
    if partition is not None:
        part = [f"{name} {p}" for name, p in partition.items()]
        write_text(os.path.join(root, "list_eval_partition.txt"), part, newline="\r\n")
    for i, name in enumerate(images):
        write_image(os.path.join(root, "img_align_celeba", name), 10 * i)
    for name in corrupt:
        write_corrupt(os.path.join(root, "img_align_celeba", name))


# ----------------------------------------------------------------------------------- Shopping100k

SHOPPING_SIZES = [16, 17, 19, 14, 10, 15, 2, 11, 16, 7, 9, 15]


def one_hot_line(labels, sizes=SHOPPING_SIZES) -> str:
    """labels: one value index per block, or None for an all-zero (unlabelled) block."""
    bits = []
    for value, n in zip(labels, sizes):
        block = ["0"] * n
        if value is not None:
            block[value] = "1"
        bits += block
    return " ".join(bits)


def write_shopping100k(root: str, splits, *, image_folder="Images", attr_num_style="list"):
    """splits: {split: [(relative path, labels or a raw label line)]}."""
    if attr_num_style == "list":
        write_text(os.path.join(root, "attr_num.txt"), [str(SHOPPING_SIZES)])
    else:
        write_text(os.path.join(root, "attr_num.txt"), [str(n) for n in SHOPPING_SIZES])
    for split, rows in splits.items():
        write_text(os.path.join(root, f"imgs_{split}.txt"), [p for p, _ in rows])
        lines = [lab if isinstance(lab, str) else one_hot_line(lab) for _, lab in rows]
        write_text(os.path.join(root, f"labels_{split}.txt"), lines)
    return os.path.join(root, image_folder) if image_folder else root


# ------------------------------------------------------------------------------------------- DARN


def write_darn(root: str, split: str, filenames, label_lines, label_name: str | None = None):
    write_text(os.path.join(root, f"filenames_{split}.txt"), filenames)
    write_text(os.path.join(root, label_name or f"label_{split}.txt"), label_lines)


# ----------------------------------------------------------------------------------- iMaterialist

# Values per task of the real label map (task 1's 105 category names come from the shipped grouping).
IMAT_TASK_SIZES = {2: 21, 3: 3, 4: 34, 5: 11, 6: 28, 8: 5, 9: 21}
IMAT_TASK_NAMES = {1: "category", 2: "color", 3: "gender", 4: "material", 5: "neckline", 6: "pattern",
                   7: "dropped", 8: "sleeve", 9: "style"}  # fmt: skip


def write_imat_label_map(root: str, category_names) -> dict[tuple[int, str], str]:
    """The label map with the real category names and per-task sizes (other names are synthetic),
    plus one task-7 label. Returns {(taskId, labelName): labelId}."""
    entries = [(1, name) for name in category_names]
    for task, n in IMAT_TASK_SIZES.items():
        entries += [(task, f"{IMAT_TASK_NAMES[task]} {i}") for i in range(n)]
    entries.append((7, "dropped 0"))
    lines = ["labelId,taskId,labelName,taskName"]
    ids = {}
    for label_id, (task, name) in enumerate(entries, 1):
        shown = f'"{name}"' if "," in name else name
        lines.append(f"{label_id},{task},{shown},{IMAT_TASK_NAMES[task]}")
        ids[(task, name)] = str(label_id)
    write_text(os.path.join(root, "iMat_fashion_2018_label_map_228.csv"), lines)
    return ids


def write_imat_json(root: str, split: str, annotations) -> str:
    """annotations: [(imageId string, [labelId strings])], written like the distributed files."""
    obj = {
        "images": [{"imageId": i, "url": f"https://example.invalid/{split}/{i}.jpg"} for i, _ in annotations],
        "annotations": [{"labelId": labels, "imageId": i} for i, labels in annotations],
    }
    path = os.path.join(root, f"{split}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return path


# -------------------------------------------------------------------------------- Fashion Product

FPI_HEADER = (
    "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
)


def write_styles(root: str, lines) -> str:
    return write_text(os.path.join(root, "styles.csv"), [FPI_HEADER, *lines])


# ------------------------------------------------------------------------------------- read back


def read_records(info) -> dict[str, dict]:
    """{image id: {"labels": [...], "split": split}} over every split of a converted dataset."""
    import tensorflow as tf

    from fashionsearchnet_v2.data.records import parse_example

    out = {}
    for split in info.shards:
        for raw in tf.data.TFRecordDataset(info.shard_paths(split)):
            ex = parse_example(raw, info.num_attributes)
            out[ex["id"].numpy().decode()] = {"labels": ex["labels"].numpy().tolist(), "split": split}
    return out


def read_report(info) -> list[tuple[str, str]]:
    """(reason, image id) of every row in conversion_report.txt."""
    with open(os.path.join(info.data_dir, "conversion_report.txt"), encoding="utf-8") as f:
        next(f)
        return [tuple(line.rstrip("\n").split("\t")[:2]) for line in f]
