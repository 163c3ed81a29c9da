"""Shadow traffic against real model servers on loopback and a real ``UpstreamPool``.

A primary and a shadow model are small raw ASGI apps served by uvicorn; each answers what its
``Model`` holder says (a body and a status), or hangs until released. The test plays the
proxy's part: ``offer()`` the copy, forward the request to the primary with its own pool, then
report the primary's answer to the copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.predictions import Predictions
from mlwarden.sidecar.config import ShadowTrafficConfig
from mlwarden.sidecar.routing.shadow import ShadowCopy, ShadowMirror
from mlwarden.sidecar.routing.shadow_comparison import compare_predictions
from mlwarden.sidecar.routing.shadow_exchange import SHADOW_HEADER
from mlwarden.sidecar.routing.shadow_metrics import ShadowMetrics
from mlwarden.sidecar.upstream import UpstreamPool
from tests.doubles import FakeClock
from tests.servers import LOOPBACK, free_port, serve_app

T = TypeVar("T")
TARGET = "candidate"
HANG_S = 10.0  # the longest a hanging model waits for its release: longer than any test
JSON_HEADERS = [(b"content-type", b"application/json")]
REQUEST = b'{"features": {"x": 1.5}}'


class Model:
    """What a model server answers; the test thread sets it, the server thread reads it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.reply: bytes = json.dumps({"predictions": ["cat"]}).encode()
        self.status = 200
        self.hang = False
        self.hits = 0
        self.seen: list[tuple[str, str, dict[bytes, bytes], bytes]] = []
        self.release = threading.Event()

    def answer(
        self, predictions: Any = None, *, status: int = 200, raw: bytes | None = None
    ) -> None:
        self.reply = raw if raw is not None else json.dumps({"predictions": predictions}).encode()
        self.status = status

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.hits += 1
        self.seen.append((scope["method"], scope["path"], dict(scope["headers"]), body))
        if self.hang:
            release, deadline = self.release, time.monotonic() + HANG_S
            while not release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        reply = self.reply
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(reply)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": reply})


PRIMARY = Model()
SHADOW = Model()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    with serve_app(PRIMARY, lifespan="off") as primary, serve_app(SHADOW, lifespan="off") as shadow:
        yield primary.url, shadow.url


@pytest.fixture(autouse=True)
def fresh_models() -> Iterator[None]:
    PRIMARY.reset()
    SHADOW.reset()
    yield
    PRIMARY.release.set()
    SHADOW.release.set()


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"target": TARGET, **labels})


def requests(registry: CollectorRegistry, outcome: str) -> float | None:
    return sample(registry, "mlwarden_shadow_requests_total", outcome=outcome)


def comparisons(registry: CollectorRegistry, result: str) -> float | None:
    return sample(registry, "mlwarden_shadow_comparisons_total", result=result)


def uncompared(registry: CollectorRegistry, reason: str) -> float | None:
    return sample(registry, "mlwarden_shadow_uncompared_total", reason=reason)


def block(**keys: Any) -> ShadowTrafficConfig:
    """The ``shadow:`` block for the test's target: every copy sent, 2 s each."""
    return ShadowTrafficConfig(
        **{"target": TARGET, "sample_percent": 100, "timeout_s": 2.0, **keys}
    )


def options(**overrides: Any) -> dict[str, Any]:
    """A mirror's keyword arguments: :func:`block`'s values (the block's defaults), then
    ``overrides`` (block keys or the mirror's own bounds such as ``min_comparisons``)."""
    b = block()
    return {**{f.name: getattr(b, f.name) for f in dataclasses.fields(b)}, **overrides}


async def forward(
    primary: UpstreamPool, mirror: ShadowMirror, body: bytes = REQUEST
) -> ShadowCopy | None:
    """What the proxy does: offer a copy, forward to the primary, report its answer."""
    copy = mirror.offer("POST", b"/predict?v=1", JSON_HEADERS, body)
    response = await primary.request("POST", b"/predict?v=1", JSON_HEADERS, body, timeout_s=5)
    try:
        answer = await response.read()
    finally:
        await response.aclose()
    if copy is not None:
        copy.primary_answered(response.status, answer)
    return copy


