"""Where a traced training step spends its time: TensorBoard profiler traces summed by op group and type.

`trace(step_fn, steps, logdir)` records `steps` calls of `step_fn` with `tf.profiler.experimental` into
`logdir` (open it in TensorBoard's Profile tab, `pip install tensorboard-plugin-profile`); `summarize`
reads the trace's XSpace back (`*.xplane.pb`) and sums the duration of every TensorFlow op executed on
the compute threads, per step:

* by op type (`_MklNativeConv2DBackpropFilterWithBias`, `Cast`, `Mul`, ...);
* by group: the layer the op belongs to (`conv7`, `fc8`, `roi_pooling`, `aam_boxes`, ...), prefixed
  `backward` for ops under the gradient tape, and `optimizer update` for the optimizer's ops.

Op times are summed over threads, so on 2 cores the total can reach twice the step's wall time; shares
are of that total. Executor bookkeeping events (`ExecutorState::Process`) contain op events and are
left out.
"""

from __future__ import annotations

import collections
import glob
import os
import re

OPTIMIZER_PREFIXES = ("adam/", "sgd/", "fused_adam/", "fused_sgd/", "SGD/", "Adam/")
_LAYER = re.compile(
    r"(conv\d|bn\d|lrn\d|norm\d|pool\d|fc8|fc9|fc10_logits|fc10|cls|drop\d+|roi_pooling|global_pooling|aam_boxes|"
    r"attribute_classifier|gap|roi_flat|fusion|whole_image_boxes|fc_\d+|logits)"
)


def group_of(op_name: str) -> str:
    """The op's group: its layer (by name), `optimizer update`, or `other` (losses, triplets, metrics)."""
    if op_name.startswith(OPTIMIZER_PREFIXES) or "/adam/" in op_name or "/sgd/" in op_name:
        return "optimizer update"
    backward = "backward " if op_name.startswith("gradient_tape/") else ""
    m = _LAYER.search(op_name)
    if m:
        name = m.group(1)
        if name.startswith(("drop", "fc_")) and name[-1].isdigit():
            name = re.sub(r"_?\d+$", "", name)
        return backward + name
    if "numpy_function" in op_name or "PyFunc" in op_name or "boxes" in op_name:
        return backward + "aam_boxes"
    return backward + "other"


def trace(step_fn, steps: int, logdir: str) -> str:
    """Runs `step_fn()` `steps` times under the TensorFlow profiler; returns `logdir`."""
    import tensorflow as tf

    os.makedirs(logdir, exist_ok=True)
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(steps):
            step_fn()
    finally:
        tf.profiler.experimental.stop()
    return logdir


def summarize(logdir: str, steps: int, top: int = 12) -> dict:
    """{"op_ms_per_step", "groups": [(group, ms/step, share)], "types": [(type, ms/step, share)]} of the
    newest trace under `logdir`, the `top` largest of each."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {logdir}: the profiler wrote no trace")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    by_type: collections.Counter = collections.Counter()
    by_group: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names[event.metadata_id].name
                if ":" not in name or name.startswith("ExecutorState"):
                    continue
                op, kind = name.rsplit(":", 1)
                ms = event.duration_ps / 1e9 / steps
                by_type[kind] += ms
                by_group[group_of(op)] += ms
    total = sum(by_type.values())

    def rows(counter):
        return [(k, round(v, 2), round(v / total, 4) if total else 0.0) for k, v in counter.most_common(top)]

    return {
        "trace": paths[-1],
        "op_ms_per_step": round(total, 2),
        "groups": rows(by_group),
        "types": rows(by_type),
    }


def format_summary(title: str, summary: dict) -> str:
    """Two markdown tables (groups, op types) of one summary."""
    lines = [f"{title}: ops {summary['op_ms_per_step']:.1f} ms per step (summed over threads)", ""]
    for what, key in (("group", "groups"), ("op type", "types")):
        lines += [f"| {what} | ms/step | share |", "|---|---:|---:|"]
        lines += [f"| {k} | {ms:.1f} | {100 * share:.1f}% |" for k, ms, share in summary[key]]
        lines.append("")
    return "\n".join(lines)
