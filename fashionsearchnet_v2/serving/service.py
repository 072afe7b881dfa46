"""The search service on HTTP: the core of `serving.searcher` as a FastAPI app (JSON API and a page).

    searcher = Searcher(export.ExportedModel("exports/synthetic/1"), SearchIndex.load("indexes/gallery.npz"))
    app = create_app(searcher, max_upload_bytes=10 * 2**20)   # uvicorn runs it
    # or over a `live.LiveIndex(searcher, path, rebuild)`: the index is swapped when its file is rewritten

Endpoints: GET / (the page), /healthz, /vocabulary, /items, /items/{id}, /images/{id}; POST /search. Their
request and answer formats, the batching of concurrent requests and every error status are in
docs/serving.md. `Searcher`, `RequestError`, `decode_upload` and the limits are re-exported from
`serving.searcher`, where they are defined.
"""

import base64
import binascii
import json
import os

from fashionsearchnet_v2.serving.searcher import (  # noqa: F401  (re-exported: the service's API)
    DEFAULT_GATHER_MS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_TOP_K,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_TOP_K,
    Batcher,
    RequestError,
    Searcher,
    decode_upload,
)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


# ----------------------------------------------------------------------------------------------------
# Request parsing


def split_pair(text: str, vocabulary: dict | None = None) -> tuple[str, str, str]:
    """ "attribute=value" -> (attribute, "=", value), or ("", "", "") without an "=".

    At the first "=", unless the text starts with a known attribute name that holds "=" itself (with
    `vocabulary`, {name: values}): then after that name, so every attribute can be set by name (the page
    sends `set=NAME=VALUE`). The longest such name wins."""
    for name in sorted((n for n in vocabulary or () if "=" in n), key=len, reverse=True):
        rest = text.lstrip()
        if rest.startswith(name) and rest[len(name) :].lstrip().startswith("="):
            return name, "=", rest[len(name) :].lstrip()[1:]
    name, sep, value = text.partition("=")
    return (name, sep, value) if sep else ("", "", "")