async def settled(mirror: ShadowMirror) -> None:
    async with asyncio.timeout(10):
        await mirror.join()


async def wait_for(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


def compare_once(
    servers: tuple[str, str], **overrides: Any
) -> tuple[CollectorRegistry, ShadowCopy | None, dict[str, Any]]:
    """One request through primary and shadow; the registry, the copy and the snapshot."""
    primary_url, shadow_url = servers
    registry = CollectorRegistry()

    async def scenario() -> tuple[ShadowCopy | None, dict[str, Any]]:
        async with (
            UpstreamPool(primary_url) as primary,
            UpstreamPool(shadow_url) as pool,
            ShadowMirror(pool, **options(**overrides), metrics=ShadowMetrics(registry)) as mirror,
        ):
            copy = await forward(primary, mirror)
            await settled(mirror)
            return copy, mirror.snapshot()

    copy, snapshot = run(scenario)
    return registry, copy, snapshot


# --------------------------------------------------------------------------- sending


def test_copy_is_sent_without_waiting_for_the_primary(servers: tuple[str, str]) -> None:
    _, shadow_url = servers

    async def scenario() -> tuple[str | None, str | None, dict[str, Any]]:
        async with UpstreamPool(shadow_url) as pool, ShadowMirror(pool, **options()) as mirror:
            headers = [
                *JSON_HEADERS,
                (b"connection", b"x-hop"),
                (b"x-hop", b"1"),
                (b"x-request-id", b"abc"),
            ]
            copy = mirror.offer("POST", b"/predict?v=1", headers, REQUEST)
            assert copy is not None
            await settled(mirror)  # the primary never reports
            return copy.outcome, copy.result, mirror.snapshot()

    outcome, result, snapshot = run(scenario)
    assert (outcome, result) == ("ok", None)  # sent, its answer held for the primary's
    assert snapshot["awaiting_primary"] == 1
    method, path, headers, body = SHADOW.seen[0]
    assert (method, path, body) == ("POST", "/predict", REQUEST)
    assert headers[SHADOW_HEADER] == b"1"
    assert headers[b"x-request-id"] == b"abc"
    assert b"x-hop" not in headers


# --------------------------------------------------------------------------- comparing


def test_same_class_counts_agree(servers: tuple[str, str]) -> None:
    PRIMARY.answer(["cat", "dog"])
    SHADOW.answer(["cat", "dog"])
    registry, copy, snapshot = compare_once(servers)
    assert copy is not None and copy.result == "agree"
    assert comparisons(registry, "agree") == 1
    assert comparisons(registry, "disagree") == 0
    assert requests(registry, "ok") == 1
    assert sample(registry, "mlwarden_shadow_duration_seconds_count") == 1
    assert snapshot["comparisons"] == {"agree": 1, "disagree": 0, "incomparable": 0}


def test_different_class_counts_disagree(servers: tuple[str, str]) -> None:
    PRIMARY.answer(["cat", "dog"])
    SHADOW.answer(["cat", "cow"])
    registry, copy, snapshot = compare_once(servers)
    assert copy is not None and copy.result == "disagree"
    assert comparisons(registry, "disagree") == 1
    assert comparisons(registry, "agree") == 0
    assert snapshot["last_disagreement"] == {
        "primary": {"classes": ["cat", "dog"], "count": 2},
        "shadow": {"classes": ["cat", "cow"], "count": 2},
    }


@pytest.mark.parametrize(
    ("primary", "shadow", "result"),
    [
        (10.0, 10.009, "agree"),  # within abs_tol
        (10.0, 10.5, "disagree"),  # outside both
        (1000.0, 1000.9, "agree"),  # outside abs_tol, within rel_tol (1 = 0.001 * 1000)
        (1000.0, 1001.5, "disagree"),
    ],
)
def test_numeric_predictions_agree_within_tolerance(
    servers: tuple[str, str], primary: float, shadow: float, result: str
) -> None:
    PRIMARY.answer([primary])
    SHADOW.answer([shadow])
    registry, copy, _ = compare_once(servers, abs_tol=0.01, rel_tol=0.001)
    assert copy is not None and copy.result == result
    assert comparisons(registry, result) == 1


@pytest.mark.parametrize(
    ("primary", "shadow"),
    [
        ({"predictions": [1.0, 2.0]}, {"predictions": [1.0]}),  # different lengths
        ({"predictions": ["cat"]}, {"predictions": [1.0]}),  # class on one side only
        ({"predictions": ["cat"]}, "not json at all"),  # unparseable
        ({"predictions": ["cat"]}, {"something": "else", "n": []}),  # no prediction in it
    ],
)
def test_unreadable_or_mismatched_answers_are_incomparable(
    servers: tuple[str, str], primary: Any, shadow: Any
) -> None:
    PRIMARY.answer(raw=json.dumps(primary).encode())
    SHADOW.answer(raw=shadow.encode() if isinstance(shadow, str) else json.dumps(shadow).encode())
    registry, copy, snapshot = compare_once(servers)
    assert copy is not None and copy.result == "incomparable"
    assert comparisons(registry, "incomparable") == 1
    assert snapshot["agreement_rate"] is None  # incomparable answers are not in the ratio


@pytest.mark.parametrize(
    ("primary_status", "shadow_status", "result"),
    [
        (422, 422, "agree"),  # both refuse the input alike
        (200, 422, "disagree"),
        (404, 200, "disagree"),
    ],
)
def test_error_statuses_below_500_are_compared_by_status(
    servers: tuple[str, str], primary_status: int, shadow_status: int, result: str
) -> None:
    PRIMARY.answer(["cat"], status=primary_status)
    SHADOW.answer(["cat"], status=shadow_status)
    registry, copy, _ = compare_once(servers)
    assert copy is not None and copy.outcome == "ok" and copy.result == result
    assert comparisons(registry, result) == 1


def test_batches_agree_only_when_every_element_agrees() -> None:
    def values(*v: float) -> Predictions:
        return Predictions(list(v), [], [])

    def classes(*c: str) -> Predictions:
        return Predictions([], list(c), [])

    tol = {"abs_tol": 0.01, "rel_tol": 0.0}
    assert compare_predictions(values(1, 2, 3), values(1, 2.005, 3), **tol) == "agree"
    assert compare_predictions(values(1, 2, 3), values(1, 2.5, 3), **tol) == "disagree"
    assert compare_predictions(classes("a", "b"), classes("a", "c"), **tol) == "disagree"
    assert compare_predictions(values(1, 2), values(1, 2, 3), **tol) == "incomparable"
    assert compare_predictions(Predictions([], [], [0.9]), classes("a"), **tol) == "incomparable"
    # Confidences are not the answer: they differ, the classes agree.
    assert (
        compare_predictions(Predictions([], ["a"], [0.9]), Predictions([], ["a"], [0.6]), **tol)
        == "agree"
    )


def test_primary_answer_reported_after_the_shadow_is_still_compared(
    servers: tuple[str, str],
) -> None:
    _, shadow_url = servers
    registry = CollectorRegistry()

    async def scenario() -> tuple[ShadowCopy, dict[str, Any]]:
        async with (
            UpstreamPool(shadow_url) as pool,
            ShadowMirror(pool, **options(), metrics=ShadowMetrics(registry)) as mirror,
        ):
            copy = mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)
            assert copy is not None
            await settled(mirror)
            assert copy.outcome == "ok" and copy.result is None  # held for the primary
            copy.primary_answered(200, b'{"predictions": ["cat"]}')
            assert copy.result is None  # compared by the mirror, not in the caller
            await settled(mirror)
            return copy, mirror.snapshot()

    copy, snapshot = run(scenario)
    assert copy.result == "agree"
    assert comparisons(registry, "agree") == 1
    assert snapshot["awaiting_primary"] == 0


