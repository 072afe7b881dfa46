"""The paper's evaluation of one Table 1 variant (§4.4–4.5): embed, manipulate, rank, score, draw.

Every variant is a stage-2 model plus, for the rows with global representation learning, a stage-3
model. Without stage 3 the global representation is the plain concatenation of the fc10_a and a
manipulation replaces the attribute's block with its memory prototype (the w/o Rank protocol, §4.5).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2.configs import LABELS, VARIANTS
from fashionsearchnet_v2.data import pipeline, records, schema
from fashionsearchnet_v2.model import aam, backbone, memory_block
from fashionsearchnet_v2.retrieval import figures, localization, metrics, search, validation
from fashionsearchnet_v2.trained import loading


class Representation:
    """Maps (fc10 [N, A, D], manipulation t [N, C]) to global vectors [N, r] in chunks."""

    def __init__(self, info, layer):
        self.num_values = info.num_values
        self.layer = layer  # a GlobalRepresentation (`trained.loading.load_variant`)
        self._fn = tf.function(lambda f, t: self.layer([f, t]), reduce_retracing=True, autograph=False)

    @property
    def memory(self) -> np.ndarray:
        return self.layer.memory_block.numpy()

    def __call__(self, fc10, t=None, chunk: int = 4096) -> np.ndarray:
        fc10 = np.asarray(fc10, np.float32)
        if t is None:
            t = np.zeros((len(fc10), sum(self.num_values)), np.float32)
        out = [self._fn(fc10[i : i + chunk], t[i : i + chunk]).numpy() for i in range(0, len(fc10), chunk)]
        return np.concatenate(out) if out else np.zeros((0, self.layer.output_dim), np.float32)


def read_images(info, split: str, ids, image_size: int) -> np.ndarray:
    """uint8 RGB [n, S, S, 3] of the records of `split` whose ids are `ids`, in that order.

    By id, not by position: extraction reads a split's shards interleaved (`pipeline.make_dataset`), so
    its row order is not the order of the files; a figure drawn by position showed other records'
    images beside the searched ones' labels whenever a split had more than one shard."""
    ids = [str(i) for i in ids]
    found = pipeline.read_split_images(info, split, ids)
    missing = sorted(set(ids) - set(found))
    if missing:
        raise ValueError(f"{split} of {info.data_dir} has no record with id(s) {missing[:5]}")
    out = np.zeros((len(ids), image_size, image_size, 3), np.uint8)
    for i, image_id in enumerate(ids):
        img = tf.image.resize(found[image_id], [image_size, image_size])
        out[i] = np.clip(img.numpy(), 0, 255).astype(np.uint8)
    return out


def manipulation_text(info, query_labels, attribute: int, value: int) -> str:
    attr = info.attributes[attribute]
    old = query_labels[attribute]
    before = attr.values[old] if old >= 0 else "?"
    return f"{attr.name}: {before} → {attr.values[value]}"


class VariantSearch:
    """A trained variant ready to search: embedded query/gallery splits and the vectors to rank.

    `query_vectors(query rows, attributes, values)` -> manipulated global representations [s, r];
    `gallery_vectors()` -> unmanipulated ones [G, r].
    """

    def __init__(self, model, checkpoint, image_size, feats, vectors, manipulation, localization=False):
        self.model, self.checkpoint, self.image_size = model, checkpoint, image_size
        self.localization = localization  # whether the boxes come from AAMs (else whole image)
        self.query, self.gallery, self.train = feats["query"], feats["gallery"], feats["train"]
        self._vectors, self._manipulation, self._key = (
            vectors,
            manipulation,
            "fc10" if "fc10" in feats["query"] else "gap",
        )

    def gallery_vectors(self) -> np.ndarray:
        return self._vectors(self.gallery[self._key], None)

    def query_vectors(self, rows, attributes, values) -> np.ndarray:
        t = self._manipulation(self.query["labels"][rows], np.asarray(attributes), np.asarray(values))
        return self._vectors(self.query[self._key][rows], t)

    def unmanipulated_query_vectors(self, rows) -> np.ndarray:
        """The queries' own representations (no manipulation): the baseline of the manipulation gain."""
        return self._vectors(self.query[self._key][rows], None)


