"""A stand-in for TensorFlow Serving's REST API on localhost, answering from a SavedModel the way
TensorFlow Serving does (https://www.tensorflow.org/tfx/serving/api_rest):

    GET  /v1/models/NAME[/versions/N]            {"model_version_status": [{"version", "state": "AVAILABLE", ...}]}
    POST /v1/models/NAME[/versions/N]:predict    {"signature_name", "inputs": {...}} -> {"outputs": {...}}
                                                 {"signature_name", "instances": [...]} -> {"predictions": [...]}

It serves one export as version 1, or several versions (`versions={1: dir, 2: other_dir}`, each in the
state `states` gives, AVAILABLE by default). As in TensorFlow Serving, the status without a version lists
every version, a URL without a version is answered by the newest AVAILABLE one, and a version that is not
AVAILABLE is 404. A signature with one output answers with the value itself (`"outputs": value`, or one
value per instance), inputs are converted to the signature's dtypes, and a failed call is 400
`{"error": "..."}`; an unknown model is 404. Only what the service uses is mimicked.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<predict>:predict)?$")


class _Handler(BaseHTTPRequestHandler):
    server_version = "TFServingStub/1"

    def log_message(self, *args):  # quiet
        pass

    def _answer(self, status: int, body: dict):
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self):
        m = _PATH.match(self.path)
        if not m or m["name"] != self.server.model_name:
            self._answer(404, {"error": f"Servable not found for request: {self.path}"})
            return None
        return m

    def do_GET(self):
        m = self._route()
        if m is None:
            return
        if m["predict"]:
            self._answer(405, {"error": "predict needs POST"})
            return
        versions = sorted(self.server.states)
        if m["version"] is not None:
            if int(m["version"]) not in self.server.states:
                self._answer(
                    404, {"error": f"Servable not found for request: Specific({m['name']}, {m['version']})"}
                )
                return
            versions = [int(m["version"])]
        self._answer(200, {"model_version_status": [
            {"version": str(v), "state": self.server.states[v],
             "status": {"error_code": "OK", "error_message": ""}}
            for v in versions
        ]})  # fmt: skip

    def do_POST(self):
        m = self._route()
        if m is None:
            return
        if not m["predict"]:
            self._answer(404, {"error": "Unsupported method; use :predict"})
            return
        available = [v for v, state in self.server.states.items() if state == "AVAILABLE"]
        version = int(m["version"]) if m["version"] is not None else max(available, default=None)
        if version not in available:
            self._answer(
                404, {"error": f"Servable not found for request: {m['version'] or 'Latest'}({m['name']})"}
            )
            return
        self.server.calls.append(self.path)
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.server.bodies.append(body)
            self._answer(200, self.server.predict(body, version))
        except Exception as e:  # TensorFlow Serving answers every failure as 400 with its message
            self._answer(400, {"error": f"{type(e).__name__}: {e}"})


class TFServingStub(ThreadingHTTPServer):
    """Serves `export_dir` as version 1 of model `model_name` on 127.0.0.1:`port` (0: a free one), or
    `versions` ({version: export directory}), each in the state `states` names (default AVAILABLE)."""

    daemon_threads = True

    def __init__(self, export_dir: str | None = None, model_name: str = "fsn", port: int = 0,
                 versions: dict[int, str] | None = None, states: dict[int, str] | None = None):  # fmt: skip
        super().__init__(("127.0.0.1", port), _Handler)
        self.model_name = model_name
        versions = versions if versions is not None else {1: export_dir}
        self.loaded_versions = {v: tf.saved_model.load(d) for v, d in versions.items()}
        self.states = {v: (states or {}).get(v, "AVAILABLE") for v in versions}
        self.calls: list[str] = []
        self.bodies: list[dict] = []
        self.fail_next = None  # set to a message to make the next predict fail

    @property
    def model_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/models/{self.model_name}"

    @property
    def loaded(self):
        """The newest version's SavedModel."""
        return self.loaded_versions[max(self.loaded_versions)]

    def predict(self, body: dict, version: int | None = None) -> dict:
        if self.fail_next:
            message, self.fail_next = self.fail_next, None
            raise ValueError(message)
        loaded = self.loaded if version is None else self.loaded_versions[version]
        name = body.get("signature_name", "serving_default")
        if name not in loaded.signatures:
            raise ValueError(f'Serving signature name: "{name}" not found in signature def')
        fn = loaded.signatures[name]
        specs = fn.structured_input_signature[1]
        if "inputs" in body:
            raw, columnar = body["inputs"], True
            if not isinstance(raw, dict):
                raw = {next(iter(specs)): raw}
        elif "instances" in body:
            columnar = False
            rows = body["instances"]
            raw = (
                {k: [row[k] for row in rows] for k in specs}
                if isinstance(rows[0], dict)
                else {next(iter(specs)): rows}
            )
        else:
            raise ValueError("Missing 'inputs' or 'instances' key")
        missing = set(specs) - set(raw)
        if missing:
            raise ValueError(f"Missing inputs: {sorted(missing)}")
        tensors = {k: tf.constant(np.asarray(raw[k]), dtype=specs[k].dtype) for k in specs}
        out = {k: v.numpy().tolist() for k, v in fn(**tensors).items()}
        if columnar:
            return {"outputs": next(iter(out.values())) if len(out) == 1 else out}
        n = len(next(iter(out.values())))
        if len(out) == 1:
            return {"predictions": next(iter(out.values()))}
        return {"predictions": [{k: v[i] for k, v in out.items()} for i in range(n)]}


@contextlib.contextmanager
def running_stub(export_dir: str | None = None, model_name: str = "fsn", versions=None, states=None):
    stub = TFServingStub(export_dir, model_name, versions=versions, states=states)
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.shutdown()
        stub.server_close()