def _pairs(values, field: str, what: str, vocabulary: dict | None, most: int | None, why: str):
    """The list forms of `field` -> [(attribute, value)]: "a=v" strings or {"attribute", "value"} objects;
    at most `most` of them (400 naming `why` beyond that, before any is read)."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        raise RequestError(
            400, f"'{field}' must be an object {{attribute: value}} or a list of 'attribute=value'"
        )
    if most is not None and len(values) > most:
        raise RequestError(400, f"'{field}' lists {len(values):,} {what}s, more than {most} ({why})")
    out = []
    for v in values:
        if isinstance(v, dict) and "attribute" in v and "value" in v:
            out.append((str(v["attribute"]), str(v["value"])))
            continue
        name, sep, value = split_pair(str(v), vocabulary)
        if not sep or not name.strip() or not value.strip():
            raise RequestError(400, f"{what} {v!r} is not ATTRIBUTE=VALUE")
        out.append((name, value))
    return out


def parse_set(values, vocabulary: dict | None = None) -> list[tuple[str, str]]:
    """Changes as a request gives them -> [(attribute, value)].

    Accepted: {"color": "black"}; ["color=black", ...]; [{"attribute": "color", "value": "black"}, ...];
    and form fields `set=color=black` (repeated). With `vocabulary` ({attribute name: values}), more
    changes than attributes are refused before any is read, and a name holding "=" splits right
    (`split_pair`).
    """
    if values is None:
        return []
    most = None if vocabulary is None else len(vocabulary)
    why = f"the vocabulary has {most} attributes, each changed at most once"
    if isinstance(values, dict):
        if most is not None and len(values) > most:
            raise RequestError(400, f"'set' changes {len(values):,} attributes, more than {most} ({why})")
        return [(str(k), str(v)) for k, v in values.items()]
    return _pairs(values, "set", "change", vocabulary, most, why)


def parse_where(values, vocabulary: dict | None = None) -> list[tuple[str, str]]:
    """Result filters as a request gives them -> [(attribute, value)], one pair per accepted value.

    Accepted: {"category": "dress"}; {"category": ["dress", "skirt"]} (any of them); the list forms of
    `parse_set`; and form fields `where=category=dress` (repeated). With `vocabulary` ({attribute name:
    values}), a list longer than the attribute's values (or than all values, for the list forms) is
    refused before any is read.
    """
    if values is None:
        return []
    if isinstance(values, dict):
        if vocabulary is not None and len(values) > len(vocabulary):
            raise RequestError(
                400, f"'where' names {len(values):,} attributes, more than the vocabulary's {len(vocabulary)}"
            )
        out = []
        for k, v in values.items():
            listed = v if isinstance(v, list) else [v]
            if vocabulary is not None:
                known = vocabulary.get(str(k).strip())
                most = len(known) if known is not None else max(map(len, vocabulary.values()), default=0)
                if len(listed) > most:
                    raise RequestError(
                        400,
                        f"'where' lists {len(listed):,} values for {str(k)!r}, more than "
                        + (f"its {most} values" if known is not None else f"any attribute has ({most})"),
                    )
            if not listed or any(x is None or isinstance(x, (dict, list)) for x in listed):
                raise RequestError(
                    400, f"'where' {k!r} must be a value or a non-empty list of values, got {v!r}"
                )
            out.extend((str(k), str(x)) for x in listed)
        return out
    most = None if vocabulary is None else sum(map(len, vocabulary.values()))
    return _pairs(values, "where", "filter", vocabulary, most, "the attributes have that many values in all")


# ----------------------------------------------------------------------------------------------------
# The web app


def create_app(
    searcher,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    static_dir: str = STATIC_DIR,
):
    """The FastAPI app over `searcher` (a `Searcher`, or a `live.LiveIndex` whose `Searcher` is swapped when
    its index file is rewritten: each request takes the current one once); bodies over `max_upload_bytes`
    get 413."""
    from fastapi import FastAPI, Request  # the `web` extra: imported only when a service is built
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from fashionsearchnet_v2.serving import live, remote

    if isinstance(searcher, live.LiveIndex):
        live_index = searcher

        def current() -> Searcher:
            return live_index.current

        health = live_index.health
    else:

        def current() -> Searcher:
            return searcher

        health = searcher.health

    # {attribute: values} (the model's: every index it serves, reloaded ones too, was checked against it): bounds the lists of a request's `set` and `where` before they are read, and
    # splits an attribute name that holds "=" right.
    names = {a.name: a.values for a in current().vocabulary.attributes}
    app = FastAPI(
        title="FashionSearchNet-v2 search",
        description="Image retrieval with attribute manipulation: this item, but ...",
        version="1",
    )

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        reasons = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": reasons}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(remote.RemoteModelError)
    async def _remote_error(request, exc: remote.RemoteModelError):
        return JSONResponse({"error": str(exc)}, status_code=503 if exc.unreachable else 502)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        # A bug, not a bad request: JSON like every other error, nothing of the server's state (paths,
        # values) in it. Starlette raises the exception on after this answer, so uvicorn logs its traceback.
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__}); the server's log has the details"},
            status_code=500,
        )

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise RequestError(
                413, f"the request has {int(declared):,} bytes, more than the limit of {max_upload_bytes:,}"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload_bytes:
                raise RequestError(413, f"the request is larger than the limit of {max_upload_bytes:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def search_arguments(request: Request) -> dict:
        """{"image": bytes | None, "item": str | None, "changes": [...], "where": [...], "top_k": ...} from
        the body."""
        body = await read_body(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):

            async def replay():
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                form = await Request(request.scope, replay).form(
                    max_files=1, max_fields=64, max_part_size=max_upload_bytes
                )
            except StarletteHTTPException as e:
                raise RequestError(400, f"malformed form: {e.detail}") from None
            upload = form.get("image")
            image = None
            if upload is not None and not isinstance(upload, str):
                image = await upload.read()
            elif isinstance(upload, str) and upload:
                raise RequestError(400, "'image' must be a file upload (multipart/form-data)")
            item = form.get("item")
            if item is not None and not isinstance(item, str):
                raise RequestError(400, "'item' must be a text field (an item id), not a file")
            return {"image": image, "item": item or None, "changes": parse_set(form.getlist("set"), names),
                    "where": parse_where(form.getlist("where"), names),
                    "top_k": form.get("top_k", DEFAULT_TOP_K)}  # fmt: skip
        if ctype == "application/json":
            try:
                obj = json.loads(body)
            except ValueError as e:
                raise RequestError(400, f"the body is not JSON ({e})") from None
            except RecursionError:  # the standard library's parser recurses per nesting level
                raise RequestError(
                    400, "the JSON body is nested too deeply; a search is an object of flat fields"
                ) from None
            if not isinstance(obj, dict):
                raise RequestError(400, "the JSON body must be an object")
            fields = ["item", "image_base64", "set", "where", "top_k"]
            unknown = set(obj) - set(fields)
            if unknown:
                raise RequestError(400, f"unknown fields {sorted(unknown)}", valid=fields)
            image = None
            if obj.get("image_base64") is not None:
                text = str(obj["image_base64"])
                if text.startswith("data:") and ";base64," in text[:100]:  # a browser's data URL
                    text = text.split(",", 1)[1]
                try:
                    image = base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):
                    raise RequestError(400, "image_base64 is not valid base64") from None
            item = obj.get("item")
            return {"image": image, "item": None if item is None else str(item),
                    "changes": parse_set(obj.get("set"), names), "where": parse_where(obj.get("where"), names),
                    "top_k": obj.get("top_k", DEFAULT_TOP_K)}  # fmt: skip
        raise RequestError(
            415,
            f"send multipart/form-data (image upload) or application/json, not {ctype or 'no content type'!r}",
        )

    # On the event loop (async): neither blocks, and a plain `def` would wait for a worker thread behind
    # the searches that hold them all while they queue for the batcher (a busy service looked dead).
    @app.get("/healthz")
    async def healthz():
        return health()

    @app.get("/vocabulary")
    async def vocabulary():
        return current().vocabulary.to_json()

    @app.get("/items")
    def list_items(offset: int = 0, limit: int = 50):
        return current().list_items(offset, limit)

    @app.get("/items/{item_id:path}")
    def get_item(item_id: str):
        searcher = current()
        return searcher.item(searcher.row_of(item_id))

    @app.get("/images/{item_id:path}")
    def get_image(item_id: str):
        data, media = current().item_image(item_id)
        return Response(data, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    @app.post("/search")
    async def search(request: Request):
        args = await search_arguments(request)
        if (args["image"] is None) == (args["item"] is None):
            raise RequestError(400, "give exactly one query: an uploaded 'image' or an indexed 'item' id")
        searcher = current()  # one Searcher for the whole request, even if the index is swapped meanwhile
        # Cheap checks first: a bad name or top_k is refused before any decoding or model call.
        searcher.parse_changes(args["changes"])
        searcher.parse_where(args["where"])
        searcher.check_top_k(args["top_k"])

        def work() -> bytes:
            image = decode_upload(args["image"], max_pixels) if args["image"] is not None else None
            answer = searcher.search(
                image=image,
                item=args["item"],
                changes=args["changes"],
                top_k=args["top_k"],
                where=args["where"],
            )
            # Serialized here, in the worker thread, by the standard library: FastAPI's own path for a
            # returned dict (jsonable_encoder, then json.dumps) cost 2-3 ms a search on the event loop,
            # which every request shares (issue 26). The answer holds only JSON types.
            return json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()

        return Response(await run_in_threadpool(work), media_type="application/json")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(os.path.join(static_dir, "index.html"))

    app.mount("/static", StaticFiles(directory=static_dir), name="static")
    return app