def test_primary_failure_is_counted_and_not_compared(servers: tuple[str, str]) -> None:
    _, shadow_url = servers
    registry = CollectorRegistry()

    async def scenario() -> list[ShadowCopy]:
        async with (
            UpstreamPool(shadow_url) as pool,
            ShadowMirror(pool, **options(), metrics=ShadowMetrics(registry)) as mirror,
        ):
            before = mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)
            after = mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)
            five = mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)
            assert before is not None and after is not None and five is not None
            before.primary_failed()  # before the shadow answered
            five.primary_answered(503, b'{"error": "overloaded"}')
            await settled(mirror)
            after.primary_failed()  # after
            after.primary_answered(200, b'{"predictions": ["cat"]}')  # the first report wins
            await settled(mirror)
            return [before, after, five]

    copies = run(scenario)
    assert [c.result for c in copies] == ["primary_failed"] * 3
    assert uncompared(registry, "primary_failed") == 3
    assert requests(registry, "ok") == 3
    assert sum(comparisons(registry, r) or 0 for r in ("agree", "disagree", "incomparable")) == 0


def test_oversized_shadow_answer_is_not_compared(servers: tuple[str, str]) -> None:
    SHADOW.answer(["x" * 200] * 10)
    registry, copy, _ = compare_once(servers, max_body_bytes=256)
    assert copy is not None and copy.outcome == "ok" and copy.result == "too_large"
    assert uncompared(registry, "too_large") == 1


