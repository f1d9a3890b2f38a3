"""Direct delivery: faust's consumer hands each fetched record to the streams without four asyncio tasks.

Faust's drain loop (``faust.transport.consumer.Consumer._drain_messages``, faust-streaming 0.15) delivers every
fetched record with ``await self.wait_first(callback(message), self.suspend_flow.wait())``: mode's ``wait_first``
wraps the delivery, the flow-suspension wait and the service's stopped and crashed events in four asyncio tasks
and an ``asyncio.wait``, so that a delivery blocked on a full stream buffer gives way when a rebalance suspends
the flow. In a profile of an ingest worker that wrapping was its largest single cost (``Consumer._drain_messages``
≈ 20 % of its CPU), and since it yields to the event loop after every record, natural batching
(:mod:`adrec_stream.stream.batches`) finds at most a record or two waiting: measured, the two together raise one
worker's ingest rate 1.8-2.1x (two workers 1.6-1.9x), natural batching alone not at all, and direct delivery
alone (with faust's 5 ms take) lowered it (docs/benchmarks.md, "Ingest").

With ``consumer.direct_delivery`` (default on), :func:`install_direct_delivery` makes that one call await the
delivery itself while the consumer's flow is active, and keeps faust's own ``wait_first`` everywhere else (flow
suspended, any other caller, apps not registered with :func:`register_direct_delivery`). Nothing is forked:
the drain loop, its offset and gap bookkeeping and the conductor's delivery are faust's.

Why awaiting the delivery directly is safe (faust-streaming 0.15.3, as read in its code):

- The delivery (the conductor's ``on_message``) first waits for the app's flow control, which faust suspends and
  resumes together with the consumer's flow (``consumer.stop_flow()`` next to ``flow_control.suspend()``); the
  direct path is only taken while the consumer's flow is active, so that wait does not block it.
- A full stream buffer does not block the drain loop in a plain put: the conductor puts in tasks of its own and
  waits for them with ``asyncio.wait``. When a rebalance clears the buffers (``flow_control.clear()``, right after
  suspending the flow) those puts are cancelled, ``asyncio.wait`` returns and the delivery ends normally without
  the record - as with faust's ``wait_first``, which gives the delivery up when the flow is suspended. The
  record's offset is fetched again after the rebalance (nothing was acknowledged for it).
- Faust's ``wait_first`` also watches the consumer's stopped and crashed events; the direct path does not need
  to: stopping the fetcher cancels the drain loop's task, and the cancellation reaches the awaited delivery.
- The only other wait in a delivery is faust's buffered ``send_soon`` producer (``wait_until_producer_ebb``),
  which this project does not use (records are sent with the producer directly).
"""

from __future__ import annotations

import weakref
from typing import Any

#: set once :func:`install_direct_delivery` patched faust's consumer (once per process)
_INSTALLED = False

#: The apps whose consumers deliver directly (apps not registered keep faust's behaviour).
_APPS: weakref.WeakSet[Any] = weakref.WeakSet()


def register_direct_delivery(app: Any) -> None:
    """Make the consumer of the faust ``app`` deliver fetched records directly (see the module docstring)."""
    _APPS.add(app)


def _waits_on(coro: Any, event: Any) -> bool:
    """Whether ``coro`` is a not-yet-started ``event.wait()`` coroutine (the drain loop's second argument)."""
    if getattr(coro, "cr_code", None) is not type(event).wait.__code__:
        return False  # checked first: cheaper than reading the frame's locals, on every fetched record
    frame = coro.cr_frame
    return frame is not None and frame.f_locals.get("self") is event


def install_direct_delivery() -> None:
    """Patch faust's consumer class once per process; the behaviour is per app (:func:`register_direct_delivery`).

    The patched ``Consumer.wait_first(delivery, suspend_flow.wait())`` of a registered app whose flow is active
    awaits ``delivery`` and returns faust's ``WaitResults([delivery], [result], stopped=False)`` - what faust's
    own ``wait_first`` returns when the delivery finishes first. Every other call goes to faust's ``wait_first``.
    """
    global _INSTALLED
    if _INSTALLED:
        return
    from faust.transport.consumer import Consumer  # noqa: PLC0415
    from mode.services import WaitResults  # noqa: PLC0415

    orig_wait_first = Consumer.wait_first

    async def wait_first(self, *coros, timeout=None):  # type: ignore[no-untyped-def]
        if (timeout is None and len(coros) == 2 and self.flow_active and self.app in _APPS
                and _waits_on(coros[1], self.suspend_flow)):
            coros[1].close()  # never started: closing it is all its cleanup
            result = await coros[0]
            return WaitResults([coros[0]], [result], False)
        return await orig_wait_first(self, *coros, timeout=timeout)

    Consumer.wait_first = wait_first
    _INSTALLED = True
