"""Embeds a dataset split or a folder of images through an export into an index file for search.

    python -m experiments.index --export_dir=exports/synthetic/1 --split=gallery --dataset=synthetic \\
        --index=indexes/gallery.npz [--backend=exact|faiss] [--overwrite]
    python -m experiments.index --export_dir=exports/synthetic/1 --images=FOLDER --index=indexes/shop.npz \\
        [--reuse=indexes/shop.npz --overwrite]
    python -m experiments.index --export_dir=exports/synthetic/1 --embeddings=DIR --index=indexes/shop.npz

--split=all indexes the whole dataset (train, query and gallery: every item of a catalogue, as a search
service serves it); --split=query,gallery names several. --embeddings reads the shards
`experiments.embed_beam` wrote (a catalogue embedded on Apache Beam) instead of embedding here: the same
index as --images or --split over the same source. A split's dataset is --data_dir (or --dataset) when
given, else the one the export was made from.

--reuse=OLD.npz (an earlier index of the same export), with --images or --split, takes the vectors of the items
whose id and image bytes are in it instead of embedding them again: a catalogue that changed a little is
re-indexed at the cost of what changed (each image's bytes are still read to compare them; --index may be
OLD itself with --overwrite).

Exact search (numpy, the paper's protocol) is the default. --backend=faiss also writes `<index>.<token>.faiss`
(IVF-Flat by default, or HNSW) for catalogues too large to scan per query; it needs `pip install -e .[faiss]`.
Unreadable images in a folder are skipped and listed; the index file is written atomically.
"""

import os
import sys

from absl import flags

from experiments import common
from fashionsearchnet_v2 import progress
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.serving import export, indexing
from fashionsearchnet_v2.serving import index as index_lib

EXPORT_DIR = flags.DEFINE_string("export_dir", None, "SavedModel written by experiments.export.")
INDEX = flags.DEFINE_string("index", None, "Index file (.npz) to write.")
SPLIT = flags.DEFINE_string(
    "split", None, "Dataset split(s) to index (with dataset flags): gallery, several (query,gallery) or all."
)
IMAGES = flags.DEFINE_string("images", None, "Folder of images to index instead of a split (recursive).")
EMBEDDINGS = flags.DEFINE_string(
    "embeddings", None, "Embedding shards written by experiments.embed_beam, indexed as they are."
)
BACKEND = flags.DEFINE_enum("backend", "exact", list(index_lib.BACKENDS), "Search backend of the index.")
FAISS_KIND = flags.DEFINE_enum("faiss_kind", "ivf_flat", list(index_lib.FAISS_KINDS), "FAISS index type.")
NLIST = flags.DEFINE_integer("nlist", None, "IVF cells (default about sqrt(N)).")
NPROBE = flags.DEFINE_integer("nprobe", 16, "IVF cells scanned per query (recorded as the search default).")
HNSW_M = flags.DEFINE_integer("hnsw_m", 32, "HNSW links per node.")
EF_SEARCH = flags.DEFINE_integer(
    "ef_search", 128, "HNSW candidates per query (recorded as the search default)."
)
BATCH = flags.DEFINE_integer("embed_batch", 32, "Images per `embed` call.")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing index file.")
REUSE = flags.DEFINE_string(
    "reuse",
    None,
    "An earlier index of the same export: items whose id and image bytes are in it keep its vectors.",
)
flags.mark_flags_as_required(["export_dir", "index"])