def test_uncaptured_primary_body_is_not_compared(servers: tuple[str, str]) -> None:
    _, shadow_url = servers
    registry = CollectorRegistry()

    async def scenario() -> ShadowCopy:
        async with (
            UpstreamPool(shadow_url) as pool,
            ShadowMirror(pool, **options(), metrics=ShadowMetrics(registry)) as mirror,
        ):
            copy = mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)
            assert copy is not None
            copy.primary_answered(200, None)
            await settled(mirror)
            return copy

    assert run(scenario).result == "too_large"
    assert uncompared(registry, "too_large") == 1


# --------------------------------------------------------------------------- sampling


def test_sampling_takes_exactly_the_seeded_share(servers: tuple[str, str]) -> None:
    _, shadow_url = servers
    registry = CollectorRegistry()
    offers, seed = 400, 1234
    draw = random.Random(seed)
    expected = sum(draw.random() * 100 < 30 for _ in range(offers))
    assert 90 <= expected <= 150  # roughly 30 %

    async def scenario() -> dict[str, Any]:
        cfg = options(sample_percent=30, max_queue=offers, max_concurrent=8, max_pending=offers)
        async with (
            UpstreamPool(shadow_url, max_connections=8) as pool,
            ShadowMirror(
                pool, **cfg, metrics=ShadowMetrics(registry), rng=random.Random(seed)
            ) as mirror,
        ):
            taken = [
                mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST) for _ in range(offers)
            ]
            assert sum(c is not None for c in taken) == expected
            await settled(mirror)
            return mirror.snapshot()

    snapshot = run(scenario)
    assert snapshot["sampled"] == expected
    assert requests(registry, "ok") == expected
    assert requests(registry, "shed") == 0
    assert SHADOW.hits == expected


def test_zero_percent_sends_nothing(servers: tuple[str, str]) -> None:
    _, shadow_url = servers

    async def scenario() -> list[ShadowCopy | None]:
        async with (
            UpstreamPool(shadow_url) as pool,
            ShadowMirror(pool, **options(sample_percent=0)) as mirror,
        ):
            return [mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST) for _ in range(50)]

    assert run(scenario) == [None] * 50
    assert SHADOW.hits == 0


# --------------------------------------------------------------------------- overload, failures


