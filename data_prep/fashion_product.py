"""Kaggle "Fashion Product Images" -> dataset directory: 5 attributes chosen for attribute manipulation.

    python -m data_prep.fashion_product --input_dir=FPI --output_dir=data/fashion_product \
        --num_query=1000 --num_gallery=4000

Input, as distributed (the full or the small version):

    styles.csv        id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,
                      productDisplayName (unquoted; some copies have commas inside productDisplayName,
                      which are joined back; empty fields and `NA` are unlabelled)
    images/<id>.jpg   rows without an image are reported as `missing`

Not one of the paper's datasets: a real product-shot set (like Shopping100k) that is freely available.
Attributes, with rare values grouped so each value has enough images (counts on the 11,882-image copy):
gender (4), category (articleType grouped into 24 groups + other), color (baseColour grouped into 14
families), season (4), usage (4) = 51 values. masterCategory and subCategory are left out because they are parents of
articleType (changing one without the other is not a manipulation a product can have), and year because
it is not visible. Values not in the tables below: category -> `other`, the rest -> unlabelled.
"""

from __future__ import annotations

import collections
import os

from data_prep import _parsing, common
from fashionsearchnet_v2.data import convert as engine
from fashionsearchnet_v2.data.schema import UNLABELLED, Attribute, DatasetError, DatasetInfo

NAME = "fashion_product"
HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
COLUMNS = HEADER.split(",")
MISSING_VALUES = ("", "NA")

# Boys (95 images) and Girls (86) are too few for a value each; together they are `kids`.
GENDER = {"Men": "men", "Women": "women", "Unisex": "unisex", "Boys": "kids", "Girls": "kids"}

# articleType -> group: every type with >= ~200 images keeps its own value, smaller types join the
# group they look like (Kurtis -> kurtas, Backpacks -> bags, ...), and the remaining 90 or so types
# (cosmetics, jewellery, ties, caps, ...; ~750 images) are `other`.
CATEGORY = {
    "tshirts": ("Tshirts", "Lounge Tshirts"),
    "shirts": ("Shirts",),
    "tops": ("Tops", "Tunics", "Camisoles", "Shrug"),
    "kurtas": ("Kurtas", "Kurtis", "Kurta Sets"),
    "sweaters": ("Sweaters",),
    "sweatshirts": ("Sweatshirts",),
    "jackets": ("Jackets", "Blazers", "Waistcoat", "Rain Jacket", "Nehru Jackets", "Tracksuits"),
    "dresses_skirts": ("Dresses", "Skirts", "Jumpsuit", "Rompers"),
    "trousers": ("Trousers", "Track Pants", "Capris", "Leggings", "Jeggings", "Lounge Pants", "Rain Trousers", "Churidar", "Patiala", "Salwar", "Tights"),
    "jeans": ("Jeans",),
    "shorts": ("Shorts", "Lounge Shorts"),
    "innerwear": ("Briefs", "Innerwear Vests", "Bra", "Trunk", "Boxers", "Stockings", "Shapewear"),
    "casual_shoes": ("Casual Shoes",),
    "sports_shoes": ("Sports Shoes",),
    "formal_shoes": ("Formal Shoes",),
    "heels": ("Heels",),
    "flats": ("Flats", "Booties"),
    "sandals_flip_flops": ("Sandals", "Sports Sandals", "Flip Flops"),
    "bags": ("Handbags", "Backpacks", "Clutches", "Laptop Bag", "Duffel Bag", "Messenger Bag", "Mobile Pouch", "Rucksacks", "Waist Pouch", "Tablet Sleeve", "Trolley Bag"),
    "wallets": ("Wallets",),
    "watches": ("Watches",),
    "sunglasses": ("Sunglasses",),
    "belts": ("Belts",),
    "socks": ("Socks",),
    "other": (),
}  # fmt: skip

# baseColour -> colour family (47 names -> 14). Shades join the family they are a shade of; the
# metallic finishes (mostly watches and jewellery) form one family.
COLOR = {
    "black": ("Black",),
    "white": ("White", "Off White", "Cream"),
    "grey": ("Grey", "Grey Melange", "Charcoal"),
    "blue": ("Blue", "Turquoise Blue", "Teal"),
    "navy": ("Navy Blue",),
    "red": ("Red", "Maroon", "Burgundy", "Rust"),
    "pink": ("Pink", "Magenta", "Peach", "Rose"),
    "purple": ("Purple", "Lavender", "Mauve"),
    "green": ("Green", "Olive", "Sea Green", "Lime Green", "Fluorescent Green"),
    "yellow_orange": ("Yellow", "Mustard", "Orange"),
    "brown": ("Brown", "Coffee Brown", "Mushroom Brown", "Tan", "Taupe"),
    "beige": ("Beige", "Khaki", "Skin", "Nude"),
    "metallic": ("Silver", "Gold", "Steel", "Copper", "Bronze", "Metallic"),
    "multi": ("Multi",),
}