def main(argv):
    del argv
    if sum(v is not None for v in (SPLIT.value, IMAGES.value, EMBEDDINGS.value)) != 1:
        common.fail(
            "give exactly one of --split (a dataset split), --images (a folder) or --embeddings (the output "
            "of experiments.embed_beam)"
        )
    if BATCH.value < 1:
        common.fail(f"--embed_batch must be >= 1, got {BATCH.value}")
    if REUSE.value is not None and EMBEDDINGS.value is not None:
        common.fail(
            "--reuse takes the vectors of an earlier index for --images or --split; --embeddings embeds nothing"
        )
    if SPLIT.value is not None:
        try:
            schema.split_list(SPLIT.value)
        except schema.DatasetError as e:
            common.fail(f"--split: {e}")
    if BACKEND.value == "faiss":
        try:
            index_lib.import_faiss()
        except index_lib.FaissUnavailable as e:
            common.fail(str(e))
    try:
        if not OVERWRITE.value and os.path.lexists(INDEX.value):
            raise index_lib.IndexFileError(f"{INDEX.value} already exists; pass --overwrite to replace it")
        if EMBEDDINGS.value is not None:  # embedded already: the export's description is all it needs
            index = indexing.index_embeddings(export.ExportInfo(EXPORT_DIR.value), EMBEDDINGS.value)
        else:
            previous = index_lib.SearchIndex.load(REUSE.value) if REUSE.value is not None else None
            model = export.ExportedModel(EXPORT_DIR.value)
            if IMAGES.value is not None:
                index, _ = indexing.index_folder(model, IMAGES.value, BATCH.value, previous=previous)
            else:
                info = schema.load_dataset_info(common.export_data_dir(model.metadata))
                index = indexing.index_split(model, info, SPLIT.value, BATCH.value, previous=previous)
        skipped = index.metadata.get("skipped", [])
        for entry in skipped[:20]:
            print(f"skipped {entry.get('path') or entry['id']}: {entry['reason']}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"... and {len(skipped) - 20} more (listed in the index metadata)", file=sys.stderr)
        if len(index) == 0:
            common.fail("no image could be embedded; nothing to index")
        faiss_index = None
        if BACKEND.value == "faiss":
            params = {"kind": FAISS_KIND.value}
            if FAISS_KIND.value == "ivf_flat":
                params["nlist"] = NLIST.value or index_lib.default_nlist(len(index))
                params["nprobe"] = min(NPROBE.value, params["nlist"])
            else:
                params["hnsw_m"], params["ef_search"] = HNSW_M.value, EF_SEARCH.value
            with progress.phase(f"building the FAISS {FAISS_KIND.value} index of {len(index)} vectors"):
                faiss_index = index_lib.build_faiss(
                    index.vectors, FAISS_KIND.value, nlist=params.get("nlist"), hnsw_m=HNSW_M.value
                )
            with progress.phase(f"recall@20 against exact search on 100 of the {len(index)} vectors"):
                measured = index_lib.faiss_recall(
                    faiss_index, index.vectors, 20, 100, nprobe=params.get("nprobe"),
                    ef_search=params.get("ef_search"),
                )  # fmt: skip
            params["recall"] = measured
            index.metadata["faiss"] = params
        with progress.phase(f"writing {INDEX.value}", enabled=len(index) >= 100_000):
            path = index.save(INDEX.value, OVERWRITE.value, faiss_index)
    except (export.ExportError, index_lib.IndexFileError, schema.DatasetError) as e:
        common.fail(str(e))
    if "reused" in index.metadata:
        reused = index.metadata["reused"]["items"]
        print(f"took {reused} of {len(index)} vectors from {REUSE.value} (the same id and image); embedded "
              f"{len(index) - reused}")  # fmt: skip
    if faiss_index is not None:
        r = index.metadata["faiss"]["recall"]
        print(f"FAISS {FAISS_KIND.value}: recall@{r['k']} {r['recall']:.3f} against exact search, {r['queries']} "
              "of its own vectors as queries (each one's own row left out); --nprobe / --ef_search trade it "
              "for speed")  # fmt: skip
    extra = f" + {index.metadata['faiss']['file']}" if faiss_index is not None else ""
    print(f"wrote {path}{extra}: {len(index)} vectors of dimension {index.vectors.shape[1]}, "
          f"backend {index.backend}")  # fmt: skip


if __name__ == "__main__":
    common.run(main)