def test_hanging_shadow_sheds_copies_once_workers_and_queue_are_full(
    servers: tuple[str, str],
) -> None:
    _, shadow_url = servers
    SHADOW.hang = True
    registry = CollectorRegistry()

    async def scenario() -> list[ShadowCopy | None]:
        cfg = options(max_concurrent=2, max_queue=3, timeout_s=0.3)
        async with (
            UpstreamPool(shadow_url, max_connections=2) as pool,
            ShadowMirror(pool, **cfg, metrics=ShadowMetrics(registry)) as mirror,
        ):
            first = [mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST) for _ in range(2)]
            await wait_for(lambda: mirror.in_flight == 2)
            more = [mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST) for _ in range(5)]
            assert mirror.queue_depth == 3
            assert sample(registry, "mlwarden_shadow_queue_depth") == 3
            await settled(mirror)
            return first + more

    copies = run(scenario)
    assert [c is not None for c in copies] == [True] * 5 + [False] * 2
    assert requests(registry, "shed") == 2
    assert requests(registry, "timeout") == 5
    assert uncompared(registry, "shadow_failed") == 5
    assert all(c.outcome == "timeout" for c in copies if c is not None)


def test_shadow_500_is_counted_as_an_error(servers: tuple[str, str]) -> None:
    SHADOW.answer(raw=b'{"error": "boom"}', status=500)
    registry, copy, snapshot = compare_once(servers)
    assert copy is not None and copy.outcome == "error" and copy.result == "shadow_failed"
    assert requests(registry, "error") == 1
    assert uncompared(registry, "shadow_failed") == 1
    assert snapshot["requests"]["error"] == 1


def test_refused_connection_is_counted_as_an_error_and_nothing_raised(
    servers: tuple[str, str],
) -> None:
    primary_url, _ = servers
    registry = CollectorRegistry()

    async def scenario() -> list[ShadowCopy | None]:
        async with (
            UpstreamPool(primary_url) as primary,
            UpstreamPool(f"http://{LOOPBACK}:{free_port()}") as pool,
            ShadowMirror(pool, **options(), metrics=ShadowMetrics(registry)) as mirror,
        ):
            copies = [await forward(primary, mirror) for _ in range(3)]
            await settled(mirror)
            return copies

    copies = run(scenario)
    assert all(c is not None and c.outcome == "error" for c in copies)
    assert requests(registry, "error") == 3
    assert uncompared(registry, "shadow_failed") == 3
    assert PRIMARY.hits == 3


def test_unavailable_target_sheds_copies(servers: tuple[str, str]) -> None:
    _, shadow_url = servers
    registry = CollectorRegistry()
    healthy = {TARGET: False}

    async def scenario() -> tuple[ShadowCopy | None, ShadowCopy | None]:
        async with (
            UpstreamPool(shadow_url) as pool,
            ShadowMirror(
                pool, **options(), metrics=ShadowMetrics(registry), is_available=healthy.__getitem__
            ) as mirror,
        ):
            down = mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)
            healthy[TARGET] = True
            up = mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)
            await settled(mirror)
            return down, up

    down, up = run(scenario)
    assert down is None and up is not None
    assert requests(registry, "shed") == 1
    assert requests(registry, "ok") == 1


def test_offer_never_raises(servers: tuple[str, str]) -> None:
    _, shadow_url = servers
    registry = CollectorRegistry()

    def broken(name: str) -> bool:
        raise RuntimeError("health checker bug")

    async def scenario() -> list[ShadowCopy | None]:
        async with UpstreamPool(shadow_url) as pool:
            stopped = ShadowMirror(pool, **options())  # never started
            result = [stopped.offer("POST", b"/predict", JSON_HEADERS, REQUEST)]
            async with ShadowMirror(
                pool, **options(), metrics=ShadowMetrics(registry), is_available=broken
            ) as mirror:
                result.append(mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST))
            return result

    assert run(scenario) == [None, None]
    assert requests(registry, "shed") == 1


def test_bad_request_header_fails_the_copy_only(servers: tuple[str, str]) -> None:
    _, shadow_url = servers

    async def scenario() -> ShadowCopy | None:
        async with UpstreamPool(shadow_url) as pool, ShadowMirror(pool, **options()) as mirror:
            copy = mirror.offer("POST", b"/predict", [(b"x-bad", b"a\r\nb")], REQUEST)
            await settled(mirror)
            return copy

    copy = run(scenario)
    assert copy is not None and copy.outcome == "error"
    assert SHADOW.hits == 0


