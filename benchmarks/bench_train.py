"""Training speed and peak memory: a stage-2 step against the bare backbone's step, same run, same batch.

Issue 3, item 12: on a 2-core CPU with oneDNN on, the localization (AAMs + boxes), ROI pooling and the
per-attribute branches of stage 2 should cost at most 30% on top of the bare backbone's training step,
and training at the paper's settings (227 px, batch 32) should peak under 8 GiB.

Rows (each in its own subprocess, so the peak memory is the row's own; the parent prints the table):

* baseline: image -> `build_backbone` (conv1..conv7) -> GAP -> one Dense per attribute -> softmax CE,
  trained by `Stage1Task.train_step` (L_C and the accuracy counts), SGD momentum 0.9. This is what a
  plain AlexNet-style attribute classifier costs.
* stage 1: `build_network(..., "stage1")` with `Stage1Task.train_step` (a sanity row: it adds only the
  AAMs of Eq. 3 to the baseline).
* stage 2: `build_network(..., "full")` with `Stage2Task.train_step`: AAMs, boxes (`--box_backend`),
  ROI pooling, fc8/fc9/fc10 branches, L_C + 1.5 L_T (`losses.mine_triplets`) + L_TC.
* stage 2 with the other box backend (skimage <-> tf), and stage 2 with feature fusion (§3.2 FF).
* stage2_noguard: stage 2 without the trainer's divergence check (`training.guard.all_finite` over the
  model's variables), to measure what the check costs (issue 10; WORKSPACE.md decision R1).
* baseline_xla, stage1_xla: the same steps compiled with XLA (`tf.function(jit_compile=True)`), against
  the uncompiled baseline of the same run: whether XLA would make the backbone itself faster (issue 26).
  Stage 2 does not compile (TensorFlow 2.21 "tf2xla conversion failed", with either box backend).

Every row runs in each precision of `--precisions` (default: float32 and bfloat16, `--precision` of the
stages; WORKSPACE.md decision 63), each in its own process, one after the other (float32, bfloat16, next
row, ...; `--rounds=N` repeats the whole sequence and reports each row's median over the rounds, so both
precisions see the same changes of machine load). Issue 16's goal: a bfloat16 stage-2 step at least 1.4x
as fast as float32 at 227 px, batch 32.

Every step runs inside `tf.function` exactly as `training.trainer.Trainer` runs it (`strategy.run` of the
task's step, sums reduced, step counter incremented, the divergence flag computed) and is synchronised by
reading the loss and the flag. Reported:
images/s from the median step time after `--warmup` steps, ms/step, the ratio to the baseline measured
in the same invocation with the same input and precision, bfloat16's speed-up over the same row in
float32, and the row's peak RSS (`ru_maxrss`).

Inputs: `--input=memory` (default) feeds one random batch held in memory (mean-subtracted-pixel scale,
random labels of `--num_attributes` attributes with DARN-like value counts). `--input=pipeline` writes a
small synthetic TFRecord dataset (256 images, 6 attributes) and reads it through
`data.pipeline.make_dataset(..., training=True)`; it adds an input-only row (the pipeline's own
throughput) and the baseline and stage-2 rows on memory input with the same attributes, and reports the
time each step waited for its batch, which shows whether the pipeline keeps ahead of training.

Run it on an otherwise idle machine (the paper's settings are the defaults):

    python benchmarks/bench_train.py                        # 227 px, batch 32, 20 steps after 3 warm-up
    python benchmarks/bench_train.py --input=pipeline
    python benchmarks/bench_train.py --batch_norm --rows=baseline,stage2
    python benchmarks/bench_train.py --rows=stage2 --steps=8 --warmup=2 --rounds=2   # issue 16's check
    python benchmarks/bench_train.py --image_size=96 --batch_size=4 --steps=3 --warmup=1   # smoke run

`fashionsearchnet_v2` is imported before TensorFlow so that its oneDNN switch (`TF_ENABLE_ONEDNN_OPTS=1`)
is in place when TensorFlow loads; the environment is printed with the table.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# Before any TensorFlow import (here and in the row subprocesses): sets TF_ENABLE_ONEDNN_OPTS=1.
import fashionsearchnet_v2  # noqa: F401

# DARN's attributes have these many values (clothes category, button, color, length, pattern, shape,
# collar, sleeve length, sleeve shape); other --num_attributes cycle through them.
DARN_VALUES = (20, 13, 55, 7, 28, 11, 26, 8, 17)
MAX_RATIO = 1.30
MAX_PEAK_GIB = 8.0
MIN_BF16_SPEEDUP = 1.4  # issue 16: bfloat16 stage-2 step vs float32, 227 px, batch 32
PRECISIONS = ("float32", "bfloat16")
ROWS = (
    "baseline",
    "stage1",
    "stage2",
    "stage2_alt",
    "stage2_ff",
    "stage2_noguard",
    "baseline_xla",
    "stage1_xla",
)
RESULT_TAG = "BENCH_TRAIN_RESULT "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=227)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps per row, after the warm-up")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per row (the first one traces)")
    p.add_argument("--num_attributes", type=int, default=9, help="memory input only")
    p.add_argument(
        "--num_values",
        default="",
        help="comma-separated values per attribute (memory input); default: DARN's counts, cycled",
    )
    p.add_argument("--box_backend", choices=("skimage", "tf"), default="skimage")
    p.add_argument("--batch_norm", action="store_true", help="BN before each conv ReLU (not in the paper)")
    p.add_argument("--no_lrn", action="store_true", help="drop AlexNet's LRN (the synthetic default)")
    p.add_argument(
        "--learning_rate",
        type=float,
        default=0.01,
        help="the paper's 0.01; random weights on random data may diverge at it (reported, not fatal)",
    )
    p.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default="sgd",
        help="stages' optimiser: the paper's SGD (momentum 0) or the embedded default's Adam",
    )
    p.add_argument(
        "--fused_update",
        choices=("auto", "yes", "no"),
        default="auto",
        help="the optimiser's update as one fused kernel per variable (yes) or Keras' ops (no); auto: TrainConfig's default",
    )
    p.add_argument(
        "--profile_dir",
        default="",
        help="also trace --profile_steps steps of every row with the TensorFlow profiler into this directory "
        "and print the top ops (benchmarks/trace_ops.py)",
    )
    p.add_argument("--profile_steps", type=int, default=5)
    p.add_argument("--input", choices=("memory", "pipeline"), default="memory")
    p.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"comma-separated subset of {','.join(ROWS)} (stage2_alt = stage 2 with the other box backend)",
    )
    p.add_argument("--intra_op_threads", type=int, default=0, help="0: TensorFlow's default (all cores)")
    p.add_argument("--inter_op_threads", type=int, default=0, help="0: TensorFlow's default")
    p.add_argument("--shuffle_buffer", type=int, default=256, help="pipeline input")
    p.add_argument(
        "--precisions",
        default=",".join(PRECISIONS),
        help="comma-separated compute precisions to run every row in (float32, bfloat16)",
    )
    p.add_argument("--rounds", type=int, default=1, help="run the whole sequence this many times")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    # Internal: one row in this process (the parent starts these).
    p.add_argument("--_row", default="", help=argparse.SUPPRESS)
    p.add_argument("--_data_dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        p.error(f"unknown rows {unknown}; valid: {', '.join(ROWS)}")
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 2:
        p.error("need --steps >= 1, --warmup >= 1 (the first step traces) and --batch_size >= 2")
    args.row_list = rows
    args.precision_list = [x for x in args.precisions.split(",") if x]
    bad = sorted(set(args.precision_list) - set(PRECISIONS))
    if bad or not args.precision_list:
        p.error(f"--precisions takes some of {','.join(PRECISIONS)}, got {args.precisions!r}")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def memory_num_values(args) -> list[int]:
    if args.num_values:
        return [int(v) for v in args.num_values.split(",")]
    return [DARN_VALUES[i % len(DARN_VALUES)] for i in range(args.num_attributes)]


def other_backend(backend: str) -> str:
    return "tf" if backend == "skimage" else "skimage"


def row_label(row: str, args) -> str:
    if row.endswith("_xla"):
        base = row.removesuffix("_xla")
        return row_label(base, args) + ", XLA"
    return {
        "input_only": "input pipeline alone",
        "baseline": "baseline: bare backbone + GAP classifiers",
        "stage1": "stage 1 (AAM classifiers)",
        "stage2": f"stage 2, boxes {args.box_backend}",
        "stage2_alt": f"stage 2, boxes {other_backend(args.box_backend)}",
        "stage2_ff": f"stage 2 + feature fusion, boxes {args.box_backend}",
        "stage2_noguard": f"stage 2 without the divergence check, boxes {args.box_backend}",
    }[row]


# --------------------------------------------------------------------------------------------------
# One row, in a child process.
# --------------------------------------------------------------------------------------------------
def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _environment(tf) -> dict:
    try:
        from tensorflow.python.util import _pywrap_util_port

        built_with_onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        built_with_onednn = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "tf_version": tf.__version__,
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "built_with_onednn": built_with_onednn,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "cores": cores,
    }


def run_row(args, row: str, input_kind: str, precision: str = "float32") -> dict:
    import dataclasses

    import keras
    import numpy as np
    import tensorflow as tf

    from fashionsearchnet_v2 import configs
    from fashionsearchnet_v2 import precision as precision_lib
    from fashionsearchnet_v2.data import pipeline, schema
    from fashionsearchnet_v2.model import backbone
    from fashionsearchnet_v2.training import stages, trainer

    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    keras.utils.set_random_seed(args.seed)
    b, s = args.batch_size, args.image_size

    if args._data_dir:
        info = schema.load_dataset_info(args._data_dir)
    else:
        info = schema.DatasetInfo(
            name="bench",
            attributes=[
                schema.Attribute(f"attr{i}", tuple(f"v{j}" for j in range(n)))
                for i, n in enumerate(memory_num_values(args))
            ],
            splits={},
            seed=args.seed,
            source="random tensors",
        )
    num_values = info.num_values

    # Input: one random batch in memory, or the training pipeline over the synthetic records.
    if input_kind == "pipeline":
        ds = pipeline.make_dataset(
            info, "train", s, b, training=True, seed=args.seed, shuffle_buffer=args.shuffle_buffer
        )
        iterator = iter(ds)

        def next_batch():
            return next(iterator)
    else:
        rng = np.random.default_rng(args.seed)
        batch = {
            # Mean-subtracted BGR pixels have a standard deviation of about 60 (backbone.PIXEL_STD).
            "image": tf.constant(rng.normal(0.0, backbone.PIXEL_STD, (b, s, s, 3)).astype(np.float32)),
            "labels": tf.constant(
                np.stack([rng.integers(0, n, b) for n in num_values], axis=1).astype(np.int32)
            ),
        }

        def next_batch():
            return batch

    result = {"row": row, "input": input_kind, "precision": precision, "num_values": num_values}
    result.update(_environment(tf))
    total = args.warmup + args.steps

    if row == "input_only":
        waits = []
        for _ in range(total):
            t0 = time.perf_counter()
            x = next_batch()
            x["image"].numpy()  # the batch is really there
            waits.append(time.perf_counter() - t0)
        step_s = statistics.median(waits[args.warmup :])
        result.update(step_ms=1e3 * step_s, wait_ms=1e3 * step_s, images_per_s=b / step_s, params=0)
        result["peak_rss_gib"] = _peak_rss_gib()
        return result

    jit = row.endswith("_xla")
    row = row.removesuffix("_xla")
    box_backend = other_backend(args.box_backend) if row == "stage2_alt" else args.box_backend
    model_cfg = configs.ModelConfig(
        image_size=s,
        batch_norm=args.batch_norm,
        lrn=not args.no_lrn,
        box_backend=box_backend,
        feature_fusion=row == "stage2_ff",
    )
    # Momentum 0.9 and λ_C, λ_T, λ_TC = 1, 1.5, 1 as in training; lr 0.01 (§4.1) unless --learning_rate.
    fused = {} if args.fused_update == "auto" else {"fused_update": args.fused_update == "yes"}
    train_cfg = configs.TrainConfig(
        batch_size=b,
        seed=args.seed,
        learning_rate=args.learning_rate,
        precision=precision,
        optimizer=args.optimizer,
        **fused,
    )
    config = configs.ExperimentConfig(dataset=info.name, model=model_cfg, train=train_cfg)
    strategy = tf.distribute.get_strategy()

    class BaselineTask(stages.Stage1Task):
        """Stage 1's step (L_C, SGD momentum) on the bare backbone with one Dense per attribute on GAP
        (in bfloat16: the backbone in bfloat16, GAP and the softmax heads in float32, as in the network)."""

        name = "baseline"

        def build_model(self):
            cfg = self.config.model
            image = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
            feats = backbone.build_backbone(
                image, cfg.width, cfg.conv5_filters, cfg.conv67_filters, cfg.lrn, cfg.batch_norm,
                dtype=precision_lib.layer_policy(self.precision),
            )  # fmt: skip
            gap = keras.layers.GlobalAveragePooling2D(name="gap", dtype="float32")(feats["conv7"])
            logits = [
                keras.layers.Dense(n, name=f"fc_{i}", dtype="float32")(gap)
                for i, n in enumerate(self.num_values)
            ]
            out = keras.layers.Concatenate(name="logits", dtype="float32")(logits)
            return keras.Model(image, {"logits": out}, name="bare_backbone")

    if row == "baseline":
        task = BaselineTask(config, info, "", strategy)
    elif row == "stage1":
        task = stages.Stage1Task(config, info, "", strategy)
    else:
        task = stages.Stage2Task(config, info, "", strategy, stage1_dir="", stage1_config=None)

    # The trainer's own state and step (training.trainer), so the benchmark times what training runs.
    model, optimizer, step = trainer.build_state(task, strategy, args.warmup + args.steps)
    distributed_step = trainer.step_function(
        task, strategy, model, optimizer, step, guarded=row != "stage2_noguard", jit_compile=jit
    )

    waits, steps, losses = [], [], []
    for i in range(total):
        t0 = time.perf_counter()
        x = next_batch()
        t1 = time.perf_counter()
        out, finite = distributed_step(x)
        loss = float(out["loss"].numpy())  # synchronises: the step has run
        bool(finite)  # as the trainer reads it
        t2 = time.perf_counter()
        if i == 0:
            result["first_step_s"] = t2 - t0  # tracing + first run
        waits.append(t1 - t0)
        steps.append(t2 - t0)
        losses.append(loss)
    # Speed does not depend on the values, but NaNs can change what runs (e.g. whole-image fallback boxes).
    result["finite_loss"] = bool(np.all(np.isfinite(losses)))
    result["diverged"] = not result["finite_loss"] or losses[-1] > 10 * max(losses[0], 1e-6)
    step_s = statistics.median(steps[args.warmup :])
    result.update(
        step_ms=1e3 * step_s,
        wait_ms=1e3 * statistics.median(waits[args.warmup :]),
        images_per_s=b / step_s,
        params=int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        loss_first=losses[0],
        loss_last=losses[-1],
        model_config=dataclasses.asdict(model_cfg),
    )
    result["peak_rss_gib"] = _peak_rss_gib()
    if args.profile_dir:
        import trace_ops

        def one_step():
            out, finite = distributed_step(next_batch())
            out["loss"].numpy()
            bool(finite)

        logdir = os.path.join(args.profile_dir, f"{result['row']}-{input_kind}-{precision}-{s}px")
        trace_ops.trace(one_step, args.profile_steps, logdir)
        result["profile"] = trace_ops.summarize(logdir, args.profile_steps)
    return result


# --------------------------------------------------------------------------------------------------
# Parent: write the records (pipeline input), run the rows, print the table.
# --------------------------------------------------------------------------------------------------
def child_command(args, row: str, input_kind: str, data_dir: str, precision: str = "float32") -> list[str]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        f"--_row={row}:{input_kind}:{precision}",
        f"--image_size={args.image_size}",
        f"--batch_size={args.batch_size}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--num_attributes={args.num_attributes}",
        f"--box_backend={args.box_backend}",
        f"--input={input_kind}",
        f"--learning_rate={args.learning_rate}",
        f"--optimizer={args.optimizer}",
        f"--fused_update={args.fused_update}",
        f"--profile_dir={args.profile_dir}",
        f"--profile_steps={args.profile_steps}",
        f"--intra_op_threads={args.intra_op_threads}",
        f"--inter_op_threads={args.inter_op_threads}",
        f"--shuffle_buffer={args.shuffle_buffer}",
        f"--seed={args.seed}",
    ]
    if args.num_values:
        cmd.append(f"--num_values={args.num_values}")
    if args.batch_norm:
        cmd.append("--batch_norm")
    if args.no_lrn:
        cmd.append("--no_lrn")
    if data_dir:
        cmd.append(f"--_data_dir={data_dir}")
    return cmd


def run_child(args, row: str, input_kind: str, data_dir: str, precision: str = "float32") -> dict:
    t = time.perf_counter()
    proc = subprocess.run(
        child_command(args, row, input_kind, data_dir, precision), capture_output=True, text=True, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG) :])
            result["wall_s"] = time.perf_counter() - t
            return result
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    return {
        "row": row,
        "input": input_kind,
        "precision": precision,
        "error": f"exit {proc.returncode}\n{tail}",
    }


def write_records(args, tmp: str) -> str:
    from fashionsearchnet_v2.data import synthetic

    data_dir = os.path.join(tmp, "synthetic")
    t = time.perf_counter()
    synthetic.write_synthetic(
        data_dir,
        num_images=256,
        image_size=args.image_size,
        num_query=8,
        num_gallery=8,
        seed=args.seed,
        progress=False,
    )
    print(
        f"wrote 256 synthetic images ({args.image_size} px) in {time.perf_counter() - t:.1f} s to {data_dir}"
    )
    return data_dir


def plan(args) -> list[tuple[str, str, str]]:
    """(row, input, precision) in the order they run: each row in every precision, one after the other."""
    rows = args.row_list
    if args.input == "memory":
        runs = [(r, "memory") for r in ["baseline", *[r for r in rows if r != "baseline"]]]
    else:
        # Pipeline: the pipeline alone, every row on it, and the baseline and stage 2 on memory input with
        # the same (dataset's) attributes for the comparison.
        runs = [("input_only", "pipeline")]
        runs += [(r, "pipeline") for r in ["baseline", *[r for r in rows if r != "baseline"]]]
        runs += [("baseline", "memory")] + ([("stage2", "memory")] if "stage2" in rows else [])
    return [
        (row, kind, p)
        for row, kind in runs
        for p in (["float32"] if row == "input_only" else args.precision_list)
    ]


def combine(args, results: list[dict]) -> list[dict]:
    """One result per (row, input, precision): the median step over the rounds, the largest peak."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["row"], r["input"], r["precision"]), []).append(r)
    out = []
    for rs in groups.values():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out.append(rs[0])
            continue
        merged = dict(ok[0])
        step = statistics.median(r["step_ms"] for r in ok)
        merged.update(
            step_ms=step,
            images_per_s=1e3 * args.batch_size / step,
            wait_ms=statistics.median(r["wait_ms"] for r in ok),
            peak_rss_gib=max(r["peak_rss_gib"] for r in ok),
            rounds_step_ms=[round(r["step_ms"], 1) for r in ok],
            diverged=any(r.get("diverged") for r in ok),
        )
        out.append(merged)
    return out


