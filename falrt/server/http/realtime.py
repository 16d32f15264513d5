"""Realtime sessions over a WebSocket: fal's `wss://HOST/{owner}/{app}/realtime` and the
endpoint's own path `wss://HOST/{owner}/{app}/{path}`.

One socket is one session of a realtime endpoint (`Scheduler.open_realtime`), the same
session `Queue.Realtime` opens over gRPC, with the same rules:

- **Frames.** A text frame is one JSON input (content type application/json); a binary
  frame one msgpack input (application/msgpack). The bytes go to the runner as they came
  (a text frame as its UTF-8 bytes). The runner answers in the kind the caller last wrote,
  and each output goes back as it came: JSON as a text frame, msgpack as a binary frame.
- **Auth.** The app's auth mode (`Authenticator.check_app`), with the key from the
  `Authorization: Key KEY_ID:SECRET` header, or, for browsers (which cannot set headers
  on a WebSocket), from the query parameter fal's clients put their token in,
  `fal_jwt_token=KEY_ID:SECRET`. Its value is blanked in the request before the socket
  is accepted, because the ASGI server logs the accepted URL. `max_buffering` is accepted
  and ignored: falrt never drops inputs, it slows the sender down.
- **Backpressure.** An input is read from the socket only while the session has credit
  (the runner's buffer, `session.credit`); while it has none the socket is not read, the
  server's receive buffer fills, and TCP slows the caller down.
- **Ends.** The caller closing the socket, or the socket breaking, abandons the session
  (dropped from the queue, or ended by its runner, whose slot is freed). It is noticed at
  the next read or write of the socket: while the session waits for a runner, the socket
  is read ahead (up to the runner's buffer of inputs, held until it starts) for that.
  When the session ends on the server, an error is sent as fal's error frame (a text
  frame `{"type": "x-fal-error", "error": ERROR_TYPE, "reason": MESSAGE}`) and the
  socket is closed with a code for its kind (`close_code`) and the reason
  "ERROR_TYPE: MESSAGE" (cut to the 123 bytes a close frame holds); a session that ends
  without an error closes with 1000.

Everything runs on the server's event loop; a session's two tasks (outputs out, inputs
in) belong to its socket's handler and end with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import urlencode

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from falrt import errors
from falrt.sdk.codec import JSON, MSGPACK
from falrt.sdk.endpoints import EndpointKind
from falrt.server.http.errors import STATUS_BY_TYPE
from falrt.server.http.gateway import Gateway
from falrt.server.queue.scheduler import Scheduler
from falrt.server.state.apps import AppState
from falrt.server.state.work import REALTIME_INPUT_BUFFER, RealtimeSession
from falrt.store.records import Outcome

log = logging.getLogger(__name__)

TOKEN_PARAM = "fal_jwt_token"  # where fal's clients put a realtime token
REALTIME_PATH = "/realtime"  # fal's realtime URL: the app's realtime endpoint
CLOSE_REASON_BYTES = 123  # the most a close frame's reason holds (RFC 6455 5.5)
# WebSocket close codes (RFC 6455 7.4.1 and the IANA registry).
NORMAL, POLICY, TOO_BIG, SERVER_ERROR, TRY_AGAIN_LATER = 1000, 1008, 1009, 1011, 1013
_GONE = (WebSocketDisconnect, WebSocketDisconnected)


def routes(gateway: Gateway) -> list[BaseRoute]:
    """The WebSocket routes of realtime endpoints. They match WebSocket requests only, so
    they share their paths with the direct API's POST routes."""

    async def session(websocket: WebSocket) -> None:
        await _serve(gateway, websocket)

    return [WebSocketRoute("/{owner}/{app}", session),
            WebSocketRoute("/{owner}/{app}/{path:path}", session)]


