"""The command lines as a newcomer meets them (issue 10, items 1, 6 and 7): README's stage sequence works
as written with --quick, which never touches the default directories; a real run refuses what a quick run
wrote; every failure (wrong stage order, divergence, full disk, a busy or quick directory) is one `error:`
line and exit status 2, no traceback."""

import errno
import json
import os
import shutil
import sys

import commands
import numpy as np
import tensorflow as tf

from fashionsearchnet_v2 import errors
from fashionsearchnet_v2.data import schema, synthetic
from fashionsearchnet_v2.locks import LockError
from fashionsearchnet_v2.training.guard import DivergenceError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(args, cwd, code=None):
    """Runs `python -m experiments.<args>` (or `python -c CODE args`) in `cwd` with this checkout first."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", *args]
    return commands.run(cmd, cwd=cwd, env=env, timeout=300)


def _user_lines(stderr: str) -> list[str]:
    """stderr without the lines TensorFlow's C++ runtime logs before absl takes over."""
    noise = ("WARNING: All log messages before absl", "I0000", "W0000", "E0000")
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(noise)]


def assert_one_error_line(result, *fragments):
    lines = _user_lines(result.stderr)
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-10:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_readme_stage_sequence_with_quick(tmp_path):
    """README's sequence, each with its defaults plus --quick, in a fresh directory; stage 2 first is
    refused in one line; nothing lands where a real run reads; a real run refuses the quick dataset."""
    wrong = _cli(["experiments.stage2", "--quick"], tmp_path)
    assert_one_error_line(wrong, "work/synthetic-quick/seed0/stage1", "run stage 1 first")
    for stage in ("stage1", "stage2", "stage3", "evaluate"):
        result = _cli([f"experiments.{stage}", "--quick"], tmp_path)
        assert result.returncode == 0, f"{stage}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    work = tmp_path / "work" / "synthetic-quick" / "seed0"
    assert (work / "stage3_rank_l_full" / "ckpt").is_dir()  # stage 3's default is Full, evaluate's too
    results = json.loads((work / "eval" / "full" / "results.json").read_text())
    assert results["variant"] == "full" and results["searches"]["total"] > 0
    # An export in bfloat16 when asked (float32 by default): said, and recorded in export.json.
    bf16 = _cli(["experiments.export", "--quick", "--export_dir=e/1", "--precision=bfloat16"], tmp_path)
    assert bf16.returncode == 0 and "precision bfloat16 (as asked" in bf16.stdout, bf16.stderr[-3000:]
    assert json.loads((tmp_path / "e" / "1" / "export.json").read_text())["precision"] == "bfloat16"
    assert sorted(os.listdir(tmp_path / "data")) == ["synthetic-quick"]
    assert sorted(os.listdir(tmp_path / "work")) == ["synthetic-quick"]
    assert schema.load_dataset_info(str(tmp_path / "data" / "synthetic-quick")).quick
    real = _cli(["experiments.evaluate", "--data_dir=data/synthetic-quick"], tmp_path)
    assert_one_error_line(real, "data/synthetic-quick was written by a --quick smoke check")


def test_divergence_is_one_error_line_and_keeps_only_finite_checkpoints(data_dir, tmp_path):
    """The issue's probe: stage 1 with --learning_rate=1e4 (SGD with momentum, as it was run) used to exit 0
    with inf BatchNorm variances."""
    result = _cli(["experiments.stage1", "--quick", f"--data_dir={data_dir}", "--workdir=w", "--learning_rate=1e4",
                   "--optimizer=sgd", "--momentum=0.9", "--max_steps=8"], tmp_path)  # fmt: skip
    line = assert_one_error_line(result, "[stage1] diverged at step", "lower the learning rate (it is 10000)")
    assert "done:" not in result.stdout
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "w" / "seed0" / "stage1" / "ckpt"))
    if ckpt is not None:  # the steps before the divergence were saved, and they are finite
        assert os.path.relpath(ckpt, tmp_path) in line
        reader = tf.train.load_checkpoint(ckpt)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            assert not hasattr(value, "dtype") or value.dtype.kind != "f" or (abs(value) < float("inf")).all()
    else:  # diverged before the first save (step 2 here): nothing of it is kept, and the line says so
        assert "no checkpoint was written" in line