def build_searcher(
    workdir: str, info: schema.DatasetInfo, variant: str, progress: bool = True
) -> VariantSearch:
    """Loads the variant's checkpoints and embeds train, query and gallery (cached)."""
    c = info.total_values

    def one_hot(labels, attributes, values):
        return memory_block.manipulations(attributes, values, info.num_values)

    if variant in ("amnet", "amnet_untrained"):
        from fashionsearchnet_v2.model import amnet

        model, ckpt, cfg = loading.load_stage1(workdir, info)
        s1_dir = loading.stage_dir(workdir, "stage1")
        size = cfg.model.image_size
        feats = {
            s: loading.split_features(model, ckpt, info, s, size, s1_dir, progress)
            for s in ("train", "query", "gallery")
        }
        am, am_ckpt = loading.load_amnet(
            os.path.join(workdir, variant), info, feats["train"]["gap"].shape[-1],
            below=loading.built_on(workdir, ckpt),
        )  # fmt: skip
        fn = tf.function(
            lambda f, t: am({"features": f, "manipulation": t})["embedding"],
            reduce_retracing=True,
            autograph=False,
        )

        def vectors(x, t):
            t = np.zeros((len(x), c), np.float32) if t is None else t
            out = [fn(x[i : i + 4096], t[i : i + 4096]).numpy() for i in range(0, len(x), 4096)]
            return np.concatenate(out)

        def signed(labels, attributes, values):
            return amnet.signed_manipulation(labels, attributes, values, info.num_values)

        return VariantSearch(model, am_ckpt, size, feats, vectors, signed)

    s2_variant, s3_variant = VARIANTS[variant]
    v = loading.load_variant(workdir, info, variant, progress)
    s2_dir = loading.stage_dir(workdir, "stage2", s2_variant)
    size = v.config.model.image_size
    feats = {
        s: loading.split_features(v.model, v.checkpoint, info, s, size, s2_dir, progress)
        for s in ("train", "query", "gallery")
    }
    rep = Representation(info, v.layer)
    ckpt = v.stage3_checkpoint or v.checkpoint
    return VariantSearch(v.model, ckpt, size, feats, rep, one_hot, localization=v.config.model.localization)


def validate_stage2(
    workdir: str,
    info: schema.DatasetInfo,
    stage2_variant: str,
    *,
    fraction: float = 0.2,
    query_share: float = 1 / 3,
    progress: bool = True,
) -> dict:
    """A trained stage 2 without stage 3 (Rank-L's search: the concatenation of the fc10_a, M the means
    of the training images outside the validation split) scored on decision 59's validation split at
    Top-20's share of the gallery, with the unmanipulated baseline. Reads only the training split: for
    choices of stages 1 and 2 (decision 64's warm-up). Stages 1-2 trained on these images too, so the
    numbers flatter both sides of a comparison alike; they are not comparable with Table 1's."""
    model, ckpt, cfg = loading.load_stage2(workdir, info, stage2_variant)
    s2_dir = loading.stage_dir(workdir, "stage2", stage2_variant)
    train = loading.split_features(model, ckpt, info, "train", cfg.model.image_size, s2_dir, progress)
    ids = np.asarray(train["ids"]).astype(str)
    held = validation.carve(ids, fraction)
    memory, _ = memory_block.build_memory_block(train["fc10"][~held], train["labels"][~held], info.num_values)
    gallery = int((~validation.query_mask(ids[held], query_share)).sum())
    k = validation.top20_share(gallery, info.splits.get("gallery", 0))
    searches = validation.ValidationSearches(
        train["fc10"][held], train["labels"][held], ids[held], info.num_values, info.attribute_names,
        query_share, (k,),
    )  # fmt: skip
    results = searches.evaluate(
        Representation(info, memory_block.identity_global_layer(memory, info.num_values))
    )
    results.update(
        validation=searches.describe(), k=searches.ks[0], checkpoint=os.path.relpath(ckpt, workdir)
    )
    return results