def speedups(results: list[dict]) -> dict[tuple, float]:
    """(row, input) -> float32 step time / bfloat16 step time, where both ran."""
    ms = {(r["row"], r["input"], r["precision"]): r["step_ms"] for r in results if "error" not in r}
    return {
        (row, kind): ms[(row, kind, "float32")] / t
        for (row, kind, p), t in ms.items()
        if p == "bfloat16" and (row, kind, "float32") in ms
    }


def format_table(args, results: list[dict]) -> str:
    baseline = {
        (r["input"], r["precision"]): r for r in results if r["row"] == "baseline" and "error" not in r
    }
    faster = speedups(results)
    head = (
        "| row | input | precision | image size | batch | images/s | ms/step | input wait ms/step | "
        "ratio vs baseline | bfloat16 speed-up | peak memory (GiB) | ratio ≤ 1.30 | peak < 8 GiB |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in results:
        label = row_label(r["row"], args)
        start = f"| {label} | {r['input']} | {r['precision']} | {args.image_size} | {args.batch_size} |"
        if "error" in r:
            lines.append(f"{start} failed |" + " |" * 7)
            continue
        base = baseline.get((r["input"], r["precision"]))
        if r["row"] == "input_only" or base is None:
            ratio, ratio_ok = "", ""
        else:
            x = r["step_ms"] / base["step_ms"]
            ratio, ratio_ok = f"{x:.2f}", ("yes" if x <= MAX_RATIO else "NO")
        up = faster.get((r["row"], r["input"])) if r["precision"] == "bfloat16" else None
        peak = r["peak_rss_gib"]
        lines.append(
            f"{start} {r['images_per_s']:.1f} | {r['step_ms']:.1f} | {r['wait_ms']:.2f} | {ratio} | "
            f"{'' if up is None else f'{up:.2f}x'} | {peak:.2f} | {ratio_ok} | {'yes' if peak < MAX_PEAK_GIB else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._row:
        row, input_kind, precision = args._row.split(":")
        print(RESULT_TAG + json.dumps(run_row(args, row, input_kind, precision)), flush=True)
        return 0

    tmp = tempfile.mkdtemp(prefix="bench_train_")
    try:
        data_dir = write_records(args, tmp) if args.input == "pipeline" else ""
        runs = []
        for round_ in range(args.rounds):
            for row, input_kind, precision in plan(args):
                # Memory rows in pipeline mode use the dataset's attributes too (same model as the pipeline
                # rows).
                r = run_child(args, row, input_kind, data_dir, precision)
                runs.append(r)
                what = (
                    f"{row} ({input_kind}, {precision}{f', round {round_ + 1}' if args.rounds > 1 else ''})"
                )
                if "error" in r:
                    print(f"{what}: FAILED {r['error']}", flush=True)
                else:
                    print(
                        f"{what}: {r['images_per_s']:.1f} images/s, {r['step_ms']:.1f} ms/step "
                        f"(input wait {r['wait_ms']:.2f} ms), peak {r['peak_rss_gib']:.2f} GiB, "
                        f"first step {r.get('first_step_s', 0):.1f} s, loss {r.get('loss_first', 0):.4g} -> "
                        f"{r.get('loss_last', 0):.4g}, {r['wall_s']:.0f} s in all, load average "
                        f"{os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = combine(args, runs)

    ok = [r for r in results if "error" not in r]
    if ok:
        env = ok[0]
        print()
        print(
            f"TensorFlow {env['tf_version']}, TF_ENABLE_ONEDNN_OPTS={env['TF_ENABLE_ONEDNN_OPTS']} "
            f"(built with oneDNN: {env['built_with_onednn']}), intra-op threads {env['intra_op_threads']}, "
            f"inter-op threads {env['inter_op_threads']} (0 = TensorFlow's default), {env['cores']} cores; "
            f"attributes {len(env['num_values'])} with values {env['num_values']}; "
            f"median of {args.steps} steps after {args.warmup} warm-up; "
            f"model: lrn {not args.no_lrn}, batch_norm {args.batch_norm}"
        )
        params = {r["row"]: r["params"] for r in ok if r["row"] != "input_only"}
        print("trainable parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    print()
    print(format_table(args, results))
    if args.profile_dir:
        import trace_ops

        for r in ok:
            if "profile" in r:
                title = (
                    f"\n{row_label(r['row'], args)} ({r['input']}, {r['precision']}, {args.image_size} px)"
                )
                print(trace_ops.format_summary(title, r["profile"]))
    for (row, kind), up in speedups(results).items():
        goal = ""
        if row == "stage2" and (args.image_size, args.batch_size) == (227, 32):
            goal = f" (issue 16: >= {MIN_BF16_SPEEDUP}x, {'met' if up >= MIN_BF16_SPEEDUP else 'NOT met'})"
        # Each round's own ratio (float32 and bfloat16 ran next to each other): how far load moved it.
        per_round = [
            f"{f['step_ms'] / h['step_ms']:.2f}x"
            for f, h in zip(*[[r for r in runs if (r["row"], r["input"], r["precision"]) == (row, kind, p) and
                               "error" not in r] for p in PRECISIONS])
        ]  # fmt: skip
        rounds = f" (median step times; per round {', '.join(per_round)})" if len(per_round) > 1 else ""
        print(f"\nbfloat16 vs float32, {row_label(row, args)} ({kind}): {up:.2f}x the images/s{rounds}{goal}")
    diverged = [
        f"{row_label(r['row'], args)} ({r['input']}, {r['precision']})" for r in ok if r.get("diverged")
    ]
    if diverged:
        print(
            f"\nnote: the loss diverged in: {'; '.join(diverged)} (random weights, random data, "
            f"lr {args.learning_rate}); their timings may not represent training. Try --learning_rate=0.001."
        )
    alone = [r for r in ok if r["row"] == "input_only"]
    if alone:
        train_rows = [r for r in ok if r["input"] == "pipeline" and r["row"] != "input_only"]
        worst = max(train_rows, key=lambda r: r["wait_ms"] / r["step_ms"], default=None)
        if worst is not None:
            print(
                f"\ninput pipeline alone: {alone[0]['images_per_s']:.0f} images/s; training waited at "
                f"most {100 * worst['wait_ms'] / worst['step_ms']:.1f}% of a step for its batch "
                f"({row_label(worst['row'], args)}, {worst['precision']})"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                    "rows": results,
                    "runs": runs,
                },  # fmt: skip
                f,
                indent=2,
            )
    return 1 if len(ok) < len(results) else 0


if __name__ == "__main__":
    sys.exit(main())