# --------------------------------------------------------------------------- lifecycle


def test_aclose_drops_queued_and_in_flight_copies_and_leaves_no_task(
    servers: tuple[str, str],
) -> None:
    _, shadow_url = servers
    SHADOW.hang = True
    registry = CollectorRegistry()

    async def scenario() -> tuple[list[ShadowCopy | None], list[asyncio.Task[Any]]]:
        pool = UpstreamPool(shadow_url)
        mirror = ShadowMirror(
            pool,
            **options(max_concurrent=1, max_queue=2, timeout_s=5.0),
            metrics=ShadowMetrics(registry),
        )
        mirror.start()
        copies = [mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)]
        await wait_for(lambda: SHADOW.hits == 1)
        copies += [mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST) for _ in range(2)]
        await mirror.aclose()
        await pool.aclose()
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST) is None
        return copies, left

    copies, left = run(scenario)
    gc.collect()  # an unclosed socket would warn now (warnings are errors)
    assert left == []
    assert all(c is not None and c.result == "dropped" for c in copies)
    assert requests(registry, "dropped") == 3
    assert uncompared(registry, "dropped") == 3
    assert requests(registry, "shed") == 1  # offered after close
    assert sample(registry, "mlwarden_shadow_queue_depth") is None  # detached


def test_aclose_settles_answers_still_waiting_for_their_primary(servers: tuple[str, str]) -> None:
    _, shadow_url = servers
    registry = CollectorRegistry()

    async def scenario() -> ShadowCopy | None:
        async with (
            UpstreamPool(shadow_url) as pool,
            ShadowMirror(pool, **options(), metrics=ShadowMetrics(registry)) as mirror,
        ):
            copy = mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)
            await settled(mirror)
        return copy

    copy = run(scenario)
    assert copy is not None and copy.outcome == "ok" and copy.result == "dropped"
    assert requests(registry, "ok") == 1
    assert uncompared(registry, "dropped") == 1


def test_answers_whose_primary_never_reports_expire(servers: tuple[str, str]) -> None:
    _, shadow_url = servers
    registry = CollectorRegistry()
    clock = FakeClock()

    async def scenario() -> tuple[ShadowCopy | None, ShadowCopy | None]:
        cfg = options(primary_wait_s=30.0, max_pending=5)
        async with (
            UpstreamPool(shadow_url) as pool,
            ShadowMirror(pool, **cfg, metrics=ShadowMetrics(registry), clock=clock) as mirror,
        ):
            forgotten = mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)
            await settled(mirror)
            clock.now += 31
            later = mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST)
            await settled(mirror)  # holding `later` expires `forgotten`
            assert later is not None
            later.primary_answered(200, b'{"predictions": ["cat"]}')
            await settled(mirror)
            assert mirror.snapshot()["awaiting_primary"] == 0
            return forgotten, later

    forgotten, later = run(scenario)
    assert forgotten is not None and forgotten.result == "primary_missing"
    assert later is not None and later.result == "agree"
    assert uncompared(registry, "primary_missing") == 1


def test_at_most_max_pending_answers_wait_for_their_primary(servers: tuple[str, str]) -> None:
    _, shadow_url = servers
    registry = CollectorRegistry()

    async def scenario() -> list[str | None]:
        async with (
            UpstreamPool(shadow_url) as pool,
            ShadowMirror(
                pool, **options(max_pending=2, max_concurrent=1), metrics=ShadowMetrics(registry)
            ) as mirror,
        ):
            copies = [mirror.offer("POST", b"/predict", JSON_HEADERS, REQUEST) for _ in range(3)]
            await settled(mirror)
            assert mirror.snapshot()["awaiting_primary"] == 2
            return [c.result if c is not None else "none" for c in copies]

    assert run(scenario) == ["primary_missing", None, None]  # the oldest made room
    assert uncompared(registry, "primary_missing") == 1


# --------------------------------------------------------------------------- the signal


