"""What did the old stage 3's global ranking loss L_G (Eq. 8) learn, and did learning it help the search?

Kept as the record of WORKSPACE.md decision 57, which issue 15 superseded. It scores its rows on the query
and gallery (the test split), so no setting may be chosen from it: stage 3's settings are chosen on the
validation split by `python -m experiments.stage3_select` (decisions 59-62). "default" below means the
default of decision 57 (unit F, SGD 0.01), not today's.

Trains the global representation (Eq. 7: λ, w_r, memory block M) on a trained stage 2's fixed fc10
features with several settings, each for a number of steps, and evaluates each with the paper's protocol
on the same searches (Top-20 average, manipulation gain, the smallest per-attribute gain), printing L_G at
the start and end, how far λ and M moved, and the share of L_G's triplets that still give a gradient.

    python benchmarks/stage3_learning.py --workdir=work/synthetic/seed0 --data_dir=data/synthetic

Rows (one run, seed 0 of the triplet sampler and of the initialisation):
  raw F, SGD 0.01 x 200 steps         Eq. 8 on raw F: saturated soft triplets (the old default)
  unit F, SGD 0.01 x 200 steps        the default: 2 epochs of the embedded default's 6,500 images
  unit F, SGD 0.01 x 2,000 steps      ten times longer
  unit F, SGD 1.0 x 200 steps         a 100x larger step
  unit F, Adam 1e-3 / 1e-4 x 200      a scale-free optimiser
  unit F, near negatives, SGD 1.0     negatives that match the target but for one attribute
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
import tensorflow as tf

import fashionsearchnet_v2  # noqa: F401  (oneDNN on before TensorFlow loads)
from fashionsearchnet_v2 import losses
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.model import memory_block
from fashionsearchnet_v2.retrieval import metrics, search
from fashionsearchnet_v2.trained import loading
from fashionsearchnet_v2.training.stage3 import GlobalTripletSampler

ROWS = (
    ("raw F, SGD 0.01 x 200", dict(normalize=False)),
    ("unit F, SGD 0.01 x 200 (default)", {}),
    ("unit F, SGD 0.01 x 2000", dict(steps=2000)),
    ("unit F, SGD 1.0 x 200", dict(lr=1.0)),
    ("unit F, Adam 1e-3 x 200", dict(optimizer="adam", lr=1e-3)),
    ("unit F, Adam 1e-4 x 200", dict(optimizer="adam", lr=1e-4)),
    ("unit F, near negatives, SGD 1.0 x 200", dict(lr=1.0, near=True)),
)


def near_negatives(sampler, rng, anchors, attrs, values, num_values):
    """Per anchor: a training image with the target's attributes but one (random attribute, other value);
    a random image where there is none."""
    labels = sampler.labels
    out = rng.integers(len(labels), size=len(anchors))
    for i, (anchor, a, v) in enumerate(zip(anchors, attrs, values)):
        row = labels[anchor]
        mask = row >= 0
        target = np.where(mask, row, -2).astype(np.int32)
        target[a] = v
        index = sampler._lookup(mask)
        for _ in range(8):
            b = int(rng.choice(np.flatnonzero(mask)))
            w = int(rng.integers(num_values[b] - 1))
            other = target.copy()
            other[b] = w + 1 if w >= target[b] else w
            group = index.get(other.tobytes())
            if group is not None:
                out[i] = int(rng.choice(group))
                break
    return out


def train_and_score(feats, info, manips, memory, *, normalize=True, optimizer="sgd", lr=0.01, steps=200,
                    near=False, batch=64, seed=0):  # fmt: skip
    nv = info.num_values
    keras.utils.set_random_seed(seed)
    model = memory_block.build_global_model(
        nv, feats["train"]["fc10"].shape[-1], 256, True, normalize=normalize
    )
    layer = model.get_layer("global_representation")
    layer.memory_block.assign(memory)
    opt = keras.optimizers.SGD(lr) if optimizer == "sgd" else keras.optimizers.Adam(lr)
    sampler = GlobalTripletSampler(feats["train"]["labels"], nv, seed)
    rng = np.random.default_rng(seed + 1)
    x = feats["train"]["fc10"].astype(np.float32)

    @tf.function
    def step(a, t, p, n):
        zeros = tf.zeros_like(t)
        with tf.GradientTape() as tape:
            fq = model({"fc10": a, "manipulation": t})["global"]
            fp = model({"fc10": p, "manipulation": zeros})["global"]
            fn = model({"fc10": n, "manipulation": zeros})["global"]
            loss = tf.reduce_mean(losses.global_ranking_loss(fq, fp, fn))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss, tf.reduce_mean(losses.active_triplets(fq, fp, fn))

    history = []
    for _ in range(steps):
        anchors, attrs, values, positives = sampler.batch(rng, batch)
        t = memory_block.manipulations(attrs, values, nv)
        negatives = (near_negatives(sampler, rng, anchors, attrs, values, nv) if near
                     else rng.integers(len(x), size=batch))  # fmt: skip
        history.append([float(v) for v in step(x[anchors], t, x[positives], x[negatives])])
    q, g = feats["query"], feats["gallery"]

    def vectors(fc10, attributes=None, values=None):
        t = (memory_block.manipulations(attributes, values, nv) if attributes is not None
             else np.zeros((len(fc10), info.total_values), np.float32))  # fmt: skip
        return model({"fc10": fc10, "manipulation": t})["global"].numpy()

    results = search.evaluate(
        lambda i: vectors(q["fc10"][manips.query_index[i]], manips.attribute[i], manips.value[i]),
        vectors(g["fc10"]), g["labels"], manips, info.attribute_names, ks=(20,),
        unmanipulated_vectors_fn=lambda i: vectors(q["fc10"][manips.query_index[i]]),
    )  # fmt: skip
    h = np.asarray(history)
    gains = results["gain"]["topk"]["20"]
    return {
        "L_G": (h[:20, 0].mean(), h[-20:, 0].mean()),
        "active": h[:, 1].mean(),
        "top20": results["topk"]["20"]["avg"],
        "gain": gains["avg"],
        "min_gain": min(gains[a] for a in info.attribute_names if gains[a] is not None),
        "lambda": layer.lambdas.numpy(),
        "memory_moved": float(np.abs(layer.memory_block.numpy() - memory).mean()),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="one seed's work directory (with stage2_rank_l)")
    p.add_argument("--data_dir", required=True)
    args = p.parse_args()
    info = schema.load_dataset_info(args.data_dir)
    model, ckpt, cfg = loading.load_stage2(args.workdir, info, "rank_l")
    directory = loading.stage_dir(args.workdir, "stage2", "rank_l")
    feats = {s: loading.split_features(model, ckpt, info, s, cfg.model.image_size, directory)
             for s in ("train", "query", "gallery")}  # fmt: skip
    manips = metrics.enumerate_manipulations(
        feats["query"]["labels"], feats["gallery"]["labels"], info.num_values
    )
    memory, _ = memory_block.build_memory_block(
        feats["train"]["fc10"], feats["train"]["labels"], info.num_values
    )
    print(f"{len(manips)} searches; stage 2 {ckpt}")
    print("| stage 3 | L_G start → end | active share | Top-20 avg | gain | smallest gain | λ | M moved |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    for name, kw in ROWS:
        r = train_and_score(feats, info, manips, memory, **kw)
        lam = " ".join(f"{v:.2f}" for v in r["lambda"])
        print(f"| {name} | {r['L_G'][0]:.3f} → {r['L_G'][1]:.3f} | {r['active']:.2f} | {r['top20']:.3f} | "
              f"{r['gain']:+.3f} | {r['min_gain']:+.3f} | {lam} | {r['memory_moved']:.1e} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