def evaluate_variant(
    workdir: str,
    info: schema.DatasetInfo,
    variant: str,
    out_dir: str,
    *,
    ks=metrics.DEFAULT_KS,
    figures_n: int = 6,
    progress: bool = True,
    log=print,
) -> dict:
    """Evaluates a Table 1 variant and writes results.json, table.md, topk.png, results_grid.png and
    aam_queries.png into `out_dir`. Deterministic: same checkpoints, same numbers."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    t0 = time.time()
    searcher = build_searcher(workdir, info, variant, progress)
    model, q, g, size = searcher.model, searcher.query, searcher.gallery, searcher.image_size
    manips = metrics.enumerate_manipulations(q["labels"], g["labels"], info.num_values)
    gallery_vectors = searcher.gallery_vectors()

    def query_vectors(idx):
        return searcher.query_vectors(manips.query_index[idx], manips.attribute[idx], manips.value[idx])

    def unmanipulated_vectors(idx):
        return searcher.unmanipulated_query_vectors(manips.query_index[idx])

    # A gallery smaller than K (tiny test sets) reports the Ks it can rank.
    ks = tuple(k for k in ks if k <= len(g["labels"])) or (len(g["labels"]),)
    results = search.evaluate(
        query_vectors, gallery_vectors, g["labels"], manips, info.attribute_names, ks,
        ndcg_k=min(30, len(g["labels"])), unmanipulated_vectors_fn=unmanipulated_vectors,
        gallery_filter_values=predicted_values(g["logits"], info.num_values), progress=progress,
    )  # fmt: skip
    results.update(
        dataset=info.name, variant=variant, label=LABELS[variant], checkpoint=os.path.relpath(searcher.checkpoint, workdir), num_query=len(q["labels"]), num_gallery=len(g["labels"]),
        seconds=round(time.time() - t0, 1),
    )  # fmt: skip
    if "true_boxes" in q and "boxes" in q and searcher.localization:
        grid = backbone.feature_grid_size(size)
        results["localization"] = localization.localization_report(
            q["boxes"], q["true_boxes"], grid, info.attribute_names
        )
        loc = results["localization"]["mean"]
        log(
            f"AAM boxes: centred on the true region {loc['hit_rate']:.3f} (chance {loc['chance']:.3f}), "
            f"covering its centre {loc['covers']:.3f} (chance {loc['covers_chance']:.3f})"
        )
    log(filter_line(results))
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "results.json"), results)
    table = figures.results_tables({LABELS[variant]: [results]}, info.attribute_names, k=20,
                                   where=f" on {info.name} ({results['searches']['total']} searches)")  # fmt: skip
    figures.write_atomic(os.path.join(out_dir, "table.md"), table.encode())
    figures.plot_topk_curves({LABELS[variant]: {k: v["avg"] for k, v in results["topk"].items()}},
                             os.path.join(out_dir, "topk.png"), title=f"Top-K accuracy, {info.name}",
                             baselines={LABELS[variant]: {k: v["avg"] for k, v in results["unmanipulated"]["topk"].items()}})  # fmt: skip
    if figures_n > 0 and len(manips):
        _draw(info, model, q, g, manips, query_vectors, gallery_vectors, size, out_dir, figures_n)
    log(table)
    return results


def predicted_values(logits, num_values) -> np.ndarray:
    """[N, sum(num_values)] concatenated classifier logits -> [N, A] int64 predicted value per attribute."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != sum(num_values):
        raise ValueError(
            f"logits {logits.shape} must be [N, {sum(num_values)}] for values {list(num_values)}"
        )
    parts = np.split(logits, np.cumsum(num_values)[:-1], axis=1)
    return np.stack([p.argmax(axis=1) for p in parts], axis=1).astype(np.int64)


def filter_line(results: dict, k: int = 20) -> str:
    """One line: Top-k avg manipulated, then both with the filter baseline's filter (`search` module)."""
    k = str(k) if str(k) in results["topk"] else str(max(results["ks"]))
    f = results["filtered"]
    return (
        f"filter baseline, Top-{k} avg: manipulated {results['topk'][k]['avg']:.3f}; ranked among the gallery "
        f"images predicted to have the target value: unmanipulated {f['unmanipulated']['topk'][k]['avg']:.3f}, "
        f"manipulated {f['manipulated']['topk'][k]['avg']:.3f}"
    )


def _draw(info, model, q, g, manips, query_vectors, gallery_vectors, size, out_dir, n):
    """Figure 6 (query, manipulation, Top-4) and AAM overlays of the same queries."""
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(len(manips), size=min(n, len(manips)), replace=False))
    idx, _ = metrics.search_topk(query_vectors(chosen), gallery_vectors, 4)
    matched = metrics.target_hits(idx, manips.target[chosen], g["labels"])
    qpos = manips.query_index[chosen]
    q_images = read_images(info, "query", q["ids"][qpos], size)
    uniq = np.unique(idx)
    g_images = read_images(info, "gallery", g["ids"][uniq], size)
    lookup = {int(p): i for i, p in enumerate(uniq)}
    results = np.stack([[g_images[lookup[int(p)]] for p in row] for row in idx])
    texts = [
        manipulation_text(info, q["labels"][p], a, v)
        for p, a, v in zip(qpos, manips.attribute[chosen], manips.value[chosen])
    ]
    figures.result_grid(q_images, texts, results, matched, os.path.join(out_dir, "results_grid.png"))
    pre = records.preprocess_image(tf.constant(q_images), size)
    out = model(pre, training=False)
    maps = out["maps"].numpy()[:3]
    boxes = out["boxes"].numpy()[:3] if "boxes" in out else aam.boxes_from_maps(maps)  # stage 1 (AMNet)
    panels = [
        figures.overlay_maps(img, m, b, info.attribute_names) for img, m, b in zip(q_images[:3], maps, boxes)
    ]
    figures.write_png(os.path.join(out_dir, "aam_queries.png"), np.concatenate(panels, axis=0))


def write_text(path: str, text: str) -> None:
    """`text` at `path`, atomically (a per-process temporary, then a rename): a kill leaves the old file
    or the new one, and two processes never share a temporary."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    """`obj` as JSON at `path`, atomically (see `write_text`)."""
    write_text(path, json.dumps(obj, indent=2))
