"""Flags shared by every entry point and their translation into an ExperimentConfig.

Only `experiments/` reads flags; the library gets the resolved config object, which is also written
into the stage's work directory next to its checkpoints.

Every entry point ends in `run(main)`: a failure the user can meet (bad or damaged data, wrong stage
order, a diverged run, a directory in use, a full disk) is one `error: ...` line and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
from typing import NamedTuple

from absl import app, flags, logging

import fashionsearchnet_v2  # noqa: F401  (switches oneDNN on before TensorFlow loads)
from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import schema

# Registered datasets and the converter that makes each.
DATASETS = {
    "synthetic": "python -m data_prep.synthetic --output_dir={data_dir}",
    "darn": "python -m data_prep.darn --input_dir=RAW_DARN --output_dir={data_dir}",
    "shopping100k": "python -m data_prep.shopping100k --input_dir=RAW_SHOPPING100K --output_dir={data_dir}",
    "imaterialist": "python -m data_prep.imaterialist --input_dir=RAW_IMATERIALIST --output_dir={data_dir}",
    "celeba": "python -m data_prep.celeba --input_dir=RAW_CELEBA --output_dir={data_dir}",
    "fashion_product": "python -m data_prep.fashion_product --input_dir=RAW_FPI --output_dir={data_dir}",
}

DATASET = flags.DEFINE_string(
    "dataset",
    "synthetic",
    f"Registered dataset ({', '.join(DATASETS)}), or the name of one converted into data/<name>; "
    "with --data_dir alone, the name in its dataset.json.",
)
DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "Converted dataset directory, any converter's (default data/<dataset>; data/synthetic-quick with --quick).",
)
WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Work directory of this dataset (default work/<dataset>, work/<dataset>-quick with --quick); a seed "
    "trains in <workdir>/seed<N>.",
)
IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Input size (paper: 227; synthetic default 128).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch size.")
EPOCHS = flags.DEFINE_float("epochs", None, "Epochs of stages 1 and 2 (paper: 12 each).")
STAGE3_EPOCHS = flags.DEFINE_float("stage3_epochs", None, "Epochs of stage 3 (default 6; paper: 2).")
LEARNING_RATE = flags.DEFINE_float("learning_rate", None, "SGD learning rate (paper: 0.01).")
MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Stop after this many steps (overrides --epochs).")
ALEXNET_WEIGHTS = flags.DEFINE_string("alexnet_weights", None, "bvlc_alexnet.npy for conv1-conv4 (§4.1).")
INIT_FROM = flags.DEFINE_string(
    "init_from",
    None,
    "Start stage 1's backbone (conv1-conv7) from an earlier run's stage directory, e.g. "
    "work/shop/seed0/stage2_rank_l (the attribute classifiers start fresh); instead of --alexnet_weights. "
    "WORKSPACE.md decision 69.",
)
SEED = flags.DEFINE_integer(
    "seed", 0, "Seed of everything random in training; the run lives in <workdir>/seed<N>."
)
SEEDS = flags.DEFINE_list(
    "seeds",
    None,
    "main/ablation: train and evaluate every seed listed (e.g. 0,1,2), one work directory each, and print "
    "mean ± std per cell (default: --seed).",
)
STRATEGY = flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"], "tf.distribute.")
QUICK = flags.DEFINE_bool(
    "quick",
    False,
    "Shrink everything to a run of seconds (smoke checks), in work/<dataset>-quick (and for synthetic "
    "data/synthetic-quick): never in the default directories, which real runs use.",
)
SCHEDULE = flags.DEFINE_enum(
    "schedule",
    "default",
    ["default", "paper"],
    "'paper': 227 px, LRN, SGD 0.01, 12 + 12 epochs (stage 3: decision 62's 6), batch 32, whatever the dataset.",
)
BATCH_NORM = flags.DEFINE_bool(
    "batch_norm",
    None,
    "BatchNorm before each conv ReLU, LRN off (not in the paper; default only for synthetic).",
)
DETERMINISTIC_OPS = flags.DEFINE_bool(
    "deterministic_ops",
    False,
    "TensorFlow op determinism (bitwise-equal reruns on any hardware; same-machine runs repeat without it).",
)
BOX_BACKEND = flags.DEFINE_enum("box_backend", None, ["skimage", "tf"], "AAM box extraction implementation.")
FEATURE_FUSION = flags.DEFINE_bool(
    "feature_fusion", False, "Use the feature-fusion model (Full w/ FF, §3.2)."
)
OPTIMIZER = flags.DEFINE_enum(
    "optimizer", None, ["sgd", "adam"], "Optimiser of stages 1 and 2 (paper: sgd; embedded default: adam)."
)
MOMENTUM = flags.DEFINE_float("momentum", None, "SGD momentum of stages 1 and 2 (paper: 0, plain SGD).")
WARMUP_STEPS = flags.DEFINE_integer(
    "warmup_steps",
    None,
    "Steps over which the learning rate of stages 1 and 2 ramps up linearly (default: 100 with SGD on real "
    "data, 0 with Adam and on the embedded default; 0 = the paper: lr 0.01 from the first step). "
    "WORKSPACE.md decision 64.",
)
FUSED_UPDATE = flags.DEFINE_bool(
    "fused_update",
    None,
    "Stages 1 and 2 update each weight with one fused kernel (default; Keras' arithmetic up to float32 "
    "rounding, faster); --nofused_update: Keras' optimiser ops. WORKSPACE.md decision P1.",
)
CACHE_DECODED_MIB = flags.DEFINE_integer(
    "cache_decoded_mib",
    None,
    "Stages 1 and 2 decode the training split once and hold it in memory when its pixels fit in this many "
    "MiB and share one size (default 1024; the same batches as decoding every epoch); 0: decode as read.",
)
EXCLUDE_VALIDATION = flags.DEFINE_bool(
    "exclude_validation",
    None,
    "Stages 1 and 2 leave decision 59's validation carve (a fifth of the training split, by id hash) out "
    "of their training, so a choice of theirs can be scored on images they never saw (decision 72). "
    "Default false: the whole training split, as the paper and every table.",
)
CLASSIFIER_INIT = flags.DEFINE_enum(
    "classifier_init",
    None,
    ["zeros", "glorot"],
    "Stage 1's fresh GAP classifiers w_a: glorot (default; a first loss about twice chance) or zeros "
    "(a first loss of exactly chance; trained less in the first 150 steps). WORKSPACE.md decision 64.",
)
PAPER_STAGE3 = flags.DEFINE_bool(
    "paper_stage3",
    False,
    "Stage 3 as the paper writes it (random w_r, raw F, random negatives, SGD 0.01, 2 epochs, the "
    "last step kept) instead of the settings chosen on the validation split, on the same training images "
    "(the validation fifth stays out of M and the triplets; WORKSPACE.md decision 62).",
)
OLD_AMNET = flags.DEFINE_bool(
    "old_amnet",
    False,
    "AMNet as measured before issue 24 (random memory, one manipulation per image, plain SGD 0.01 for 2 "
    "epochs, the last step kept; README's 227 px rows) instead of the settings chosen on the validation "
    "split (WORKSPACE.md A9, docs/amnet_selection.md).",
)
STAGE3_LEARNING_RATE = flags.DEFINE_float(
    "stage3_learning_rate", None, "Stage 3's learning rate (default 1e-4 with Adam; the paper's SGD: 0.01)."
)
STAGE3_NEGATIVES = flags.DEFINE_enum(
    "stage3_negatives", None, ["random", "near"],
    "Stage 3's negatives: random (the paper) or near (the target but one attribute).",
)  # fmt: skip
W_R_INIT = flags.DEFINE_enum(
    "w_r_init", None, ["glorot", "identity"],
    "Stage 3's w_r at step 0: glorot (random, r) or identity (s·I, r = A·D: step 0 ranks as the concatenation).",
)  # fmt: skip
NORMALIZE_GLOBAL = flags.DEFINE_bool(
    "normalize_global",
    None,
    "Stage 3: unit-norm global representation F (default false: raw F, as Eq. 7 and decision 62; unit F "
    "is decision 57's, superseded).",
)
LAMBDA_C = flags.DEFINE_float("lambda_c", None, "Eq. 9 weight of L_C.")
LAMBDA_T = flags.DEFINE_float("lambda_t", None, "Eq. 9 weight of L_T (paper: 1.5).")
LAMBDA_TC = flags.DEFINE_float("lambda_tc", None, "Eq. 9 weight of L_TC.")
PRECISION = flags.DEFINE_string(
    "precision",
    "auto",
    "auto, float32 or bfloat16: the compute precision of stages 1 and 2 and AMNet (export: of embed, "
    "default float32 there); bfloat16's accuracy is float32's within the seeds' spread (docs/results.md, "
    "WORKSPACE.md decision 63). "
    "auto = bfloat16 where the device multiplies in it natively (a CPU with avx512_bf16 or amx_bf16, "
    "GPUs of compute capability 8.0+), else float32. Weights, losses, boxes and every distance stay "
    "float32; a run resumes in either precision. Stage 3 and the evaluation always run in float32.",
)
LOSS_UPPER_BOUND = flags.DEFINE_float(
    "loss_upper_bound",
    None,
    "Stop (error, exit 2) when the mean loss of the last 10 steps exceeds this (default 1e6; 0: off).",
)
LOSS_GROWTH_LIMIT = flags.DEFINE_float(
    "loss_growth_limit",
    None,
    "Stop (error, exit 2) when the mean loss of the last 10 steps exceeds this many times max(1, the first "
    "step's loss) (default 100; 0: off).",
)
# Entry points whose networks have no bfloat16 path: --precision there is a mistake, not a no-op.
FLOAT32_STAGES = ("stage3", "evaluate")


def precision_flag() -> str:
    """`--precision`, checked: a value other than auto, float32 or bfloat16 is a usage error."""
    from fashionsearchnet_v2 import precision

    if PRECISION.value not in precision.PRECISIONS:
        fail(f"--precision must be one of {', '.join(precision.PRECISIONS)}, got {PRECISION.value!r}")
    return PRECISION.value


def seed_list() -> list[int]:
    """`--seeds` as ints (default: [--seed]); a malformed list or a negative seed is a usage error."""
    if not SEEDS.value:
        return [SEED.value]
    try:
        seeds = [int(s) for s in SEEDS.value]
    except ValueError:
        fail(f"--seeds must be comma-separated integers, got {','.join(SEEDS.value)!r}")
    if len(set(seeds)) != len(seeds):
        fail(f"--seeds lists a seed twice: {seeds}")
    if min(seeds) < 0:
        fail(f"--seeds must be >= 0 (each seeds Python, NumPy and TensorFlow), got {seeds}")
    return seeds


def check_names(flag: str, names, valid) -> None:
    """A list flag's names (`--variants`, `--candidates`) against what the entry point knows: an unknown
    name is a usage error, before any data is read or anything trains."""
    unknown = [v for v in names if v not in valid]
    if unknown:
        fail(f"unknown {flag} {unknown}; valid: {', '.join(valid)}")


# Entry points that may run on several workers: the stages trained with tf.distribute. Stage 3 trains a few
# matrices on one device and the evaluation writes files: both run in one process.
MULTI_WORKER_STAGES = ("stage1", "stage2")


class UsageError(SystemExit):
    pass


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise UsageError(2)


def user_error(e: BaseException) -> str | None:
    """The one-line message for a failure the user can meet, or None for a bug (see `errors`)."""
    from fashionsearchnet_v2 import errors

    return errors.user_message(e)


def refuse_stray_arguments(argv) -> None:
    """Words beside the flags (absl's `argv[1:]`) are a usage error naming them (errors.stray_arguments)."""
    if len(argv) > 1:
        from fashionsearchnet_v2 import errors

        fail(errors.stray_arguments(argv[1:], sys.argv))


def guarded(main, extra_args: bool = False):
    """`main` with the failures of `user_error` turned into one `error:` line and exit status 2. Words left
    after the flags are refused unless `extra_args` (an entry point that reads what follows `--`)."""

    @functools.wraps(main)
    def wrapper(argv):
        if not extra_args:
            refuse_stray_arguments(argv)
        try:
            use_seed_directory()
            return main(argv)
        except UsageError:
            raise
        except Exception as e:  # re-raised below unless it is a failure the user can meet
            message = user_error(e)
            if message is None:
                raise
            fail(message)

    return wrapper


def run(main, extra_args: bool = False) -> None:
    """`absl.app.run(main)` for an entry point, with its failures reported as `guarded` says."""
    app.run(guarded(main, extra_args))


def seed_workdir(workdir: str, seed: int) -> str:
    """One work directory per seed: `<workdir>/seed<N>` (stages, checkpoints, evaluations of that seed)."""
    return os.path.join(workdir, f"seed{seed}")


def seed_of_directory(directory: str) -> int | None:
    """N when `directory` is a seed's work directory (named seed<N>, holding a trained stage), else None."""
    m = re.fullmatch(r"seed(\d+)", os.path.basename(os.path.normpath(directory)))
    if m is None or not os.path.isdir(directory):
        return None
    stages = [d for d in os.listdir(directory) if os.path.isfile(os.path.join(directory, d, "config.json"))]
    return int(m.group(1)) if stages or os.path.isdir(os.path.join(directory, "stage1")) else None


def use_seed_directory() -> None:
    """`--workdir=W/seed<N>` (where the stages are) means `--workdir=W --seed=N`, so it never becomes
    W/seed<N>/seed<N>; a conflicting --seed or --seeds is refused with the flags that were meant."""
    if "workdir" not in flags.FLAGS or not WORKDIR.value:
        return
    seed = seed_of_directory(WORKDIR.value)
    if seed is None:
        return
    given, parent = WORKDIR.value, os.path.dirname(os.path.normpath(WORKDIR.value)) or "."
    if flags.FLAGS["seeds"].present and [s.strip() for s in SEEDS.value] != [str(seed)]:
        fail(f"--workdir={given} is seed {seed}'s directory; for --seeds={','.join(SEEDS.value)} pass the "
             f"directory above it: --workdir={parent} --seeds={','.join(SEEDS.value)}")  # fmt: skip
    if flags.FLAGS["seed"].present and SEED.value != seed:
        fail(f"--workdir={given} is seed {seed}'s directory, not seed {SEED.value}'s: pass --workdir={parent} "
             f"--seed={SEED.value}")  # fmt: skip
    flags.FLAGS.workdir, flags.FLAGS.seed = parent, seed
    print(f"--workdir={given} is seed {seed}'s directory: --workdir={parent} --seed={seed}", file=sys.stderr)


# Entry points that may generate the embedded default when its directory is missing or empty: those that
# train stage 1 from nothing. Every other command reads a dataset that is there, and says where it is not.
GENERATES_DATASET = ("main", "stage1", "ablation")


class Dirs(NamedTuple):
    """Where a command's dataset and work directory are, and how the data directory was chosen."""

    dataset: str
    data_dir: str
    workdir: str  # the dataset's work directory; a seed's runs go to `seed_workdir`
    given: bool  # --data_dir was passed
    recorded_by: str | None  # the stage config.json that gave data_dir, when neither flag did


def resolve_dirs(seed: int | None = None) -> Dirs:
    """The dataset, its directory and work directory of a command (`Dirs`).

    `--data_dir` alone names any converted dataset (your own catalogue included): its name is read from
    dataset.json, and the work directory defaults to work/<that name>. Without `--data_dir` and
    `--dataset`, a work directory whose stages were trained already gives the dataset they were trained
    on (recorded in their config.json, `remembered_dataset`), so no later command has to repeat it.
    """
    dataset, data_dir = DATASET.value, DATA_DIR.value
    explicit = bool(data_dir) or flags.FLAGS["dataset"].present
    if data_dir and not flags.FLAGS["dataset"].present:
        dataset = dataset_name(data_dir) or dataset
    # A smoke check never writes where a real run reads: its own work directory and, for the generated
    # dataset, its own data directory. (A real dataset is only read, so --quick uses it where it is.)
    workdir = WORKDIR.value or os.path.join("work", dataset + ("-quick" if QUICK.value else ""))
    default = default_data_dir(dataset)
    recorded_by = None
    if not explicit:
        remembered = remembered_dataset(seed_workdir(workdir, SEED.value if seed is None else seed))
        if remembered is not None:
            dataset, data_dir, recorded_by = remembered
            if os.path.abspath(data_dir) != os.path.abspath(default):
                print(
                    f"dataset {dataset}: {data_dir}, as recorded in {recorded_by}",
                    file=sys.stderr,
                    flush=True,
                )
    data_dir = data_dir or default
    if (
        dataset not in DATASETS
        and recorded_by is None
        and not os.path.isfile(os.path.join(data_dir, schema.DATASET_JSON))
    ):
        fail(
            f"unknown --dataset={dataset!r} and no {os.path.join(data_dir, schema.DATASET_JSON)}; registered "
            f"datasets: {', '.join(DATASETS)}; a catalogue of your own: convert it with "
            "`python -m data_prep.catalog ... --output_dir=DIR` and pass --data_dir=DIR"
        )
    return Dirs(dataset, data_dir, workdir, given=bool(DATA_DIR.value), recorded_by=recorded_by)


def default_data_dir(dataset: str) -> str:
    """data/<dataset>; for a --quick smoke check of the embedded default, data/synthetic-quick."""
    return os.path.join("data", dataset + ("-quick" if QUICK.value and dataset == "synthetic" else ""))


def remembered_dataset(seed_dir: str) -> tuple[str, str, str] | None:
    """(dataset, data directory, the config.json that records them) of the stages trained in `seed_dir`
    (stage 1's first, else any stage's), or None when none is trained or none recorded its directory."""
    candidates = [os.path.join(seed_dir, "stage1")]
    if os.path.isdir(seed_dir):
        candidates += [os.path.join(seed_dir, d) for d in sorted(os.listdir(seed_dir)) if d != "stage1"]
    for directory in candidates:
        try:
            cfg = configs.read_config(directory)
        except (OSError, ValueError, TypeError):
            continue  # not a stage's config (or one this code cannot read): look further
        if cfg is not None and cfg.data_dir:
            return cfg.dataset, cfg.data_dir, os.path.join(directory, "config.json")
    return None


def export_data_dir(export_metadata: dict) -> str:
    """The dataset directory for a command given an export (indexing a split): `--data_dir` or
    `--dataset` when given, else the one the export was made from (its export.json), else the default."""
    if DATA_DIR.value or flags.FLAGS["dataset"].present or not export_metadata.get("data_dir"):
        return resolve_dirs().data_dir
    return export_metadata["data_dir"]


def dataset_name(data_dir: str) -> str | None:
    """The name in `<data_dir>/dataset.json`, or None when there is none to read."""
    try:
        return schema.load_dataset_info(data_dir).name
    except schema.DatasetError:
        return None


def load_dataset(dirs: Dirs, quick: bool, stage: str, seed: int) -> schema.DatasetInfo:
    """The converted dataset, checked (format version, records against dataset.json). Only the entry
    points of `GENERATES_DATASET` generate the embedded default (no download), and only into the default
    directory or a --data_dir given, when it is missing or empty. A real run refuses a --quick run's
    dataset."""
    dataset, data_dir = dirs.dataset, dirs.data_dir
    if not os.path.isfile(os.path.join(data_dir, schema.DATASET_JSON)):
        at_default = os.path.abspath(data_dir) == os.path.abspath(default_data_dir(dataset))
        empty = not os.path.exists(data_dir) or (os.path.isdir(data_dir) and not os.listdir(data_dir))
        if dataset == "synthetic" and stage in GENERATES_DATASET and (dirs.given or at_default) and empty:
            from fashionsearchnet_v2.data import synthetic

            kwargs = dict(configs.QUICK_DATASET, quick=True) if quick else {}
            print(f"generating the embedded default dataset into {data_dir} ...", flush=True)
            return synthetic.write_synthetic(data_dir, **kwargs)
        fail(missing_dataset_message(dirs, quick, os.path.join(seed_workdir(dirs.workdir, seed), "stage1")))
    try:
        info = schema.load_dataset_info(data_dir)
    except schema.DatasetError as e:
        fail(str(e))
    if info.quick and not quick:
        fail(
            f"{data_dir} was written by a --quick smoke check ({sum(info.splits.values())} images); a real "
            "run does not train or evaluate on it. Delete it (the embedded dataset is generated again) or "
            "give --data_dir."
        )
    # The records are read with TensorFlow: after the refusals above, which need none and so come at once.
    from fashionsearchnet_v2.data import integrity

    try:
        integrity.check_records(info)
    except schema.DatasetError as e:
        fail(str(e))
    return info


def missing_dataset_message(dirs: Dirs, quick: bool, stage1_dir: str | None = None) -> str:
    """One line: which dataset directory is missing, who expects it there, and how to make or point to it
    (`stage1_dir`: the seed's stage 1, named when it is missing too)."""
    dataset, data_dir = dirs.dataset, dirs.data_dir
    if os.path.isfile(data_dir):
        what = "is a file, not a converted dataset's directory"
    elif not os.path.isdir(data_dir):
        what = "does not exist"
    else:
        what = f"holds {sorted(os.listdir(data_dir))[:5] or 'nothing'} but no {schema.DATASET_JSON}"
    if dirs.given and (os.path.isfile(data_dir) or (os.path.isdir(data_dir) and os.listdir(data_dir))):
        # The user's own path, there but not converted (a CSV, raw downloads): converting writes elsewhere.
        raw = (
            f"`python -m data_prep.catalog --csv={data_dir} --image_column=COL --attributes=A,B "
            "--output_dir=data/NAME`"
            if data_dir.lower().endswith((".csv", ".tsv", ".txt"))
            else f"`python -m data_prep.<name> --input_dir={data_dir} --output_dir=data/NAME` (or "
            "`data_prep.catalog --csv=...` for a catalogue of your own)"
        )
        return (
            f"{data_dir} (--data_dir) {what}: --data_dir takes a converted dataset ({schema.DATASET_JSON} "
            f"and TFRecord shards); convert it with {raw}, then pass --data_dir=data/NAME"
        )
    if dataset == "synthetic" and quick:
        how = (
            f"`python -m experiments.stage1 --quick --data_dir={data_dir}` generates it again, byte for byte"
        )
    elif dataset == "synthetic":
        how = f"`python -m data_prep.synthetic --output_dir={data_dir}` generates it (the same bytes every time)"
    else:
        how = DATASETS.get(dataset, "python -m data_prep.catalog ... --output_dir={data_dir}")
        how = f"`{how.format(data_dir=data_dir)}` converts it"
    if dirs.recorded_by:
        return (
            f"{data_dir} {what}: {dirs.recorded_by} records it as the dataset its stage was trained on. "
            f"Restore it there, pass --data_dir=DIR where a copy of it is, or {how}"
        )
    flag = "--data_dir" if dirs.given else f"the default --data_dir of --dataset={dataset}"
    if dataset == "synthetic" and stage1_dir and not os.path.isdir(stage1_dir):
        # Nothing trained yet: the stage order is the mistake, and stage 1 makes the data.
        quick_flag = " --quick" if quick else ""
        how = f"{stage1_dir} does not exist either: run stage 1 first (`python -m experiments.stage1{quick_flag}`, which generates it), or {how}"
    return f"{data_dir} ({flag}) {what}: {how}, or pass --data_dir=DIR of a converted dataset"


# Flag -> the config fields it sets, (section, field) each; a flag left unset keeps the default. Stage 3
# and AMNet keep their own epochs and learning rate (--stage3_epochs, --stage3_learning_rate).
FLAG_FIELDS = (
    (IMAGE_SIZE, (("model", "image_size"),)),
    (BOX_BACKEND, (("model", "box_backend"),)),
    (BATCH_SIZE, (("train", "batch_size"), ("stage3", "batch_size"))),
    (EPOCHS, (("train", "epochs"),)),
    (LEARNING_RATE, (("train", "learning_rate"),)),
    (MAX_STEPS, (("train", "max_steps"), ("stage3", "max_steps"))),
    (OPTIMIZER, (("train", "optimizer"),)),
    (MOMENTUM, (("train", "momentum"),)),
    (WARMUP_STEPS, (("train", "warmup_steps"),)),
    (FUSED_UPDATE, (("train", "fused_update"),)),
    (CACHE_DECODED_MIB, (("train", "cache_decoded_mib"),)),
    (EXCLUDE_VALIDATION, (("train", "exclude_validation"),)),
    (CLASSIFIER_INIT, (("train", "classifier_init"),)),
    (LAMBDA_C, (("train", "lambda_c"),)),
    (LAMBDA_T, (("train", "lambda_t"),)),
    (LAMBDA_TC, (("train", "lambda_tc"),)),
    (LOSS_UPPER_BOUND, (("train", "loss_upper_bound"),)),
    (LOSS_GROWTH_LIMIT, (("train", "loss_growth_limit"),)),
    (STAGE3_EPOCHS, (("stage3", "epochs"),)),
    (STAGE3_LEARNING_RATE, (("stage3", "learning_rate"),)),
    (STAGE3_NEGATIVES, (("stage3", "negatives"),)),
    (W_R_INIT, (("stage3", "w_r_init"),)),
    (NORMALIZE_GLOBAL, (("stage3", "normalize"),)),
)
# Flags whose negative values mean nothing, with what 0 means.
NON_NEGATIVE = {
    WARMUP_STEPS.name: "0: no warm-up, the paper",
    CACHE_DECODED_MIB.name: "0 switches the cache off",
    LOSS_UPPER_BOUND.name: "0 switches the check off",
    LOSS_GROWTH_LIMIT.name: "0 switches the check off",
    MAX_STEPS.name: "0: the epochs decide",
    LEARNING_RATE.name: "0 leaves the weights where they start",
    STAGE3_LEARNING_RATE.name: "0 leaves stage 3 where it starts",
    LAMBDA_C.name: "0 switches L_C off",
    LAMBDA_T.name: "0 switches L_T off",
    LAMBDA_TC.name: "0 switches L_TC off",
}
# Counts with the smallest value that means something, and what they count.
AT_LEAST = {
    IMAGE_SIZE.name: (
        configs.MIN_IMAGE_SIZE,
        "a smaller input leaves conv5 no grid at all; the paper's 227 gives 13 x 13",
    ),
    BATCH_SIZE.name: (1, "images per step"),
}
# Flags that must be above 0, with what they are.
POSITIVE = {EPOCHS.name: "epochs of stages 1 and 2", STAGE3_EPOCHS.name: "epochs of stage 3"}


def build_config(
    stage: str, variant: str, seed: int | None = None
) -> tuple[configs.ExperimentConfig, schema.DatasetInfo]:
    """The resolved config of one seed's run (`--seed` unless `seed` is given) and its dataset."""
    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-save INFO lines drown the progress
    if seed is None and SEEDS.value:
        fail(f"--seeds is for experiments.main and experiments.ablation (a table over seeds); {stage} runs "
             f"one seed: pass --seed=N (one command per seed)")  # fmt: skip
    seed = SEED.value if seed is None else seed
    if seed < 0:
        fail(f"--seed must be >= 0 (it seeds Python, NumPy and TensorFlow), got {seed}")
    if INIT_FROM.value is not None:
        if stage not in GENERATES_DATASET:
            fail(
                f"--init_from is where stage 1 starts: pass it to experiments.stage1, main or ablation, not {stage}"
            )
        if ALEXNET_WEIGHTS.value:
            fail("--alexnet_weights and --init_from both name stage 1's start: pass one")
    if STRATEGY.value == "multi_worker":
        if stage not in MULTI_WORKER_STAGES:
            fail(
                f"--strategy=multi_worker trains stages 1 and 2 (experiments.stage1, experiments.stage2); "
                f"run {stage} in one process afterwards (README: Multi-worker training)"
            )
        from fashionsearchnet_v2.training import trainer

        trainer.make_strategy("multi_worker")  # before any other TensorFlow op, as collectives require
    dirs = resolve_dirs(seed)
    dataset, data_dir, workdir = dirs.dataset, dirs.data_dir, seed_workdir(dirs.workdir, seed)
    model, train, stage3 = configs.dataset_defaults(dataset)
    if SCHEDULE.value == "paper":
        model, train, stage3 = configs.ModelConfig(), configs.TrainConfig(), configs.Stage3Config()
    cfg = configs.ExperimentConfig(
        dataset=dataset, data_dir=data_dir, workdir=workdir, stage=stage, variant=variant,
        model=model, train=train, stage3=stage3, alexnet_weights=ALEXNET_WEIGHTS.value,
        init_from=INIT_FROM.value, strategy=STRATEGY.value,
    )  # fmt: skip
    if QUICK.value:
        cfg = configs.quick(cfg)
    if PAPER_STAGE3.value:
        cfg.stage3 = configs.paper_stage3(cfg.stage3)
    fields: dict[str, dict] = {"model": {}, "train": {}, "stage3": {}}
    for flag, targets in FLAG_FIELDS:
        if flag.value is None:
            continue  # unset: the dataset's (or the schedule's) default
        if isinstance(flag.value, float) and not math.isfinite(flag.value):
            fail(f"--{flag.name} must be a finite number, got {flag.value}")
        if flag.name in NON_NEGATIVE and flag.value < 0:
            fail(f"--{flag.name} must be >= 0 ({NON_NEGATIVE[flag.name]}), got {flag.value:g}")
        if flag.name in AT_LEAST and flag.value < AT_LEAST[flag.name][0]:
            least, what = AT_LEAST[flag.name]
            fail(f"--{flag.name} must be >= {least} ({what}), got {flag.value:g}")
        if flag.name in POSITIVE and flag.value <= 0:
            fail(f"--{flag.name} must be > 0 ({POSITIVE[flag.name]}), got {flag.value:g}")
        for section, field in targets:
            fields[section][field] = flag.value
    m, t, s3 = fields["model"], fields["train"], fields["stage3"]
    if WARMUP_STEPS.value is None:  # decision 64: the warm-up follows the optimiser on real data
        t["warmup_steps"] = configs.default_warmup_steps(dataset, t.get("optimizer", cfg.train.optimizer))
    if BATCH_NORM.value is not None:
        m["batch_norm"], m["lrn"] = BATCH_NORM.value, not BATCH_NORM.value
    t["seed"] = s3["seed"] = seed
    t["deterministic_ops"] = DETERMINISTIC_OPS.value
    if flags.FLAGS["precision"].present and stage in FLOAT32_STAGES:
        fail(f"--precision applies to stages 1 and 2, AMNet and the export; {stage} always runs in float32")
    t["precision"] = precision_flag()
    cfg.model = dataclasses.replace(cfg.model, **m)
    cfg.train = dataclasses.replace(cfg.train, **t)
    if MOMENTUM.value is not None and cfg.train.optimizer != "sgd":
        fail(f"--momentum applies to SGD only; stages 1 and 2 here use --optimizer={cfg.train.optimizer} "
             "(pass --optimizer=sgd with it)")  # fmt: skip
    cfg.stage3 = dataclasses.replace(cfg.stage3, **s3)
    if OLD_AMNET.value:
        cfg.amnet = configs.old_amnet(cfg.amnet)
    # AMNet shares stage 3's seed, batch size and step limit (--seed, --batch_size, --max_steps).
    am = {k: v for k, v in s3.items() if k in ("seed", "batch_size", "max_steps")}
    cfg.amnet = dataclasses.replace(cfg.amnet, **am)
    info = load_dataset(dirs, cfg.quick, stage, seed)
    return cfg, info


def build_configs(stage: str, variant: str) -> tuple[list[configs.ExperimentConfig], schema.DatasetInfo]:
    """One resolved config per seed of `--seeds` (default `--seed`), and the dataset."""
    cfgs = []
    for seed in seed_list():
        cfg, info = build_config(stage, variant, seed)
        cfgs.append(cfg)
    return cfgs, info
