"""Searches an index with one query image and attribute manipulations (§3.3) from the command line.

    python -m experiments.search --export_dir=exports/synthetic/1 --index=indexes/gallery.npz \\
        --image=query.jpg --set color=black --set sleeve_length=long [--top_k=20] \\
        [--where category=dress ...] [--format=table|json] [--grid=out.png] [--backend=exact|faiss]

Embeds the image (`embed`), replaces the named attributes' representations with their memory prototypes
(`manipulate`), ranks the index by Euclidean distance and prints rank, id, distance and each result's
attributes: its dataset label where known, else the model's prediction (marked `*` in the table).
--where keeps the results to items with those values (the same known values; an attribute named twice
accepts either value, several attributes must all hold).
--format=json prints what the search service answers to POST /search (docs/serving.md: the query's
predicted values, target, AAM maps and boxes, the changes, each result's matches), plus the image's
path: the command runs the service's own search. --grid writes a PNG: query, manipulation, results
(framed green where every requested value holds), and the query's attribute activation maps with their
boxes. Exit code 2 for an unknown attribute or value
(the message lists the valid names), an unreadable image (path and reason) or an unusable index.
"""

import json
import sys

import numpy as np
from absl import flags

from experiments import common
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.serving import export, indexing, items, search_figure, searcher
from fashionsearchnet_v2.serving import index as index_lib

EXPORT_DIR = flags.DEFINE_string("export_dir", None, "SavedModel written by experiments.export.")
INDEX = flags.DEFINE_string("index", None, "Index file written by experiments.index.")
IMAGE = flags.DEFINE_string("image", None, "Query image (JPEG, PNG, BMP or GIF).")
SET = flags.DEFINE_multi_string("set", [], "Manipulation ATTRIBUTE=VALUE; repeat for several attributes.")
WHERE = flags.DEFINE_multi_string(
    "where",
    [],
    "Result filter ATTRIBUTE=VALUE: only items with that value (label, else prediction) are ranked; repeat "
    "an attribute to accept any of its values, several attributes must all hold.",
)
TOP_K = flags.DEFINE_integer("top_k", 20, "Results to return.")
FORMAT = flags.DEFINE_enum("format", "table", ["table", "json"], "Output format.")
GRID = flags.DEFINE_string("grid", None, "Write a PNG of the query, manipulation and results here.")
GRID_K = flags.DEFINE_integer("grid_k", 10, "Results shown in --grid (at most --top_k).")
BACKEND = flags.DEFINE_enum("backend", None, list(index_lib.BACKENDS), "Override the index's backend.")
NPROBE = flags.DEFINE_integer("nprobe", None, "FAISS IVF cells scanned per query (default: the index's).")
EF_SEARCH = flags.DEFINE_integer("ef_search", None, "FAISS HNSW candidates per query (default: the index's).")
flags.mark_flags_as_required(["export_dir", "index", "image"])


def table(results, names) -> str:
    header = ["rank", "id", "distance"] + list(names)
    rows = [[str(r["rank"]), r["id"], f"{r['distance']:.4f}"]
            + [a["value"] + ("*" if a["source"] == "predicted" else "") for a in r["attributes"].values()]
            for r in results]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header] + rows]
    return "\n".join(lines)


def main(argv):
    del argv
    if TOP_K.value < 1:
        common.fail(f"--top_k must be >= 1, got {TOP_K.value}")
    try:
        # Names, image and index are checked before the slow load of the model.
        vocabulary = export.Vocabulary.load(EXPORT_DIR.value)
        manipulations = vocabulary.parse_manipulations(SET.value)
        conditions = vocabulary.parse_where(WHERE.value)
        image = index_lib.read_image(IMAGE.value)
        index = index_lib.SearchIndex.load(INDEX.value)
        indexing.check_compatible(index, vocabulary.to_json(), index.vectors.shape[1])
        model = export.ExportedModel(EXPORT_DIR.value)
        # The service's search itself (POST /search): the same ranking, target and matches, one code path.
        # No item image is shown here (--grid reads its own), so none is looked up.
        engine = searcher.Searcher(
            model, index, items.ItemImages(index, with_images=False), BACKEND.value, NPROBE.value,
            EF_SEARCH.value, max_top_k=TOP_K.value, max_batch=1, gather_ms=0,
        )  # fmt: skip
        names, values = vocabulary.names, [attr.values for attr in vocabulary.attributes]
        answer = engine.search(
            image=image,
            changes=[(names[a], values[a][v]) for a, v in manipulations],
            top_k=TOP_K.value,
            where=[(names[a], values[a][v]) for a, vs in conditions.items() for v in vs],
        )
    except (export.VocabularyError, export.ExportError, index_lib.ImageReadError, index_lib.IndexFileError,
            index_lib.FaissUnavailable) as e:  # fmt: skip
        common.fail(str(e))
    except searcher.RequestError as e:
        common.fail(e.message)
    answer["query"] = {"image": IMAGE.value, **answer["query"]}
    changes = answer["changes"]
    text = ", ".join(f"{c['attribute']}: {c['from']} → {c['to']}" for c in changes) or "no manipulation"
    if FORMAT.value == "json":
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        shown = ", ".join(f"{n}={p['value']}" for n, p in answer["query"]["predicted"].items())
        print(f"query {IMAGE.value} (predicted: {shown})\nmanipulation: {text}")
        if answer["where"]:
            shown = "; ".join(f"{n} = {' or '.join(vs)}" for n, vs in answer["where"].items())
            print(f"only items with {shown}: {answer['candidates']} of {len(index)}")
        print()
        print(table(answer["results"], names))
        print("\n* predicted by the model (no dataset label)")
    if GRID.value:
        shown_results = answer["results"][: min(GRID_K.value, len(answer["results"]))]
        rows = [engine.row_of(r["id"]) for r in shown_results]
        matched = [r["changes_match"] for r in shown_results]
        try:
            images = search_figure.result_images(index, rows, common.DATA_DIR.value)
        except (index_lib.ImageReadError, index_lib.IndexFileError, schema.DatasetError) as e:
            common.fail(f"cannot draw --grid: {e}")
        query = answer["query"]
        maps = np.array([query["maps"][n] for n in names], np.float32)
        boxes = np.array([query["boxes"][n] for n in names], np.float32)
        search_figure.search_figure(image, text, images, matched, GRID.value, maps, boxes, names)
        print(f"wrote {GRID.value}", file=sys.stderr)


if __name__ == "__main__":
    common.run(main)
