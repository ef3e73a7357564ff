"""A local mock of the OpenAI files and Batch API (``/v1/files``, ``/v1/batches``), for tests.

FastAPI app served by uvicorn in a thread of the test process (:class:`MockBatchServer`), so
tests read and steer its state directly. What it does, as the real API documents it:

* ``POST /v1/files`` (multipart ``file`` + ``purpose``) stores the upload;
  ``GET /v1/files/{id}/content`` returns it.
* ``POST /v1/batches`` checks the input file (purpose ``batch``, at most ``max_requests``
  lines and ``max_bytes`` bytes, endpoint ``/v1/chat/completions``, window ``24h``, unique
  ``custom_id``) and creates a batch in status ``validating``; ``GET /v1/batches`` lists
  batches newest first with their ``metadata``.
* ``GET /v1/batches/{id}`` moves a batch one step per poll: ``validating`` ->
  ``in_progress`` -> its end state, unless ``hold`` is set (it then stays ``in_progress``).
  The end state is taken from ``fates`` (a list popped per batch; default ``completed``):
  ``completed``, ``expired`` (the first half of the requests answered, the rest
  ``batch_expired`` lines in the error file), ``cancelled`` (same, ``batch_cancelled``) or
  ``failed`` (no files, an ``errors`` list).
* Replies are the echo of the fake chat server (``tests.llm_server._reply``) or what
  ``reply(body)`` returns; a first user
  message containing ``[batch400]`` gets an HTTP 400 line in the error file. Output lines
  are written in *reverse* input order, so a client that assumes order fails.

Counters: ``files_created``, ``batches_created``, ``retrieves``, ``answered`` (chat
requests answered inside batches).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.llm_server import _reply, free_port

TERMINAL = {"completed", "expired", "failed", "cancelled"}


@dataclass
class MockState:
    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    hold: bool = False
    #: ``chat-completions body -> str`` (default: the echo of the fake chat server)
    reply: Any = None
    fates: list[str] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    files_created: int = 0
    batches_created: int = 0
    retrieves: int = 0
    answered: int = 0
    ids: Any = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error(status: int, message: str) -> Any:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "code": None, "param": None}}, status_code=status)


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart body: name -> (filename, bytes) (stdlib email parser)."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[name] = (part.get_filename(), part.get_payload(decode=True))
    return out


def make_app(state: MockState) -> Any:
    app = FastAPI()

    def new_id(prefix: str) -> str:
        return f"{prefix}-{next(state.ids)}"

    def file_obj(f: dict[str, Any]) -> dict[str, Any]:
        return {"id": f["id"], "object": "file", "bytes": len(f["data"]), "created_at": 0,
                "filename": f["filename"], "purpose": f["purpose"], "status": "processed"}

    def add_file(data: bytes, purpose: str, filename: str) -> str:
        fid = new_id("file")
        state.files[fid] = {"id": fid, "data": data, "purpose": purpose, "filename": filename}
        return fid

    @app.post("/v1/files")
    async def create_file(request: Request) -> Any:
        form = _parse_multipart(request.headers["content-type"], await request.body())
        filename, data = form["file"]
        purpose = form["purpose"][1].decode()
        with state.lock:
            state.files_created += 1
            fid = add_file(data, purpose, filename or "upload.jsonl")
            return file_obj(state.files[fid])

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Any:
        f = state.files.get(file_id)
        if f is None:
            return _error(404, f"No such File object: {file_id}")
        return Response(f["data"], media_type="application/octet-stream")

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> Any:
        body = await request.json()
        f = state.files.get(body.get("input_file_id"))
        if f is None or f["purpose"] != "batch":
            return _error(400, "input_file_id must be an uploaded file with purpose batch")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return _error(400, "unsupported endpoint or completion_window")
        lines = [json.loads(x) for x in f["data"].splitlines() if x.strip()]
        if len(lines) > state.max_requests or len(f["data"]) > state.max_bytes:
            return _error(400, f"input file over the limits ({len(lines)} requests, "
                               f"{len(f['data'])} bytes)")
        cids = [x["custom_id"] for x in lines]
        if len(set(cids)) != len(cids):
            return _error(400, "duplicate custom_id in the input file")
        with state.lock:
            state.batches_created += 1
            bid = new_id("batch")
            state.batches[bid] = {
                "id": bid, "object": "batch", "endpoint": body["endpoint"],
                "input_file_id": f["id"], "completion_window": "24h", "status": "validating",
                "created_at": int(time.time()) + state.batches_created,  # distinct, ordered
                "metadata": body.get("metadata"), "output_file_id": None,
                "error_file_id": None, "errors": None,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "_fate": state.fates.pop(0) if state.fates else "completed",
                "_lines": lines}
            return _public(state.batches[bid])

    @app.get("/v1/batches")
    async def list_batches(limit: int = 20) -> Any:
        data = sorted(state.batches.values(), key=lambda b: -b["created_at"])[:limit]
        return {"object": "list", "data": [_public(b) for b in data], "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}

    @app.get("/v1/batches/{batch_id}")
    async def retrieve_batch(batch_id: str) -> Any:
        with state.lock:
            state.retrieves += 1
            b = state.batches.get(batch_id)
            if b is None:
                return _error(404, f"No batch found with id '{batch_id}'.")
            if b["status"] == "validating":
                b["status"] = "in_progress"
            elif b["status"] == "in_progress" and not state.hold:
                finish(b)
            return _public(b)

    def finish(b: dict[str, Any]) -> None:
        fate, lines = b["_fate"], b["_lines"]
        b["status"] = fate
        if fate == "failed":
            b["errors"] = {"object": "list", "data": [
                {"code": "invalid_request", "message": "mock: the batch failed validation",
                 "param": None, "line": None}]}
            return
        n_done = len(lines) if fate == "completed" else len(lines) // 2
        out, err = [], []
        for i, line in enumerate(lines):
            cid = line["custom_id"]
            if i >= n_done:
                err.append({"id": f"req-{i}", "custom_id": cid, "response": None,
                            "error": {"code": f"batch_{fate}",
                                      "message": f"This request could not be executed "
                                                 f"before the batch was {fate}."}})
                continue
            users = [m["content"] for m in line["body"]["messages"] if m["role"] == "user"]
            if "[batch400]" in users[0]:
                err.append({"id": f"req-{i}", "custom_id": cid, "error": None, "response": {
                    "status_code": 400, "request_id": f"r{i}",
                    "body": {"error": {"message": "mock: invalid max_tokens",
                                       "type": "invalid_request_error"}}}})
                continue
            state.answered += 1
            text = state.reply(line["body"]) if state.reply else "echo: " + users[-1]
            out.append({"id": f"req-{i}", "custom_id": cid, "error": None, "response": {
                "status_code": 200, "request_id": f"r{i}",
                "body": _reply(line["body"], text, "stop")}})
        out.reverse()  # results are unordered: prove the client matches by custom_id
        if out:
            b["output_file_id"] = add_file(_jsonl(out), "batch_output", "output.jsonl")
        if err:
            b["error_file_id"] = add_file(_jsonl(err), "batch_output", "errors.jsonl")
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}

    return app


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _public(b: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in b.items() if not k.startswith("_")}


class MockBatchServer:
    """Context manager: the mock on 127.0.0.1 in a background thread; ``state`` is live."""

    def __init__(self, **state: Any) -> None:
        self.state = MockState(**state)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        import uvicorn

        config = uvicorn.Config(make_app(self.state), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("mock Batch API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
