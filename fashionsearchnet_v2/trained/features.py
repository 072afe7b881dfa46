"""Attribute representations of a whole split, computed once and cached beside the stage-2 checkpoint.

Stage 3 trains on fixed features (§3.4: "due to memory efficiency we used fixed features") and the
evaluation embeds the query and gallery splits; both read `<stage2 dir>/features/<split>.npz`, which is
recomputed when the checkpoint it came from or the dataset's content (its fingerprint) changes. Features
that are not finite (a diverged model) are refused, never cached.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import weakref

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2 import locks
from fashionsearchnet_v2.data import integrity, pipeline, schema
from fashionsearchnet_v2.progress import Progress
from fashionsearchnet_v2.trained.checkpoints import NonFiniteError

KEYS = ("fc10", "labels", "ids", "boxes", "maps", "logits", "true_boxes", "gap")


_INFERENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference_fn(model, image_spec: tf.TensorSpec):
    """One compiled inference function per model (eager is ~2x slower), reused by every split: a new
    tf.function per call retraced for each split and TensorFlow warned about excessive retracing. It is
    traced once, for `image_spec`'s images in batches of any size: traced for the first batch's size,
    it was traced again for the first smaller batch (the end of a split, or a smaller split), twice per
    model in every evaluation."""
    fn = _INFERENCE.get(model)
    if fn is None:
        ref = weakref.ref(model)  # the function must not keep its model alive
        signature = [tf.TensorSpec([None, *image_spec.shape[1:]], image_spec.dtype)]
        fn = _INFERENCE[model] = tf.function(
            lambda x: ref()(x, training=False), input_signature=signature, autograph=False
        )  # decision P9
    return fn


def extract(
    model,
    info: schema.DatasetInfo,
    split: str,
    image_size: int,
    batch_size: int = 64,
    progress: bool = True,
    keep_maps: bool = False,
) -> dict[str, np.ndarray]:
    """Runs a stage-1 or stage-2 network (inference) over `split`: gap [N, K], labels [N, A], ids [N],
    and for stage 2 fc10 [N, A, D],
    boxes [N, A, 4], logits [N, C] (and maps [N, A, h, w] with keep_maps; true_boxes [N, A, 4] where the
    records carry true regions)."""
    ds = pipeline.make_dataset(info, split, image_size, batch_size, with_boxes=True)
    parts: dict[str, list] = {k: [] for k in KEYS}
    meter = Progress(info.splits[split], f"embedding {split}", enabled=progress)
    done = 0
    predict = _inference_fn(model, ds.element_spec["image"])
    for batch in integrity.reading(ds, info):
        out = predict(batch["image"])
        for key in ("fc10", "boxes", "gap"):
            if key in out:
                parts[key].append(out[key].numpy())
        parts["logits"].append(out["fc10_logits" if "fc10_logits" in out else "logits"].numpy())
        if keep_maps:
            parts["maps"].append(out["maps"].numpy())
        parts["labels"].append(batch["labels"].numpy())
        if "boxes" in batch:  # true attribute regions (synthetic data)
            parts["true_boxes"].append(batch["boxes"].numpy())
        parts["ids"].append(batch["id"].numpy().astype(str))
        done += len(batch["labels"])
        meter.update(done)
    meter.update(done, force=True)
    out = {k: np.concatenate(v) for k, v in parts.items() if v}
    for key in ("fc10", "gap", "logits"):
        if key in out and not np.all(np.isfinite(out[key])):
            rows = np.flatnonzero(~np.isfinite(out[key].reshape(len(out[key]), -1)).all(axis=1))
            raise NonFiniteError(
                f"the model gives non-finite {key} for {len(rows)} of {len(out[key])} {split} images "
                f"(first: {out['ids'][rows[0]]}): its weights are finite but its outputs overflow. "
                "Train it again with a lower learning rate."
            )
    return out


def cache_key(checkpoint_path: str, info: schema.DatasetInfo) -> str:
    """What cached features depend on: the checkpoint (its path and its index file, whose per-tensor
    checksums change with the weights) and the dataset's content fingerprint."""
    h = hashlib.sha256()
    try:
        with open(f"{checkpoint_path}.index", "rb") as f:
            h.update(f.read())
    except OSError:
        pass
    return f"{checkpoint_path} {h.hexdigest()[:16]} {info.fingerprint}"


def cached_extract(model, info, split, image_size, cache_dir, checkpoint_path, batch_size=64, progress=True):
    """`extract`, cached in `cache_dir/<split>.npz` and reused while `cache_key` is unchanged."""
    path = os.path.join(cache_dir, f"{split}.npz")
    key = cache_key(str(checkpoint_path), info)
    if os.path.isfile(path):
        with np.load(path, allow_pickle=False) as f:
            if "key" in f.files and str(f["key"]) == key:
                return {k: f[k] for k in f.files if k not in ("checkpoint", "data_dir", "key")}
    t0 = time.time()
    feats = extract(model, info, split, image_size, batch_size, progress)
    if progress:
        print(f"embedded {len(feats['labels'])} {split} images in {time.time() - t0:.1f}s", file=sys.stderr)
    os.makedirs(cache_dir, exist_ok=True)
    locks.remove_orphan_files(cache_dir, ".npz")  # a killed write's leftover, owner dead
    tmp = f"{path}.tmp-{os.getpid()}.npz"  # two evaluations of one stage may cache at once
    np.savez(tmp, key=key, checkpoint=str(checkpoint_path), data_dir=str(info.data_dir), **feats)
    os.replace(tmp, path)
    return feats