def close_code(error_type: str) -> int:
    """The close code of a session that ended with `error_type`: 1008 for a refused key or
    another fault of the caller, 1009 for an input too large, 1013 (try again later) for an
    overloaded server, 1011 for a failure of the server or the app."""
    status = STATUS_BY_TYPE.get(error_type, 500)
    if status == 413:
        return TOO_BIG
    if status in (429, 503):
        return TRY_AGAIN_LATER
    return POLICY if status < 500 else SERVER_ERROR


def close_reason(error_type: str, message: str) -> str:
    """"ERROR_TYPE: MESSAGE", cut to what a close frame holds (on a character boundary)."""
    reason = f"{error_type}: {message}".encode()[:CLOSE_REASON_BYTES]
    return reason.decode(errors="ignore")


async def _serve(gateway: Gateway, websocket: WebSocket) -> None:
    authorization = _authorization(websocket)
    await websocket.accept()
    try:
        session = await _open(gateway, websocket, authorization)
    except errors.FalrtError as exc:
        await _fail(websocket, exc.error_type, exc.message)
        return
    except Exception:
        log.exception("opening a realtime session on %s failed", websocket.url.path)
        await _fail(websocket, errors.InternalError.error_type, "the session could not open")
        return
    await _run(gateway.scheduler, websocket, session)


def _authorization(websocket: WebSocket) -> str:
    """The caller's `Authorization` value: the header, else the query's token as a key.
    Blanks the token in the request's query string, which the ASGI server logs."""
    header = websocket.headers.get("authorization", "")
    token = websocket.query_params.get(TOKEN_PARAM, "")
    if TOKEN_PARAM in websocket.query_params:
        kept = [(k, "REDACTED" if k == TOKEN_PARAM else v)
                for k, v in websocket.query_params.multi_items()]
        websocket.scope["query_string"] = urlencode(kept).encode()
    if header or not token:
        return header
    return token if token[:4].lower() == "key " else f"Key {token}"


async def _open(gateway: Gateway, websocket: WebSocket, authorization: str) -> RealtimeSession:
    """The session the socket asks for, once its caller may call the app. Raises
    UnauthenticatedError, PermissionDeniedError, NotFoundError or InvalidArgumentError."""
    owner, name = websocket.path_params["owner"], websocket.path_params["app"]
    caller = await gateway.caller({"authorization": authorization} if authorization else {})
    gateway.authenticator.check_app(caller, name)
    path = "/" + str(websocket.path_params.get("path", "")).strip("/")
    app = gateway.apps.get(name) if owner == gateway.settings.owner else None
    if app is not None and path == REALTIME_PATH and path not in app.paths:
        path = _realtime_endpoint(app)
    return gateway.scheduler.open_realtime(f"{owner}/{name}", path)


def _realtime_endpoint(app: AppState) -> str:
    """The path `/{owner}/{app}/realtime` stands for in an app with no `/realtime`
    endpoint: its only realtime endpoint. Raises NotFoundError or InvalidArgumentError."""
    paths = sorted(e.path for e in app.revision.endpoints
                   if e.kind == EndpointKind.REALTIME.number)
    if len(paths) == 1:
        return paths[0]
    if not paths:
        raise errors.NotFoundError(f"app {app.name!r} has no realtime endpoint")
    raise errors.InvalidArgumentError(
        f"app {app.name!r} has several realtime endpoints ({', '.join(paths)}): connect to "
        "the endpoint's own path, /OWNER/APP/PATH")


