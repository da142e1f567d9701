"""How the local runner names and calls a Lambda handler, and how a handler hosts its clients.

* The checkpoint lease names the whole handler (``module:function``) by default, so two
  handlers called ``handler`` in different modules never share checkpoints; ``consumer``
  overrides it; the short names are the same handlers as their full names.
* speedlayer's handlers carry an async twin (used by the runner on its own loop, concurrently)
  and a close; ``LambdaHost`` builds the clients once per loop, lets threads take turns on the
  AWS entry point, and closes what it holds.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar

import pytest

import processors.kinesis_to_dynamodb as to_dynamodb
import processors.kinesis_to_kafka as to_kafka
from processors.kinesis_events import LambdaHost, async_entry
from processors.lambda_runner import LambdaRunner, load_handler, stream_name
from speedlayer.errors import RunnerError


def test_the_default_lease_names_module_and_function() -> None:
    ddb = load_handler("processors.kinesis_to_dynamodb:handler")
    kafka = load_handler("processors.kinesis_to_kafka:handler")
    assert ddb.target == "processors.kinesis_to_dynamodb:handler"
    assert kafka.target == "processors.kinesis_to_kafka:handler"
    assert load_handler("kinesis_to_kafka").target == kafka.target  # the short name
    assert load_handler("processors.kinesis_to_kafka.handler").target == kafka.target
    assert (ddb.name, kafka.name) == ("kinesis_to_dynamodb", "kinesis_to_kafka")
    leases = {
        LambdaRunner(f.handler, "s", function_name=f.name, consumer=f.target).lease
        for f in (ddb, kafka)
    }
    assert leases == {
        "lambda:processors.kinesis_to_dynamodb:handler/s",
        "lambda:processors.kinesis_to_kafka:handler/s",
    }
    mine = LambdaRunner(kafka.handler, "s", function_name=kafka.name, consumer="replay-2")
    assert mine.lease == "lambda:replay-2/s"
    with pytest.raises(RunnerError, match="no Lambda handler"):
        load_handler("processors.kinesis_to_kafka:nothing")


def test_the_runner_calls_the_async_twin_and_closes_the_clients() -> None:
    for module in (to_dynamodb, to_kafka):
        twin = async_entry(module.handler)
        assert twin == (module.async_handler, module.aclose)
        loaded = load_handler(f"{module.__name__}:handler")
        assert loaded.handler is module.async_handler and loaded.aclose is module.aclose
    plain = load_handler(f"{__name__}:plain_handler")
    assert plain.handler is plain_handler and plain.aclose is None
    assert plain.name == "tests-unit-processors-test_lambda_hosting-plain_handler"


def plain_handler(event: dict[str, Any], context: Any) -> None:
    return None


def test_streams_get_the_services_prefix_once() -> None:
    assert stream_name("market-data-15m", "") == "market-data-15m"
    assert stream_name("market-data-15m", "dev-") == "dev-market-data-15m"
    assert stream_name("dev-market-data-15m", "dev-") == "dev-market-data-15m"


class Clients:
    """A resource that counts its builds and closes."""

    built: ClassVar[int] = 0
    stopped: ClassVar[list[Clients]] = []

    def __init__(self) -> None:
        Clients.built += 1
        self.loop = asyncio.get_running_loop()


async def build() -> Clients:
    await asyncio.sleep(0.01)
    return Clients()


async def stop(clients: Clients) -> None:
    assert asyncio.get_running_loop() is clients.loop  # closed on the loop it lives on
    Clients.stopped.append(clients)


@pytest.fixture(autouse=True)
def counters() -> None:
    Clients.built = 0
    Clients.stopped = []


async def test_invoke_builds_once_on_the_running_loop_and_aclose_closes() -> None:
    host: LambdaHost[Clients] = LambdaHost(build, stop)

    async def use(clients: Clients) -> Clients:
        await asyncio.sleep(0.01)
        return clients

    got = await asyncio.gather(*(host.invoke(use) for _ in range(8)))  # concurrent, cold
    assert Clients.built == 1 and len({id(c) for c in got}) == 1
    assert got[0].loop is asyncio.get_running_loop()
    await host.aclose()
    assert Clients.stopped == [got[0]]
    await host.invoke(use)  # a new environment after the close
    assert Clients.built == 2
    await host.aclose()


def test_run_lets_threads_take_turns_on_its_private_loop() -> None:
    host: LambdaHost[Clients] = LambdaHost(build, stop)
    active, peak, errors = [0], [0], []
    guard = threading.Lock()

    async def use(clients: Clients) -> None:
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0.01)
        with guard:
            active[0] -= 1

    def worker() -> None:
        try:
            for _ in range(5):
                host.run(use)
        except Exception as exc:  # "This event loop is already running" before
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == [] and peak[0] == 1 and Clients.built == 1
    host.close()
    assert len(Clients.stopped) == 1


def test_aclose_from_a_runner_loop_closes_clients_of_the_private_loop() -> None:
    host: LambdaHost[Clients] = LambdaHost(build, stop)

    async def use(clients: Clients) -> None:
        return None

    host.run(use)  # the AWS entry point, from this thread
    asyncio.run(host.aclose())  # then the close, from another loop
    assert Clients.built == 1 and len(Clients.stopped) == 1


def test_close_at_exit_closes_what_is_still_open() -> None:
    host: LambdaHost[Clients] = LambdaHost(build, stop)

    async def use(clients: Clients) -> None:
        return None

    host.run(use)
    host._close_at_exit()  # what atexit runs
    assert len(Clients.stopped) == 1
    host._close_at_exit()  # twice is harmless
    assert len(Clients.stopped) == 1


async def test_clients_of_a_closed_loop_are_rebuilt() -> None:
    host: LambdaHost[Clients] = LambdaHost(build, stop)

    async def use(clients: Clients) -> Clients:
        return clients

    def elsewhere() -> Clients:
        return asyncio.run(host.invoke(use))  # built on a loop that is then closed

    first = await asyncio.to_thread(elsewhere)
    second = await host.invoke(use)
    assert second is not first and second.loop is asyncio.get_running_loop()
    await host.aclose()