SEASON = {"Fall": "fall", "Summer": "summer", "Winter": "winter", "Spring": "spring"}

# Smart Casual (12 images), Travel (2), Party (3) and Home are too rare for values of their own.
USAGE = {"Casual": "casual", "Smart Casual": "casual", "Travel": "casual", "Home": "casual",
         "Sports": "sports", "Formal": "formal", "Party": "formal", "Ethnic": "ethnic"}  # fmt: skip


def _invert(groups: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {name: group for group, names in groups.items() for name in names}


# (attribute, styles.csv column, raw value -> value, values in label order, fallback for unknowns)
ATTRIBUTES = (
    ("gender", "gender", GENDER, ("men", "women", "unisex", "kids"), None),
    ("category", "articleType", _invert(CATEGORY), tuple(CATEGORY), "other"),
    ("color", "baseColour", _invert(COLOR), tuple(COLOR), None),
    ("season", "season", SEASON, ("spring", "summer", "fall", "winter"), None),
    ("usage", "usage", USAGE, ("casual", "formal", "sports", "ethnic"), None),
)


def attributes() -> list[Attribute]:
    return [Attribute(name, values) for name, _, _, values, _ in ATTRIBUTES]


def split_row(text: str, path: str, lineno: int) -> list[str]:
    """One styles.csv line -> its 10 fields; commas beyond the 9th belong to productDisplayName."""
    fields = text.split(",")
    if len(fields) < len(COLUMNS) or not (fields[0].strip().isascii() and fields[0].strip().isdigit()):
        raise _parsing.malformed(path, lineno, f"{len(COLUMNS)} comma-separated fields ({HEADER})", text)
    head = [f.strip() for f in fields[: len(COLUMNS) - 1]]
    return head + [",".join(fields[len(COLUMNS) - 1 :]).strip()]


def map_row(fields: list[str], unmapped: collections.Counter | None = None) -> list[int]:
    """10 fields -> one label per attribute; empty/`NA` -> -1; values not in the tables -> the
    attribute's fallback (counted in `unmapped`)."""
    labels = []
    for name, column, table, values, fallback in ATTRIBUTES:
        raw = fields[COLUMNS.index(column)]
        if raw in MISSING_VALUES:
            labels.append(UNLABELLED)
            continue
        value = table.get(raw, fallback)
        if raw not in table and fallback is None and unmapped is not None:
            unmapped[f"{name}={raw}"] += 1
        labels.append(values.index(value) if value is not None else UNLABELLED)
    return labels


def parse_styles(path: str) -> list[tuple[str, list[str], int]]:
    """styles.csv -> [(id, 10 fields, line number)]."""
    lines = _parsing.read_lines(path)
    first = next(lines, None)
    if first is None or first[1].strip() != HEADER:
        got = first[1] if first else ""
        raise DatasetError(f"{path}:1: expected the header {HEADER!r}; got {got[:120]!r}")
    rows = []
    for lineno, text in lines:
        if not text.strip():
            continue
        fields = split_row(text, path, lineno)
        rows.append((fields[0], fields, lineno))
    return rows


def convert(
    input_dir: str,
    output_dir: str,
    **protocol,
) -> DatasetInfo:
    styles = _parsing.find_file(input_dir, ("styles.csv",), "styles.csv")
    rows = parse_styles(styles)
    images = os.path.join(input_dir, "images")
    examples, skipped, seen, unmapped = [], [], {}, collections.Counter()
    for image_id, fields, lineno in rows:
        where = f"{styles}:{lineno}"
        if image_id in seen:
            skipped.append(("duplicate", image_id, f"{where} repeats {seen[image_id]}"))
            continue
        seen[image_id] = where
        labels = map_row(fields, unmapped)
        examples.append(
            engine.Example(image_id, labels, path=os.path.join(images, f"{image_id}.jpg"), where=where)
        )
    attrs = attributes()
    extra = {
        "columns": {name: column for name, column, _, _, _ in ATTRIBUTES},
        "groups": {
            "gender": GENDER,
            "category": {k: list(v) for k, v in CATEGORY.items()},
            "color": {k: list(v) for k, v in COLOR.items()},
            "season": SEASON,
            "usage": USAGE,
        },
        "unmapped_values": dict(unmapped.most_common()),
    }
    return _parsing.write_labelled(examples, attrs, output_dir=output_dir, name=NAME,
                                   source=os.path.abspath(styles), rows_read=len(rows), skipped=skipped,
                                   extra=extra, **protocol)  # fmt: skip


if __name__ == "__main__":
    common.run(convert)
