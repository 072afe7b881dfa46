"""Exports a trained Table 1 variant as a SavedModel with the `embed` and `manipulate` signatures.

    python -m experiments.export --dataset=synthetic --export_dir=exports/synthetic/1 [--variant=full]
        [--workdir=work/synthetic] [--data_dir=data/synthetic] [--overwrite] [--precision=bfloat16]
        [--noembed_bfloat16]

The dataset flags only locate the vocabulary (and, for variants without stage 3, the train split whose
means fill the memory block); without them, the dataset the stages were trained on (their config.json)
is used, and an explicit --data_dir is checked against the stages as ever. The export loads with TensorFlow alone (`tf.saved_model.load`,
`saved_model_cli show --all --dir DIR`, TensorFlow Serving); see docs/serving.md.
"""

import os

from absl import flags

from experiments import common
from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.serving import destination

# TensorFlow loads (seconds) only after the refusals that need no model: an existing destination, a
# missing dataset, a bad flag.
EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Directory to write the SavedModel into.")
VARIANT = flags.DEFINE_enum("variant", "full", configs.exportable_variants(), "Table 1 row to export.")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing export directory.")
EMBED_BFLOAT16 = flags.DEFINE_bool(
    "embed_bfloat16",
    True,
    "A float32 export also gets `embed_bfloat16`: the same network with its weights stored in bfloat16, "
    "which experiments.serve calls where the CPU multiplies bfloat16 natively (--precision=auto there); "
    "`embed` is unchanged. WORKSPACE.md P4.",
)
flags.mark_flag_as_required("export_dir")
# An export is served on machines unknown here (TensorFlow Serving, another CPU): float32 unless asked
# (WORKSPACE.md decision 63); --precision=auto picks by this machine, bfloat16 asks for it.
flags.set_default(common.PRECISION, "float32")


def main(argv):
    del argv
    try:  # refuse before minutes of loading
        destination.check_destination(EXPORT_DIR.value, OVERWRITE.value)
    except destination.ExportError as e:
        common.fail(str(e))
    from fashionsearchnet_v2 import precision, progress

    choice = precision.resolve(common.precision_flag())
    dirs = common.resolve_dirs()
    workdir = common.seed_workdir(dirs.workdir, common.SEED.value)
    info = common.load_dataset(dirs, common.QUICK.value, "export", common.SEED.value)
    from fashionsearchnet_v2.serving import export
    from fashionsearchnet_v2.trained import checkpoints

    try:
        net, layer, model_cfg, metadata = export.exportable_variant(
            workdir, info, VARIANT.value, precision=choice.precision
        )
    except checkpoints.RestoreError as e:
        common.fail(str(e))
    vocabulary = export.Vocabulary.from_info(info)
    fast = None
    if EMBED_BFLOAT16.value and choice.precision == "float32":
        fast, _ = export.exportable_network(net, model_cfg, vocabulary, "bfloat16", stored_bfloat16=True)
    module = export.ServingModule(net, layer, vocabulary, model_cfg.image_size, model_bfloat16=fast)
    metadata["data_dir"] = os.path.abspath(dirs.data_dir)
    try:
        with progress.phase(f"tracing and writing the SavedModel into {EXPORT_DIR.value}"):
            out = export.save(module, vocabulary, EXPORT_DIR.value, OVERWRITE.value, metadata)
    except export.ExportError as e:
        common.fail(str(e))
    a, d, r = len(vocabulary.names), layer.dim, layer.output_dim
    print(f"wrote {out}: variant {VARIANT.value}, {model_cfg.image_size} px, A={a} D={d} r={r}, {choice}")
    print(f"  embed(images uint8 [N,H,W,3]) -> {', '.join(export.EMBED_OUTPUTS)}")
    print(f"  embed{export.RESIZED}(resized float32 [N,{model_cfg.image_size},{model_cfg.image_size},3]) -> the same, "
          "any sizes in one batch")  # fmt: skip
    if fast is not None:
        print(f"  {export.BFLOAT16_EMBED}(images) -> the same outputs, weights stored in bfloat16 (and "
              f"{export.BFLOAT16_EMBED}{export.RESIZED})")  # fmt: skip
    print("  manipulate(attribute_representations, attributes, values) -> global_representation")
    print(f"  inspect: saved_model_cli show --all --dir {out}")


if __name__ == "__main__":
    common.run(main)
