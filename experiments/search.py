"""Searches an index with one query image and attribute manipulations (§3.3) from the command line.

    python -m experiments.search --export_dir=exports/synthetic/1 --index=indexes/gallery.npz \\
        --image=query.jpg --set color=black --set sleeve_length=long [--top_k=20] \\
        [--where category=dress ...] [--format=table|json] [--grid=out.png] [--backend=exact|faiss]

Embeds the image (`embed`), replaces the named attributes' representations with their memory prototypes
(`manipulate`), ranks the index by Euclidean distance and prints rank, id, distance and each result's
attributes: its dataset label where known, else the model's prediction (marked `*` in the table).
--where keeps the results to items with those values (the same known values; an attribute named twice
accepts either value, several attributes must all hold).
--grid writes a PNG: query, manipulation, results (framed green where every requested value holds), and
the query's attribute activation maps with their boxes. Exit code 2 for an unknown attribute or value
(the message lists the valid names), an unreadable image (path and reason) or an unusable index.
"""

import json
import sys

from absl import flags

from experiments import common
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.serving import export, indexing, search_figure
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


def manipulation_text(vocabulary, manipulations, predicted) -> str:
    """ "color: blue → black, ..." with the query's predicted value before each arrow."""
    if not manipulations:
        return "no manipulation"
    values = [attr.values for attr in vocabulary.attributes]
    return ", ".join(
        f"{vocabulary.names[a]}: {values[a][predicted[a]]} → {values[a][v]}" for a, v in manipulations
    )


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
        vocabulary = export.Vocabulary.load(EXPORT_DIR.value)
        manipulations = vocabulary.parse_manipulations(SET.value)
        conditions = vocabulary.parse_where(WHERE.value)
        image = index_lib.read_image(IMAGE.value)
        index = index_lib.SearchIndex.load(INDEX.value)
        indexing.check_compatible(index, vocabulary.to_json(), index.vectors.shape[1])  # before the slow load
        model = export.ExportedModel(EXPORT_DIR.value)
        # An export without export.json records no dimension: the index's is taken, as the service does.
        global_dim = int(model.metadata.get("global_dim") or index.vectors.shape[1])
        indexing.check_compatible(index, vocabulary.to_json(), global_dim, model.fingerprint)
        emb = model.embed([image])
        attributes, values = export.manipulation_arrays([manipulations])
        query = model.manipulate(emb["attribute_representations"], attributes, values)
        allowed = index.where_mask(conditions) if conditions else None
        rows, distances = index.search(
            query, TOP_K.value, BACKEND.value, nprobe=NPROBE.value, ef_search=EF_SEARCH.value, allowed=allowed
        )
    except (export.VocabularyError, export.ExportError, index_lib.ImageReadError, index_lib.IndexFileError,
            index_lib.FaissUnavailable) as e:  # fmt: skip
        common.fail(str(e))
    keep = rows[0] >= 0  # FAISS pads with -1 when it finds fewer than k
    rows, distances = rows[0][keep], distances[0][keep]
    results = [
        {"rank": i + 1, "id": str(index.ids[r]), "distance": float(d), "attributes": index.attributes(int(r))}
        for i, (r, d) in enumerate(zip(rows, distances))
    ]
    query_pred = {
        name: {"value": vocabulary.attributes[a].values[int(emb["predicted_values"][0, a])],
               "probability": round(float(emb["predicted_probabilities"][0, a]), 4)}
        for a, name in enumerate(vocabulary.names)
    }  # fmt: skip
    text = manipulation_text(vocabulary, manipulations, emb["predicted_values"][0])
    where = {
        vocabulary.names[a]: [vocabulary.attributes[a].values[v] for v in vs] for a, vs in conditions.items()
    }
    candidates = len(index) if allowed is None else int(allowed.sum())
    if FORMAT.value == "json":
        out = {
            "query": {"image": IMAGE.value, "predicted": query_pred},
            "manipulations": [
                {"attribute": vocabulary.names[a], "value": vocabulary.attributes[a].values[v]}
                for a, v in manipulations
            ],  # fmt: skip
            "where": where,
            "candidates": candidates,
            "backend": BACKEND.value or index.backend,
            "results": results,
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        shown = ", ".join(f"{n}={p['value']}" for n, p in query_pred.items())
        print(f"query {IMAGE.value} (predicted: {shown})\nmanipulation: {text}")
        if where:
            shown = "; ".join(f"{n} = {' or '.join(vs)}" for n, vs in where.items())
            print(f"only items with {shown}: {candidates} of {len(index)}")
        print()
        print(table(results, vocabulary.names))
        print("\n* predicted by the model (no dataset label)")
    if GRID.value:
        shown_rows = rows[: min(GRID_K.value, len(rows))]
        known = index.known_values()
        matched = [all(known[r, a] == v for a, v in manipulations) for r in shown_rows]
        try:
            images = search_figure.result_images(index, shown_rows, common.DATA_DIR.value)
        except (index_lib.ImageReadError, index_lib.IndexFileError, schema.DatasetError) as e:
            common.fail(f"cannot draw --grid: {e}")
        search_figure.search_figure(image, text, images, matched, GRID.value, emb["maps"][0], emb["boxes"][0],
                                vocabulary.names)  # fmt: skip
        print(f"wrote {GRID.value}", file=sys.stderr)


if __name__ == "__main__":
    common.run(main)
