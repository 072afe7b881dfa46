"""The export's two signatures called over TensorFlow Serving's REST API instead of in-process.

    model = RemoteModel("http://tf-serving:8501/v1/models/fsn", export_dir="exports/synthetic/1")
    out = model.embed([rgb_uint8_image])      # POST .../v1/models/fsn/versions/1:predict, signature "embed"
    vectors = model.manipulate(out["attribute_representations"], [[0]], [[7]])

Requests name the export's version: TensorFlow Serving keeps each version of a model in a directory
named by its number (`exports/shop/1`, `exports/shop/2`) and answers a URL without `/versions/N` from
its newest, so a second export deployed beside the first would change the query vectors while the index's
fingerprint check, made against the local copy, still passed. The version is the export directory's
name (or the URL's `/versions/N`, which must agree with it); at start-up that version must be AVAILABLE.

`RemoteModel` has `ExportedModel`'s interface (`vocabulary`, `metadata`, `fingerprint`, `embed`,
`manipulate`), so the search service runs unchanged in front of a TensorFlow Serving deployment. The
vocabulary and the export's metadata are read from the local copy of the export (`vocabulary.json`,
`export.json`; the SavedModel itself is not loaded here): TensorFlow Serving does not serve asset files,
and the index file is checked against that export's fingerprint. The served model must be that export: at
start-up it embeds export.json's probe image and must answer the vector the export recorded (exports
written before the probe are not checked).

Requests are the columnar form (`{"signature_name": ..., "inputs": {...}}`, written by
`export.rest_request_body`: `export.rest_request` as compact JSON); TensorFlow Serving answers
`{"outputs": {name: value, ...}}`, or `{"outputs": value}` when the signature has a single output
(`manipulate`). Only the standard library is used (urllib), one connection per call, so concurrent calls
share no state.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np

from fashionsearchnet_v2.serving import export

# dtypes of the outputs, as the SavedModel declares them (JSON carries numbers only).
OUTPUT_DTYPES = {"predicted_values": np.int32}


class RemoteModelError(RuntimeError):
    """TensorFlow Serving refused a call or could not be reached; the message says which and why.

    `unreachable` is True when no answer came at all (connection refused, timeout).
    """

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


def normalize_model_url(url: str) -> str:
    """`http://host:8501/v1/models/NAME[/versions/N]` without a trailing slash or `:predict`."""
    url = url.strip().rstrip("/")
    if url.endswith(":predict"):
        url = url[: -len(":predict")]
    if not url.startswith(("http://", "https://")) or "/v1/models/" not in url:
        raise ValueError(
            f"--model_url must look like http://HOST:8501/v1/models/NAME[/versions/N] "
            f"(TensorFlow Serving's REST model URL), got {url!r}"
        )
    return url


# <model>[/versions/N | /labels/L]: TensorFlow Serving's REST model URL, after normalize_model_url.
_VERSIONED = re.compile(
    r"^(?P<model>.*/v1/models/[^/]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/]+))?$"
)


def export_version(export_dir: str) -> str | None:
    """The version an export directory is in TensorFlow Serving's layout (MODEL/N): its name when that is
    a number ("1" for exports/shop/1), else None."""
    name = os.path.basename(os.path.normpath(export_dir))
    return str(int(name)) if re.fullmatch(r"[0-9]+", name) else None  # not isdigit(): "²" is a digit


def pin_version(model_url: str, export_dir: str) -> tuple[str, str]:
    """(the model's URL without a version, the version to ask for) for `export_dir`'s copy served at
    `model_url`; ValueError when the URL names a label or another version than the export's, or when
    neither names one."""
    url = normalize_model_url(model_url)
    m = _VERSIONED.match(url)
    if m is None:
        raise ValueError(f"--model_url={url}: not TensorFlow Serving's REST model URL "
                         "http://HOST:8501/v1/models/NAME[/versions/N]")  # fmt: skip
    local = export_version(export_dir)
    if m["label"] is not None:
        raise ValueError(
            f"--model_url={url} names the label {m['label']!r}, whose version cannot be checked against "
            f"--export_dir={export_dir}: name the version instead (.../versions/{local or 'N'}) or none"
        )
    named = str(int(m["version"])) if m["version"] is not None else None
    if named is not None and local is not None and named != local:
        raise ValueError(
            f"--model_url={url} names version {named}, but --export_dir={export_dir} is version {local}: "
            "the index was built with that export; point both at the same version"
        )
    if named is None and local is None:
        raise ValueError(
            f"--export_dir={export_dir} is not named by a version number (TensorFlow Serving's layout "
            f"MODEL/N), and --model_url={url} names none: add /versions/N, the version TensorFlow Serving "
            "serves this export as (without one it answers from its newest)"
        )
    return m["model"], named or local


class RemoteModel:
    """A TensorFlow Serving model with the `embed` and `manipulate` signatures of an export.

    Args:
        model_url: TensorFlow Serving's REST URL of the model, http://HOST:8501/v1/models/NAME (optionally
            /versions/N, which must be the export's version); requests go to
            `<model>/versions/<the export's version>:predict` (the `model_url` attribute).
        export_dir: the local copy of the export that TensorFlow Serving serves (vocabulary, metadata),
            named by its version as TensorFlow Serving's model directory holds it (exports/shop/1), unless
            `model_url` names the version.
        timeout: seconds per call.
        check: ask TensorFlow Serving for the model's status now (GET <model>) and fail unless the
            export's version is AVAILABLE.
    """

    def __init__(self, model_url: str, export_dir: str, timeout: float = 30.0, check: bool = True):
        self.export_dir = os.path.abspath(export_dir)
        self.status_url, self.version = pin_version(model_url, self.export_dir)
        self.model_url = f"{self.status_url}/versions/{self.version}"
        self.timeout = float(timeout)
        self.vocabulary = export.Vocabulary.load(self.export_dir)
        try:
            with open(os.path.join(self.export_dir, export.EXPORT_JSON), encoding="utf-8") as f:
                self.metadata = json.load(f)
        except (OSError, ValueError) as e:
            raise export.ExportError(f"{self.export_dir}: cannot read {export.EXPORT_JSON} ({e})") from e
        self.fingerprint = _read_fingerprint(self.export_dir)
        if check:
            self.check_available()
            self.check_probe()

    def __repr__(self) -> str:
        return f"RemoteModel({self.model_url!r})"

    def _http(self, url: str, data: bytes | None = None) -> dict:
        """GET `url`, or POST the JSON body `data` to it; the answer's JSON."""
        request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("error", "")
            except (ValueError, AttributeError, OSError):
                reason = ""
            raise RemoteModelError(
                f"TensorFlow Serving at {url} answered {e.code}: {reason or e.reason}"
            ) from e
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise RemoteModelError(f"TensorFlow Serving at {url} is unreachable ({reason})", True) from e
        except ValueError as e:
            raise RemoteModelError(f"TensorFlow Serving at {url} answered something that is not JSON") from e

    def check_available(self) -> list[str]:
        """The AVAILABLE versions (GET of the model's URL without a version: the status of every
        version); RemoteModelError unless the export's version is one of them."""
        status = self._http(self.status_url)
        states = {str(v.get("version")): v.get("state") for v in status.get("model_version_status", [])}
        versions = [v for v, state in states.items() if state == "AVAILABLE"]
        if self.version not in versions:
            found = ", ".join(f"{v} {state}" for v, state in sorted(states.items())) or "none"
            raise RemoteModelError(
                f"TensorFlow Serving at {self.status_url} has no AVAILABLE version {self.version}, the "
                f"version of --export_dir={self.export_dir} (its versions: {found}): deploy that export as "
                f"version {self.version}, or point --export_dir at the local copy of the version it serves"
            )
        return versions

    def check_probe(self) -> float | None:
        """Whether the served model is the export in `export_dir`: its `embed` of export.json's probe
        image against the vector export.json keeps (`export.PROBE_TOLERANCE` of the export's precision);
        the relative difference, or None for an export written before the probe existed (not checked).
        RemoteModelError when they differ: another model is deployed as this version (the index's
        fingerprint check reads only the local copy)."""
        probe = self.metadata.get("probe")
        if not probe:
            return None
        image = export.probe_image(int(self.metadata["image_size"]))
        got = self.embed([image])["global_representation"][0]
        expected = probe["global_representation"]
        difference = export.probe_difference(expected, got)
        tolerance = export.PROBE_TOLERANCE.get(
            self.metadata.get("precision"), export.PROBE_TOLERANCE["bfloat16"]
        )
        if not difference <= tolerance:
            how = (
                f"its embed of the export's probe image differs by {difference:.3g} (relative; at most "
                f"{tolerance} for the same weights)"
                if np.size(got) == len(expected)
                else f"its embed answers global representations of {np.size(got)} values, the export's "
                f"have {len(expected)}"
            )
            raise RemoteModelError(
                f"TensorFlow Serving's version {self.version} at {self.status_url} is not the export in "
                f"--export_dir={self.export_dir}: {how}: deploy that export as version {self.version}, or "
                "point --export_dir at the copy it serves"
            )
        return difference

    def predict(self, signature: str, inputs: dict) -> dict[str, np.ndarray]:
        """One `:predict` call in the columnar form -> {output name: array}."""
        # Compact JSON (`export.rest_request_body`): an image goes as nested lists of numbers (a uint8
        # tensor takes no "b64" in TensorFlow Serving's JSON), and ", " after each of them made a 4 MP
        # image's body a fifth larger; written by NumPy, not through Python lists (seconds and gigabytes).
        answer = self._http(self.model_url + ":predict", export.rest_request_body(signature, inputs))
        if "outputs" not in answer:
            raise RemoteModelError(f"TensorFlow Serving answered without 'outputs': {str(answer)[:200]}")
        outputs = answer["outputs"]
        if not isinstance(outputs, dict):  # a single-output signature: the value itself
            outputs = {"global_representation": outputs}
        return {k: np.asarray(v, OUTPUT_DTYPES.get(k, np.float32)) for k, v in outputs.items()}

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 32) -> dict[str, np.ndarray]:
        """uint8 RGB images [H_i, W_i, 3] -> the `embed` outputs stacked in input order, [N, ...].

        The same client as `ExportedModel.embed` (`export.embed_in_batches`): checked, batched by size.
        """
        out = export.embed_in_batches(
            images, batch_size, lambda batch: self.predict("embed", {"images": batch})
        )
        missing = set(export.EMBED_OUTPUTS) - set(out)
        if images and missing:
            raise RemoteModelError(f"TensorFlow Serving's embed lacks the outputs {sorted(missing)}")
        return out

    def manipulate(self, attribute_representations, attributes, values) -> np.ndarray:
        """[N, A, D], int [N, M], int [N, M] (-1 = unused) -> global representations [N, r]."""
        inputs = {
            "attribute_representations": np.asarray(attribute_representations, np.float32),
            "attributes": np.asarray(attributes, np.int32),
            "values": np.asarray(values, np.int32),
        }
        return self.predict("manipulate", inputs)["global_representation"]


def _read_fingerprint(export_dir: str) -> str:
    import tensorflow as tf

    try:
        return tf.saved_model.experimental.read_fingerprint(export_dir).singleprint()
    except (ValueError, OSError, tf.errors.OpError):  # an export without a fingerprint: nothing to check
        return ""
