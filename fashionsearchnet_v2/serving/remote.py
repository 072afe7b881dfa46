"""The export's two signatures called over TensorFlow Serving's REST API instead of in-process.

    model = RemoteModel("http://tf-serving:8501/v1/models/fsn", export_dir="exports/synthetic/1")
    out = model.embed([rgb_uint8_image])              # POST .../v1/models/fsn:predict, signature "embed"
    vectors = model.manipulate(out["attribute_representations"], [[0]], [[7]])

`RemoteModel` has `ExportedModel`'s interface (`vocabulary`, `metadata`, `fingerprint`, `embed`,
`manipulate`), so the search service runs unchanged in front of a TensorFlow Serving deployment. The
vocabulary and the export's metadata are read from the local copy of the export (`vocabulary.json`,
`export.json`; the SavedModel itself is not loaded here): TensorFlow Serving does not serve asset files,
and the index file is checked against that export's fingerprint. The served model must be that export.

Requests are the columnar form (`{"signature_name": ..., "inputs": {...}}`, built by
`export.rest_request`); TensorFlow Serving answers `{"outputs": {name: value, ...}}`, or
`{"outputs": value}` when the signature has a single output (`manipulate`). Only the standard library is
used (urllib), one connection per call, so concurrent calls share no state.
"""

from __future__ import annotations

import json
import os
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


class RemoteModel:
    """A TensorFlow Serving model with the `embed` and `manipulate` signatures of an export.

    Args:
        model_url: TensorFlow Serving's REST URL of the model, http://HOST:8501/v1/models/NAME (optionally
            /versions/N); requests go to `<model_url>:predict`.
        export_dir: the local copy of the export that TensorFlow Serving serves (vocabulary, metadata).
        timeout: seconds per call.
        check: ask TensorFlow Serving for the model's status now (GET model_url) and fail unless a
            version is AVAILABLE.
    """

    def __init__(self, model_url: str, export_dir: str, timeout: float = 30.0, check: bool = True):
        self.model_url = normalize_model_url(model_url)
        self.export_dir = os.path.abspath(export_dir)
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

    def __repr__(self) -> str:
        return f"RemoteModel({self.model_url!r})"

    def _http(self, url: str, body: dict | None = None) -> dict:
        # Compact: an image goes as nested lists of numbers (a uint8 tensor takes no "b64" in TensorFlow
        # Serving's JSON), and ", " after each of them made a 4 MP image's body a fifth larger.
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")
        request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
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
        """The AVAILABLE versions (GET model_url); RemoteModelError when there is none."""
        status = self._http(self.model_url)
        versions = [
            str(v.get("version"))
            for v in status.get("model_version_status", [])
            if v.get("state") == "AVAILABLE"
        ]
        if not versions:
            raise RemoteModelError(
                f"TensorFlow Serving at {self.model_url} has no AVAILABLE version: {status}"
            )
        return versions

    def predict(self, signature: str, inputs: dict) -> dict[str, np.ndarray]:
        """One `:predict` call in the columnar form -> {output name: array}."""
        answer = self._http(self.model_url + ":predict", export.rest_request(signature, inputs))
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
