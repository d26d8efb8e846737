"""A one-shot loopback redirect receiver for native-app OAuth (RFC 8252 §7.3).

Listens on 127.0.0.1 on a free port, answers the browser's redirect with a short page, and hands the
query (`code`, `state`, `error`) to a callback. h11 parses the HTTP so nothing here is hand-rolled.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import Awaitable, Callable
from html import escape

import h11

CALLBACK_PATH = "/callback"
OnRedirect = Callable[[dict[str, str]], Awaitable[tuple[bool, str]]]

_PAGE = """<!doctype html><meta charset="utf-8"><title>alter-agents</title>
<body style="font-family:sans-serif;margin:3em"><h1>{title}</h1><p>{detail}</p></body>"""


_CONFIRM = """<!doctype html><meta charset="utf-8"><title>alter-agents</title>
<body style="font-family:sans-serif;margin:3em"><h1>Link a {provider} account?</h1>
<p>An assistant acting for <b>{owner}</b> asked to link a {provider} account to <b>{owner}</b>'s grants.
Continue only if you are {owner} and you asked for this: whoever signs in next links <i>their</i> {provider}
account for {owner}. This link works once and expires in {minutes} minutes.</p>
<form method="post" action="{action}"><input type="hidden" name="alter_confirm" value="yes">
<button type="submit">Continue to {provider}</button></form></body>"""


def page(title: str, detail: str) -> str:
    return _PAGE.format(title=escape(title), detail=escape(detail))


def confirm_page(provider: str, owner: str, minutes: int, action: str) -> str:
    """The one-time confirm step of a server-hosted connect link, naming who started it."""
    return _CONFIRM.format(provider=escape(provider), owner=escape(owner), minutes=minutes, action=escape(action))


class LoopbackReceiver:
    """Serves `GET /callback` until one redirect was handled, then closes."""

    def __init__(self, on_redirect: OnRedirect) -> None:
        self._on_redirect = on_redirect
        self._server: asyncio.Server | None = None
        self.done = asyncio.Event()
        self.port = 0

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}{CALLBACK_PATH}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, host="127.0.0.1", port=0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request = await asyncio.wait_for(self._read_request(conn, reader), timeout=10)
            status, body = await self._respond_to(request)
        except (TimeoutError, h11.RemoteProtocolError, ConnectionError):
            status, body = 400, page("Bad request", "This address only receives an OAuth redirect.")
        data = body.encode()
        headers = [("content-type", "text/html; charset=utf-8"), ("content-length", str(len(data))),
                   ("connection", "close")]
        with contextlib.suppress(Exception):
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=data)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Request):
                return event
            raise h11.RemoteProtocolError("no request")

    async def _respond_to(self, request: h11.Request) -> tuple[int, str]:
        target = urllib.parse.urlsplit(request.target.decode("ascii", errors="replace"))
        if request.method != b"GET" or target.path != CALLBACK_PATH:
            return 404, page("Not found", "This address only receives an OAuth redirect.")
        query = dict(urllib.parse.parse_qsl(target.query))
        if self.done.is_set():
            return 409, page("Already done", "This sign-in was already completed; close this window.")
        finished, message = await self._on_redirect(query)
        if not finished:
            return 400, page("Sign-in not completed", message)
        self.done.set()
        return 200, page("alter-agents", message)