def test_a_finite_explosion_is_one_error_line(data_dir, tmp_path):
    """The issue-16 probe: with the embedded default's Adam at lr 1e4 the loss explodes and stays finite;
    it used to end at chance accuracy with "done" and exit 0."""
    result = _cli(["experiments.stage1", "--quick", f"--data_dir={data_dir}", "--workdir=w", "--max_steps=20",
                   "--learning_rate=1e4"], tmp_path)  # fmt: skip
    assert_one_error_line(
        result,
        "[stage1] diverged at step",
        "the loss exploded while staying finite",
        "lower the learning rate",
    )
    assert "done:" not in result.stdout and "precision " in result.stdout


FULL_DISK = (
    "import errno, sys\n"
    "from fashionsearchnet_v2 import configs\n"
    "def full(self, directory, name='config.json'):\n"
    "    raise OSError(errno.ENOSPC, 'No space left on device', directory + '/' + name)\n"
    "configs.ExperimentConfig.write = full\n"
    "from experiments import common, stage1\n"
    "sys.argv = ['stage1'] + sys.argv[1:]\n"
    "common.run(stage1.main)\n"
)


def test_full_disk_and_flag_misuse_are_one_error_line(data_dir, tmp_path):
    full = _cli(["--quick", f"--data_dir={data_dir}", "--workdir=w"], tmp_path, code=FULL_DISK)
    assert_one_error_line(full, "w/seed0/stage1/config.json: No space left on device")
    misuse = _cli(
        ["experiments.stage3", "--quick", f"--data_dir={data_dir}", "--strategy=multi_worker"], tmp_path
    )
    assert_one_error_line(misuse, "--strategy=multi_worker trains stages 1 and 2")
    # momentum is SGD's; with Adam (the embedded default's optimiser) it would be silently ignored
    adam = _cli(["experiments.stage1", "--quick", f"--data_dir={data_dir}", "--momentum=0.9"], tmp_path)
    assert_one_error_line(adam, "--momentum applies to SGD only", "--optimizer=adam")
    fp16 = _cli(["experiments.stage1", "--quick", f"--data_dir={data_dir}", "--precision=fp16"], tmp_path)
    assert_one_error_line(fp16, "--precision must be one of auto, float32, bfloat16, got 'fp16'")
    stage3 = _cli(
        ["experiments.stage3", "--quick", f"--data_dir={data_dir}", "--precision=bfloat16"], tmp_path
    )
    assert_one_error_line(stage3, "--precision applies to stages 1 and 2, AMNet and the export")


def test_user_errors_are_told_apart_from_bugs():
    """What `experiments.common.run` prints as one line (the CLI tests above see it end to end); anything
    else is a bug and keeps its traceback. (experiments.common is not imported here: its flags would clash
    with data_prep's in one test process.)"""
    disk = OSError(errno.ENOSPC, "No space left on device", "/data/x/train-00000.tmp")
    assert errors.user_message(disk) == "/data/x/train-00000.tmp: No space left on device"
    tf_disk = tf.errors.UnknownError(
        None, None, "Failed to write /w/ckpt/ckpt-2.data: No space left on device"
    )
    assert errors.user_message(tf_disk) == "Failed to write /w/ckpt/ckpt-2.data: No space left on device"
    for known in (DivergenceError("[stage1] diverged", stage="stage1", step=3, term="L_C"), LockError("busy"),
                  schema.DatasetError("bad shard")):  # fmt: skip
        assert errors.user_message(known) == str(known)
    assert errors.user_message(ValueError("a bug")) is None
    assert errors.user_message(KeyError("a bug")) is None
    assert errors.user_message(tf.errors.InvalidArgumentError(None, None, "shapes differ")) is None
    refused = tf.errors.InvalidArgumentError(
        None, None, "Graph execution error:\n\nDetected at node X\n<stack traces unavailable>\n"
        "embed: output maps is not finite (the model diverged?) : Tensor had NaN values\n\t [[{{node X}}]]"
    )  # fmt: skip
    assert (
        errors.user_message(refused)
        == "embed: output maps is not finite (the model diverged?) : Tensor had NaN values"
    )


