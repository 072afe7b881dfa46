"""Does the served model search as well as the evaluation says? (issue 6's acceptance check)

Runs the evaluation's searches (same queries, same manipulations, same gallery) through the exported
SavedModel (`embed` on the query images as decoded from the records, `manipulate`, exact search in an
index file built by `experiments.index`) and prints the Top-K accuracy per attribute next to the
numbers in the evaluation's results.json. Also runs a sample of two-attribute searches.

    python benchmarks/serving_agreement.py --export_dir=exports/synthetic/1 --index=indexes/gallery.npz \
        --data_dir=data/synthetic --results=work/synthetic/eval/full/results.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import tensorflow as tf

import fashionsearchnet_v2  # noqa: F401  (oneDNN on before TensorFlow loads)
from fashionsearchnet_v2.data import records, schema
from fashionsearchnet_v2.retrieval import metrics
from fashionsearchnet_v2.serving.export import ExportedModel
from fashionsearchnet_v2.serving.index import SearchIndex


def query_images(info, split="query"):
    out, labels = [], []
    for s in tf.data.TFRecordDataset(info.shard_paths(split)):
        ex = records.parse_example(s, info.num_attributes)
        out.append(records.decode_image(ex["encoded"]).numpy())
        labels.append(ex["labels"].numpy())
    return out, np.stack(labels)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export_dir", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--results", required=True, help="the evaluation's results.json of the exported variant")
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args()
    t0 = time.time()
    info = schema.load_dataset_info(args.data_dir)
    model = ExportedModel(args.export_dir)
    index = SearchIndex.load(args.index)
    images, q_labels = query_images(info)
    emb = model.embed(images)
    manips = metrics.enumerate_manipulations(q_labels, index.labels, info.num_values)
    reps = emb["attribute_representations"][manips.query_index]
    queries = model.manipulate(reps, manips.attribute[:, None], manips.value[:, None])
    idx, _ = metrics.search_topk(queries, index.vectors, args.k)
    hits = metrics.target_hits(idx, manips.target, index.labels)
    acc = metrics.topk_accuracy(hits, manips.attribute, info.num_attributes, (args.k,))
    with open(args.results, encoding="utf-8") as f:
        evaluation = json.load(f)["topk"][str(args.k)]
    print(f"{len(manips)} searches through the export vs the evaluation (Top-{args.k}):")
    print("| attribute | served | evaluation |\n|---|---:|---:|")
    for a, name in enumerate(info.attribute_names):
        print(f"| {name} | {acc['per_attribute'][args.k][a]:.3f} | {evaluation[name]:.3f} |")
    print(f"| avg | {acc['avg'][args.k]:.3f} | {evaluation['avg']:.3f} |")
    # Two attributes at once (the paper's future work): first attribute -> next value, second likewise.
    rng = np.random.default_rng(0)
    rows = rng.choice(len(images), size=min(300, len(images)), replace=False)
    pairs = [rng.choice(info.num_attributes, size=2, replace=False) for _ in rows]
    attrs = np.array(pairs)
    vals = np.array([[(q_labels[r, a] + 1) % info.num_values[a] for a in pr] for r, pr in zip(rows, pairs)])
    target = q_labels[rows].copy()
    target[np.arange(len(rows))[:, None], attrs] = vals
    present = metrics.count_matches(target, index.labels) > 0
    q2 = model.manipulate(emb["attribute_representations"][rows[present]], attrs[present], vals[present])
    idx2, _ = metrics.search_topk(q2, index.vectors, args.k)
    hit2 = metrics.target_hits(idx2, target[present], index.labels).any(1).mean()
    # Baseline: the same searches ranked with the query's own representation (no manipulation).
    idx0, _ = metrics.search_topk(emb["global_representation"][rows[present]], index.vectors, args.k)
    hit0 = metrics.target_hits(idx0, target[present], index.labels).any(1).mean()
    print(f"two-attribute searches with a target in the gallery: {present.sum()}, Top-{args.k} {hit2:.3f} "
          f"(query not manipulated: {hit0:.3f}, gain {hit2 - hit0:+.3f})")  # fmt: skip
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