def test_agreement_rate_needs_min_comparisons_and_forgets_old_ones(
    servers: tuple[str, str],
) -> None:
    primary_url, shadow_url = servers
    registry = CollectorRegistry()
    clock = FakeClock()

    async def scenario() -> list[float | None]:
        cfg = options(min_comparisons=3, agreement_window=4, agreement_window_s=60.0)
        rates: list[float | None] = []
        async with (
            UpstreamPool(primary_url) as primary,
            UpstreamPool(shadow_url) as pool,
            ShadowMirror(pool, **cfg, metrics=ShadowMetrics(registry), clock=clock) as mirror,
        ):
            for reply in (["cat"], ["cat"], ["dog"], ["cat"], ["cat"], ["cat"], ["cat"]):
                SHADOW.answer(reply)
                await forward(primary, mirror)
                await settled(mirror)
                rates.append(mirror.agreement_rate())
            rates.append(sample(registry, "mlwarden_shadow_agreement_ratio"))
            clock.now += 61
            rates.append(mirror.agreement_rate())
            rates.append(sample(registry, "mlwarden_shadow_agreement_ratio"))
        return rates

    rates = run(scenario)
    # None below 3; then over the last 4 comparisons; 1.0 once the "dog" left the window;
    # the gauge reads the same; after 61 s every comparison is too old.
    assert rates == [None, None, 2 / 3, 0.75, 0.75, 0.75, 1.0, 1.0, None, None]


def test_snapshot_names_the_state_for_the_admin(servers: tuple[str, str]) -> None:
    _, _, snapshot = compare_once(servers, min_comparisons=1)
    assert snapshot["target"] == TARGET
    assert snapshot["running"] is True
    assert snapshot["requests"] == {"ok": 1, "error": 0, "timeout": 0, "shed": 0, "dropped": 0}
    assert snapshot["uncompared"] == {
        "shadow_failed": 0,
        "primary_failed": 0,
        "too_large": 0,
        "primary_missing": 0,
        "dropped": 0,
    }
    assert snapshot["agreement_rate"] == 1.0
    assert snapshot["window"]["comparisons"] == 1
    json.dumps(snapshot)  # JSON-ready


# --------------------------------------------------------------------------- configuration


def test_the_shadow_block_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        ShadowTrafficConfig(target="", sample_percent=120, max_queue=0, timeout_s=0, rel_tol=-1)
    assert len(caught.value.problems) == 5
    message = str(caught.value)
    for key in ("target", "sample_percent", "max_queue", "timeout_s", "rel_tol"):
        assert f"shadow.{key}" in message


def test_from_config_takes_the_blocks_values(servers: tuple[str, str]) -> None:
    _, shadow_url = servers

    async def scenario() -> dict[str, Any]:
        async with UpstreamPool(shadow_url) as pool:
            mirror = ShadowMirror.from_config(block(max_queue=7, max_concurrent=3), pool)
            await mirror.aclose()
            return mirror.snapshot()

    snapshot = run(scenario)
    assert (snapshot["target"], snapshot["sample_percent"]) == (TARGET, 100.0)
    assert (snapshot["max_queue"], snapshot["max_concurrent"]) == (7, 3)
    assert snapshot["window"]["min_comparisons"] == 20  # the mirror's own bound


def test_a_minimum_the_window_can_never_reach_is_refused(servers: tuple[str, str]) -> None:
    _, shadow_url = servers

    async def scenario() -> None:
        async with UpstreamPool(shadow_url) as pool:
            with pytest.raises(ValueError, match="min_comparisons"):
                ShadowMirror(pool, **options(min_comparisons=50, agreement_window=10))

    run(scenario)


def test_one_mirror_per_target_per_registry(servers: tuple[str, str]) -> None:
    _, shadow_url = servers
    metrics = ShadowMetrics(CollectorRegistry())

    async def scenario() -> None:
        async with UpstreamPool(shadow_url) as pool:
            first = ShadowMirror(pool, **options(), metrics=metrics)
            with pytest.raises(ValueError, match="already attached"):
                ShadowMirror(pool, **options(), metrics=metrics)
            await first.aclose()
            await ShadowMirror(pool, **options(), metrics=metrics).aclose()

    run(scenario)