async def _run(scheduler: Scheduler, websocket: WebSocket, session: RealtimeSession) -> None:
    """Runs the session until it ends (then closes the socket as it ended) or its caller
    goes away (then abandons it). Cancelling this (the server stops) abandons it too."""
    loop = asyncio.get_running_loop()
    outputs = loop.create_task(_send_outputs(websocket, session))
    inputs = loop.create_task(_pump(scheduler, websocket, session))
    ended = False
    try:
        await asyncio.wait((outputs, inputs), return_when=asyncio.FIRST_COMPLETED)
        ended = outputs.done() and not outputs.cancelled() and outputs.exception() is None
    finally:
        inputs.cancel()
        outputs.cancel()
        await asyncio.wait((outputs, inputs))
        if not ended:
            scheduler.abandon(session)
    failed = [exc for task in (outputs, inputs) if not task.cancelled()
              and (exc := task.exception()) is not None and not isinstance(exc, _GONE)]
    for exc in failed:  # a fault of falrt: the session was abandoned, the socket is closed
        log.error("realtime session %s failed", session.request_id, exc_info=exc)
    if ended:
        await _close(websocket, session.done.result())
    elif failed:
        await _fail(websocket, errors.InternalError.error_type, "the session failed in falrt")


async def _send_outputs(websocket: WebSocket, session: RealtimeSession) -> None:
    """Sends each output as it comes, until the session ends. Raises WebSocketDisconnect
    when the caller is gone."""
    assert session.partials is not None
    while (output := await session.partials.get()) is not None:
        data, content_type = output
        if content_type == MSGPACK:
            await websocket.send({"type": "websocket.send", "bytes": data})
        else:
            await websocket.send({"type": "websocket.send", "text": data.decode(errors="replace")})


async def _pump(scheduler: Scheduler, websocket: WebSocket, session: RealtimeSession) -> None:
    """Forwards the caller's inputs once the session has a runner; returns when the caller
    closes the socket. Reads nothing while the runner's buffer is full (backpressure)."""
    held, reading = await _read_while_queued(websocket, session)
    try:
        if held is None:
            return
        for data, content_type in held:
            await session.credit.acquire()
            scheduler.realtime_input(session, data, content_type)
        while True:
            await session.credit.acquire()
            message = await reading if reading is not None else await websocket.receive()
            reading = None
            if message["type"] == "websocket.disconnect":
                return
            scheduler.realtime_input(session, *_payload(message))
    finally:
        if reading is not None:
            reading.cancel()


async def _read_while_queued(
    websocket: WebSocket, session: RealtimeSession
) -> tuple[list[tuple[bytes, str]] | None, asyncio.Task[Message] | None]:
    """Reads inputs while the session waits for a runner, so that a caller who leaves is
    noticed (and the session dropped from the queue) at once, as on gRPC; at most as many
    as the runner's buffer takes (then nothing more is read until the session starts).
    Returns them (None: the caller left) and a read still under way when it started."""
    loop = asyncio.get_running_loop()
    started = loop.create_task(session.started.wait())
    held: list[tuple[bytes, str]] = []
    reading: asyncio.Task[Message] | None = None
    try:
        while not started.done() and len(held) < REALTIME_INPUT_BUFFER:
            reading = loop.create_task(websocket.receive())
            await asyncio.wait((reading, started), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                break  # the session started; the read goes on in _pump
            message, reading = reading.result(), None
            if message["type"] == "websocket.disconnect":
                return None, None
            held.append(_payload(message))
        await started
    except BaseException:
        if reading is not None:
            reading.cancel()
        raise
    finally:
        started.cancel()
    return held, reading


def _payload(message: Message) -> tuple[bytes, str]:
    """An input frame's bytes and content type: text is JSON, binary is msgpack."""
    text = message.get("text")
    if text is not None:
        return text.encode(), JSON
    return message.get("bytes") or b"", MSGPACK


async def _close(websocket: WebSocket, outcome: Outcome) -> None:
    if outcome.error is None:
        with contextlib.suppress(*_GONE):
            await websocket.close(NORMAL)
        return
    await _fail(websocket, outcome.error.error_type, outcome.error.message)


async def _fail(websocket: WebSocket, error_type: str, message: str) -> None:
    """fal's error frame, then the close frame with the error's code and reason."""
    frame = json.dumps({"type": "x-fal-error", "error": error_type, "reason": message})
    with contextlib.suppress(*_GONE):
        await websocket.send_text(frame)
        await websocket.close(close_code(error_type), close_reason(error_type, message))
