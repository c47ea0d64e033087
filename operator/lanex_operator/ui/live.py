"""The live layer: one watcher of the data source, its changes fanned out to every open page as
server-sent events.

The source is scanned (files) or drained (API watches) by ONE task for the whole server, in a
worker thread so the event loop never blocks on disk or network; each open page holds a queue
that receives every change, and its event stream picks what it shows. A page too slow to read its
queue loses the oldest changes first, which is harmless: every event carries the newest state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from lanex_operator.ui.source import Change, Source

QUEUE_SIZE = 1000
HEARTBEAT_S = 15.0  # a comment line keeps proxies and the browser from closing an idle stream


class Hub:
    """Fans changes out to the queues of the open pages."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Change]] = set()

    @property
    def listeners(self) -> int:
        return len(self._queues)

    @contextlib.contextmanager
    def subscription(self):
        queue: asyncio.Queue[Change] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def publish(self, change: Change) -> None:
        for queue in list(self._queues):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(change)


async def watch(source: Source, hub: Hub, interval_s: float) -> None:
    """Run for the server's lifetime: scan the source, publish what changed."""
    while True:
        changes = await asyncio.to_thread(source.scan, interval_s)
        for change in changes:
            hub.publish(change)


def event(name: str, data: Any) -> bytes:
    """One server-sent event; the data is JSON (one line: json.dumps escapes newlines)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream(queue: "asyncio.Queue[Change]", first: list[bytes], on_change) -> AsyncIterator[bytes]:
    """An event stream: `first`, then whatever `on_change(changes)` makes of the changes waiting (a
    list of events, possibly empty: one burst of changes is answered once), with a heartbeat when
    nothing happens."""
    for chunk in first:
        yield chunk
    while True:
        try:
            change: Change = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
        except asyncio.TimeoutError:
            yield b": heartbeat\n\n"
            continue
        changes = [change]
        while not queue.empty():
            changes.append(queue.get_nowait())
        for chunk in await on_change(changes):
            yield chunk
