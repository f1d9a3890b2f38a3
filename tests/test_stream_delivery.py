"""Direct delivery of fetched records (:mod:`adrec_stream.stream.delivery`): the patched ``Consumer.wait_first``.

Each case calls the patched method the way faust's drain loop does (``wait_first(callback(message),
self.suspend_flow.wait())``) on a consumer stand-in holding the attributes it reads; faust's own ``wait_first``
(the fallback) runs on the same stand-in. The whole path runs in every pipeline and reliability test (on by
default).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.transport.consumer import Consumer

from adrec_stream.stream.delivery import install_direct_delivery, register_direct_delivery


class App:
    """A weak-referenceable stand-in for a faust app."""


def _consumer(app: App, *, flow_active: bool = True) -> SimpleNamespace:
    return SimpleNamespace(app=app, flow_active=flow_active, suspend_flow=asyncio.Event(), _stopped=asyncio.Event(),
                           _crashed=asyncio.Event(), loop=asyncio.get_running_loop())


async def _deliver(consumer: SimpleNamespace, second=None) -> tuple[bool, object]:
    """(whether the delivery ran in the caller's own task, what wait_first returned)."""
    caller = asyncio.current_task()
    seen = {}

    async def delivery() -> str:
        seen["task"] = asyncio.current_task()
        await asyncio.sleep(0)
        return "delivered"

    wait = consumer.suspend_flow.wait() if second is None else second
    res = await Consumer.wait_first(consumer, delivery(), wait)
    return seen["task"] is caller, res


def test_a_registered_app_with_active_flow_awaits_the_delivery_in_its_own_task():
    install_direct_delivery()

    async def run():
        app = App()
        register_direct_delivery(app)
        consumer = _consumer(app)
        same_task, res = await _deliver(consumer)
        return same_task, res

    same_task, res = asyncio.run(run())
    assert same_task  # no task wrapped the delivery
    assert res.results == ["delivered"] and res.stopped is False and len(res.done) == 1


def test_faust_wait_first_still_runs_when_flow_is_suspended_unregistered_or_called_otherwise():
    install_direct_delivery()

    async def run():
        registered, other = App(), App()
        register_direct_delivery(registered)
        suspended = _consumer(registered, flow_active=False)
        unregistered = _consumer(other)
        not_the_drain_loop = _consumer(registered)
        return [await _deliver(suspended), await _deliver(unregistered),
                await _deliver(not_the_drain_loop, second=asyncio.sleep(1))]

    for same_task, res in asyncio.run(run()):
        assert not same_task  # faust's wait_first ran the delivery in a task of its own
        assert res.results[0] == "delivered" and res.stopped is False


def test_faust_drain_loop_still_makes_the_call_direct_delivery_recognises():
    """If a faust upgrade changes the drain loop's delivery call, direct delivery would silently stop engaging."""
    import inspect

    source = inspect.getsource(Consumer._drain_messages)
    assert "self.wait_first(" in source and "callback(message), self.suspend_flow.wait()" in source
