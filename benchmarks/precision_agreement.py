"""Does a bfloat16 export rank like the float32 one? (issue 16, item 3)

Exports one trained variant twice, `embed` in float32 and in bfloat16 (`experiments.export
--precision=bfloat16`; same weights), indexes the gallery split through each (as `experiments.index`
does) and runs the evaluation's searches through each (every query x every single-attribute
manipulation with a target in the gallery; `embed` on the query images, `manipulate`, exact Top-K).
Prints, per attribute: the Top-K overlap of the two exports' result lists (|A ∩ B| / K, averaged over
the searches), the share of searches with the same Top-K set, and each export's Top-K accuracy and
manipulation gain; and how often the two agree on the predicted values and the AAM boxes.

    python benchmarks/precision_agreement.py --workdir=work/synthetic/seed0 --data_dir=data/synthetic
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import fashionsearchnet_v2  # noqa: F401  (oneDNN on before TensorFlow loads)
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.retrieval import metrics
from fashionsearchnet_v2.serving import export, index

PRECISIONS = ("float32", "bfloat16")


def searches(model, info, k: int) -> dict:
    """The evaluation's searches through one export: query outputs, Top-K indices manipulated and not."""
    from serving_agreement import query_images  # (benchmarks/; imported after oneDNN's switch)

    t0 = time.time()
    gallery = index.index_split(model, info, "gallery", progress=False)
    images, q_labels = query_images(info)
    emb = model.embed(images)
    manips = metrics.enumerate_manipulations(q_labels, gallery.labels, info.num_values)
    reps = emb["attribute_representations"][manips.query_index]
    queries = model.manipulate(reps, manips.attribute[:, None], manips.value[:, None])
    top, _ = metrics.search_topk(queries, gallery.vectors, k)
    top0, _ = metrics.search_topk(emb["global_representation"][manips.query_index], gallery.vectors, k)
    return {"emb": emb, "manips": manips, "gallery": gallery, "top": top, "top0": top0, "s": time.time() - t0}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="one seed's work directory, e.g. work/synthetic/seed0")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--variant", default="full", choices=export.exportable_variants())
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args()
    info = schema.load_dataset_info(args.data_dir)
    vocabulary = export.Vocabulary.from_info(info)
    runs = {}
    with tempfile.TemporaryDirectory() as root:
        for precision in PRECISIONS:
            net, layer, cfg, meta = export.exportable_variant(
                args.workdir, info, args.variant, progress=False, precision=precision
            )
            module = export.ServingModule(net, layer, vocabulary, cfg.image_size)
            out = export.save(module, vocabulary, os.path.join(root, precision), metadata=meta)
            runs[precision] = searches(export.ExportedModel(out), info, args.k)
            print(f"{precision}: {len(runs[precision]['manips'])} searches in {runs[precision]['s']:.0f} s")
    a, b = runs["float32"], runs["bfloat16"]
    manips = a["manips"]
    assert np.array_equal(manips.target, b["manips"].target)  # the same searches (labels come from records)
    k, names = args.k, info.attribute_names
    overlap = np.array([len(set(x) & set(y)) / k for x, y in zip(a["top"], b["top"])])
    same = np.array([set(x) == set(y) for x, y in zip(a["top"], b["top"])])
    acc, base = {}, {}  # Top-K with the manipulated query, and with the query's own representation
    for precision, r in runs.items():
        for out, top in ((acc, r["top"]), (base, r["top0"])):
            hits = metrics.target_hits(top, manips.target, r["gallery"].labels)
            out[precision] = metrics.topk_accuracy(hits, manips.attribute, len(names), (k,))

    def top(precision, i=None):  # (Top-K, gain) of one attribute, or the average
        if i is None:
            return acc[precision]["avg"][k], acc[precision]["avg"][k] - base[precision]["avg"][k]
        a_, b_ = acc[precision]["per_attribute"][k][i], base[precision]["per_attribute"][k][i]
        return a_, a_ - b_

    print(
        f"\n{args.workdir}, variant {args.variant}: float32 export vs bfloat16 export, {len(manips)} searches"
    )
    print(f"| attribute | searches | Top-{k} overlap | same Top-{k} set | Top-{k} float32 | Top-{k} bfloat16 | "
          "gain float32 | gain bfloat16 |\n|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for i, name in [*enumerate(names), (None, "avg")]:
        m = manips.attribute == i if i is not None else np.ones(len(manips), bool)
        (t32, g32), (t16, g16) = top("float32", i), top("bfloat16", i)
        print(f"| {name} | {m.sum()} | {overlap[m].mean():.3f} | {same[m].mean():.3f} | {t32:.3f} | {t16:.3f} | "
              f"{g32:+.3f} | {g16:+.3f} |")  # fmt: skip
    ea, eb = a["emb"], b["emb"]
    values = (ea["predicted_values"] == eb["predicted_values"]).mean()
    boxes = np.all(ea["boxes"] == eb["boxes"], axis=-1).mean()
    ga, gb = a["gallery"].vectors, b["gallery"].vectors
    cosine = np.sum(ga * gb, 1) / (np.linalg.norm(ga, axis=1) * np.linalg.norm(gb, axis=1))
    print(f"\nquery images: predicted values equal {values:.3f}, AAM boxes equal {boxes:.3f}; gallery vectors: "
          f"cosine median {np.median(cosine):.5f}, min {cosine.min():.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