def test_a_stage_directory_remembers_its_dataset_directory(data_dir, tmp_path):
    """Issue 18: after stage 1 with --data_dir=X --workdir=W, stage 2, export, evaluate and index find X
    without being told (the stages' config.json records it; the export's export.json too), instead of
    comparing the stages with the default data/synthetic; an explicit --data_dir still wins and is checked."""
    first = _cli(["experiments.stage1", "--quick", f"--data_dir={data_dir}", "--workdir=w"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    recorded = json.loads((tmp_path / "w" / "seed0" / "stage1" / "config.json").read_text())
    assert recorded["data_dir"] == os.path.abspath(data_dir)
    for argv in (["experiments.stage2", "--quick", "--workdir=w"],
                 ["experiments.export", "--workdir=w", "--variant=rank_l", "--export_dir=e/1"],
                 ["experiments.evaluate", "--workdir=w", "--variant=rank_l"],
                 ["experiments.index", "--export_dir=e/1", "--split=gallery", "--index=g.npz"]):  # fmt: skip
        result = _cli(argv, tmp_path)
        assert result.returncode == 0, f"{argv}:\n{result.stderr[-3000:]}"
        if argv[0] != "experiments.index":
            assert (
                f"dataset synthetic: {os.path.abspath(data_dir)}, as recorded in w/seed0/stage1"
                in result.stderr
            )
    assert not (tmp_path / "data").exists()  # the default dataset was neither generated nor read
    assert (
        json.loads((tmp_path / "w" / "seed0" / "eval" / "rank_l" / "results.json").read_text())["variant"]
        == "rank_l"
    )
    with np.load(tmp_path / "g.npz") as f:
        source = json.loads(str(f["metadata"]))["source"]
    assert source["data_dir"] == os.path.abspath(data_dir) and source["split"] == "gallery"
    # An explicit --data_dir wins, and is checked against the stages as before.
    other = synthetic.write_synthetic(str(tmp_path / "other"), num_images=60, image_size=64, num_query=6,
                                      num_gallery=18, seed=1, progress=False)  # fmt: skip
    refused = _cli(["experiments.export", "--workdir=w", "--variant=rank_l", "--export_dir=e/2",
                    f"--data_dir={other.data_dir}"], tmp_path)  # fmt: skip
    assert_one_error_line(refused, "w/seed0/stage2_rank_l was trained on another version of the dataset")


WARMUP_DRIVER = """
import json, sys
from absl import flags
from experiments import common
found = []
for argv in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["stage1", *argv])
    found.append(common.build_config("stage1", "rank_l")[0].train.warmup_steps)
print(json.dumps(found))
"""


def test_the_warmup_follows_the_optimiser_on_real_data(data_dir, tmp_path):
    """Decision 64 (issue 25, CelebA's validation split): without --warmup_steps, SGD on real data warms up
    over 100 steps and Adam does not; the embedded default never does; the flag overrides both."""
    shop = tmp_path / "shop"
    shutil.copytree(data_dir, shop)
    meta = json.loads((shop / "dataset.json").read_text())
    (shop / "dataset.json").write_text(json.dumps({**meta, "name": "shop", "quick": False}))
    cases = [[f"--data_dir={shop}"], [f"--data_dir={shop}", "--optimizer=adam"],
             [f"--data_dir={shop}", "--optimizer=adam", "--warmup_steps=7"], [f"--data_dir={shop}", "--schedule=paper"],
             [f"--data_dir={data_dir}"], [f"--data_dir={data_dir}", "--optimizer=sgd"]]  # fmt: skip
    result = _cli([json.dumps(cases)], tmp_path, code=WARMUP_DRIVER)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [100, 0, 7, 100, 0, 0]


def test_table_1_refuses_an_unknown_variant_in_one_line_before_anything_else(tmp_path):
    """`experiments.ablation --variants` names the flag, the unknown names and the valid ones, before it
    looks for data (none here) or trains."""
    result = _cli(["experiments.ablation", "--quick", "--variants=full,fulll"], tmp_path)
    assert_one_error_line(result, "--variants ['fulll']", "valid:", "rank_lg")
    assert not (tmp_path / "work").exists() and not (tmp_path / "data").exists()


def test_init_from_is_stage_1s_start_and_excludes_the_imagenet_start(tmp_path):
    """`--init_from` (decision 69) goes to the entry points that train stage 1, and not with
    `--alexnet_weights`: each misuse is one error line before anything is read."""
    result = _cli(["experiments.stage2", "--quick", "--init_from=work/x/seed0/stage1"], tmp_path)
    assert_one_error_line(result, "--init_from is where stage 1 starts", "not stage2")
    both = ["experiments.stage1", "--quick", "--init_from=a", "--alexnet_weights=b.npy"]
    assert_one_error_line(_cli(both, tmp_path), "--alexnet_weights and --init_from both")
    assert not (tmp_path / "work").exists() and not (tmp_path / "data").exists()


def test_a_size_count_or_rate_that_means_nothing_is_one_error_line(tmp_path):
    """Numbers the network or the schedule cannot take are refused naming the flag and the bound,
    before any data is read or generated (a negative size used to end in Keras's traceback)."""
    cases = {
        "--image_size=-5": "--image_size must be >= 35",
        "--image_size=34": "--image_size must be >= 35",
        "--batch_size=0": "--batch_size must be >= 1",
        "--epochs=0": "--epochs must be > 0",
        "--max_steps=-1": "--max_steps must be >= 0 (0: the epochs decide)",
        "--learning_rate=-0.01": "--learning_rate must be >= 0",
        "--epochs=nan": "--epochs must be a finite number, got nan",
        "--learning_rate=inf": "--learning_rate must be a finite number, got inf",
        "--seed=-1": "--seed must be >= 0",
    }
    for flag, message in cases.items():
        assert_one_error_line(_cli(["experiments.stage1", "--quick", flag], tmp_path), message)
    seeds = _cli(["experiments.main", "--quick", "--seeds=0,-2"], tmp_path)
    assert_one_error_line(
        seeds, "--seeds must be >= 0 (each seeds Python, NumPy and TensorFlow), got [0, -2]"
    )
    # --seeds makes a table over seeds; a single stage used to train --seed's alone and say nothing.
    one = _cli(["experiments.stage1", "--quick", "--seeds=0,1"], tmp_path)
    assert_one_error_line(one, "--seeds is for experiments.main and experiments.ablation", "pass --seed=N")
    assert not (tmp_path / "work").exists() and not (tmp_path / "data").exists()


def test_a_word_beside_the_flags_is_one_error_line(tmp_path):
    """absl reads `--update_memory false` as --update_memory (true) plus a stray word, which every entry
    point used to drop: stage 3 would train Full where Rank-LG was asked. Now the stray word is refused,
    naming the bool flag's spellings, in the experiments, the converters and the service alike."""
    bool_value = _cli(["experiments.stage3", "--quick", "--update_memory", "false"], tmp_path)
    assert_one_error_line(bool_value, "unexpected argument 'false' after --update_memory",
                          "--update_memory=false (or --update_memory / --noupdate_memory)")  # fmt: skip
    stray = _cli(["experiments.evaluate", "--quick", "data/shop"], tmp_path)
    assert_one_error_line(stray, "unexpected argument(s) 'data/shop'", "--name=value")
    converter = _cli(["data_prep.synthetic", "--output_dir=d", "--overwrite", "no"], tmp_path)
    assert_one_error_line(converter, "unexpected argument 'no' after --overwrite")
    serve = _cli(["experiments.serve", "--export_dir=e", "--index=i.npz", "extra"], tmp_path)
    assert_one_error_line(serve, "unexpected argument(s) 'extra'")
    assert sorted(os.listdir(tmp_path)) == []


def test_main_refuses_an_unknown_variant_before_anything_else(tmp_path):
    """`experiments.main --variants=ful` used to end in a KeyError after the data was generated (and, with
    `full,ful`, after Full had trained)."""
    result = _cli(["experiments.main", "--quick", "--variants=full,ful"], tmp_path)
    assert_one_error_line(result, "unknown --variants ['ful']; valid:", "rank_lg_untrained")
    for command in ("experiments.stage3_select", "experiments.amnet_select"):
        result = _cli([command, "--quick", "--candidates=nope"], tmp_path)
        assert_one_error_line(result, "unknown --candidates ['nope']; valid:")
    assert sorted(os.listdir(tmp_path)) == []


def test_missing_imagenet_weights_are_one_error_line(data_dir, tmp_path):
    """A `--alexnet_weights` file that is not there ended in WeightsError's traceback (exit 1)."""
    result = _cli(["experiments.stage1", "--quick", f"--data_dir={data_dir}", "--workdir=w",
                   "--alexnet_weights=nope/bvlc_alexnet.npy"], tmp_path)  # fmt: skip
    assert_one_error_line(result, "--alexnet_weights: nope/bvlc_alexnet.npy does not exist")


def test_a_file_or_a_raw_folder_as_data_dir_says_to_convert_it_elsewhere(tmp_path):
    """--data_dir pointing at a CSV or at raw downloads used to be called missing, with a suggestion to
    generate the embedded dataset into that very path."""
    (tmp_path / "products.csv").write_text("sku,image\n")
    csv_file = _cli(["experiments.evaluate", "--data_dir=products.csv"], tmp_path)
    assert_one_error_line(csv_file, "products.csv (--data_dir) is a file, not a converted dataset's directory",
                          "data_prep.catalog --csv=products.csv")  # fmt: skip
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "list_attr_celeba.txt").write_text("")
    raw = _cli(["experiments.evaluate", "--data_dir=raw"], tmp_path)
    assert_one_error_line(raw, "raw (--data_dir) holds ['list_attr_celeba.txt'] but no dataset.json",
                          "data_prep.<name> --input_dir=raw --output_dir=data/NAME")  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["products.csv", "raw"]


def test_service_limits_and_a_busy_port_are_one_error_line_before_the_model_loads(tmp_path):
    """A limit of 0 refused every request after start-up; a port in use was uvicorn's log line and exit
    3 after the model had loaded. Both are now one error line, before anything is read (the export and
    index named here do not exist)."""
    base = ["experiments.serve", "--export_dir=nope", "--index=nope.npz"]
    assert_one_error_line(_cli([*base, "--max_top_k=0"], tmp_path), "--max_top_k must be >= 1, got 0")
    assert_one_error_line(_cli([*base, "--gather_ms=nan"], tmp_path), "--gather_ms must be a finite number")
    assert_one_error_line(_cli([*base, "--model_timeout=-1"], tmp_path), "--model_timeout must be a finite number of seconds > 0, got -1.0")  # fmt: skip
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = _cli([*base, f"--port={port}"], tmp_path)
    assert_one_error_line(result, f"--port={port}: cannot listen there", "pick another --port")


def test_index_refuses_an_embedding_batch_of_zero(tmp_path):
    result = _cli(["experiments.index", "--export_dir=nope", "--index=i.npz", "--images=.", "--embed_batch=0"],
                  tmp_path)  # fmt: skip
    assert_one_error_line(result, "--embed_batch must be >= 1, got 0")


def test_a_stage_config_this_code_cannot_read_is_one_error_line(data_dir, tmp_path):
    """A config.json from another version (a field this code does not know) or a damaged one ended in a
    TypeError or JSONDecodeError traceback in every later stage; now one line naming the file."""
    stage1 = tmp_path / "w" / "seed0" / "stage1"
    stage1.mkdir(parents=True)
    (stage1 / "config.json").write_text(json.dumps({"dataset": "synthetic", "field_of_a_newer_version": 1}))
    newer = _cli(["experiments.stage2", "--quick", f"--data_dir={data_dir}", "--workdir=w"], tmp_path)
    assert_one_error_line(newer, "w/seed0/stage1/config.json: not a stage config this code reads",
                          "field_of_a_newer_version", "another --workdir")  # fmt: skip
    (stage1 / "config.json").write_text('{"dataset": "synth')
    damaged = _cli(["experiments.stage2", "--quick", f"--data_dir={data_dir}", "--workdir=w"], tmp_path)
    assert_one_error_line(damaged, "w/seed0/stage1/config.json: not a stage config this code reads")
