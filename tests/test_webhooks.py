"""The healing loop's webhooks: delivered to a real receiver on loopback, retried, bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.healing.ledger_records import LedgerRecord
from mlwarden.sidecar.healing.slack_messages import slack_body
from mlwarden.sidecar.healing.webhook_delivery import WebhookResult
from mlwarden.sidecar.healing.webhook_redaction import redact_url
from mlwarden.sidecar.healing.webhooks import WebhookSender
from mlwarden.sidecar.resilience.retry import ExponentialJitterBackoff
from tests.servers import ServedApp, free_port, serve_app

# --- a receiver that records requests and fails on demand -----------------------------------


@dataclass
class Received:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An ASGI app: answers each request with the next planned behaviour, then 200.

    Behaviours: ``200``, ``400``, ``503``, ``(503, "retry-after value")``, ``"hang"`` (no
    answer until the client goes away, at most ``hang_s``).
    """

    plan: list[Any] = field(default_factory=list)
    hang_s: float = 3.0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        with self.lock:
            self.requests.append(
                Received(
                    scope["path"],
                    scope["query_string"].decode(),
                    {k.decode(): v.decode() for k, v in scope["headers"]},
                    body,
                    time.monotonic(),
                )
            )
            behaviour = self.plan.pop(0) if self.plan else 200
        if behaviour == "hang":
            # the next message is http.disconnect, once the client times out
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receive(), self.hang_s)
            return
        status, retry_after = behaviour if isinstance(behaviour, tuple) else (behaviour, None)
        headers = [(b"content-type", b"text/plain")]
        if retry_after is not None:
            headers.append((b"retry-after", retry_after.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"no"})


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def served(receiver: Receiver) -> Iterator[ServedApp]:
    with serve_app(receiver, lifespan="off", timeout_graceful_shutdown=1) as app:
        yield app


class MaxJitter(random.Random):
    """Full jitter pinned to its ceiling, so that backoff waits are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class SleepRecorder:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def small_backoff(base: float = 0.01, cap: float = 0.05) -> ExponentialJitterBackoff:
    return ExponentialJitterBackoff(
        base_interval_s=base, multiplier=2.0, max_interval_s=cap, random=MaxJitter()
    )


def deliver(sender: WebhookSender, *calls: tuple[str, str, dict], close_s: float = 10.0) -> None:
    """Start ``sender``, queue ``calls`` and close it, waiting for the queue to drain."""

    async def main() -> None:
        sender.start()
        for name, url, body in calls:
            assert sender.send(name, url, body)
        await sender.aclose(timeout_s=close_s)

    asyncio.run(main())


def make_sender(**kwargs: Any) -> tuple[WebhookSender, list[WebhookResult]]:
    results: list[WebhookResult] = []
    kwargs.setdefault("backoff", small_backoff())
    kwargs.setdefault("sleep", SleepRecorder())
    return WebhookSender(on_result=results.append, **kwargs), results


# --- delivery ---------------------------------------------------------------------------------


def test_delivers_json_on_the_first_try(served: ServedApp, receiver: Receiver) -> None:
    sender, results = make_sender()
    body = {"model": "churn", "reason": "drift", "psi": 0.31, "labels": ["a", "ü"]}
    deliver(sender, ("retrain", f"{served.url}/hooks/retrain", body))

    [req] = receiver.requests
    assert req.path == "/hooks/retrain"
    assert json.loads(req.body) == body
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"] == "mlwarden-sidecar"
    assert len(req.headers["x-mlwarden-delivery-id"]) == 32
    [result] = results
    assert (result.name, result.ok, result.attempts, result.status, result.error) == (
        "retrain",
        True,
        1,
        200,
        None,
    )
    assert result.url == f"{served.url}/hooks/retrain"
    assert result.duration_s >= 0
    assert sender.stats() == {
        "sent_ok": 1,
        "failed": 0,
        "shed": 0,
        "rejected": 0,
        "dropped": 0,
        "retries": 0,
        "queued": 0,
    }


def test_extra_headers_are_sent_but_cannot_replace_the_senders_own(
    served: ServedApp, receiver: Receiver
) -> None:
    sender, _ = make_sender()

    async def main() -> None:
        sender.start()
        assert sender.send(
            "h",
            served.url,
            {},
            headers={
                "authorization": "Bearer t0ken",
                "Content-Type": "text/plain",
                "User-Agent": "evil",
            },
        )
        await sender.aclose()

    asyncio.run(main())
    [req] = receiver.requests
    assert req.headers["authorization"] == "Bearer t0ken"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"] == "mlwarden-sidecar"


def test_retries_503_with_backoff_then_succeeds(served: ServedApp, receiver: Receiver) -> None:
    receiver.plan = [503, 503]
    sleep = SleepRecorder()
    sender, results = make_sender(sleep=sleep, backoff=small_backoff(0.01, 0.05))
    deliver(sender, ("retrain", served.url, {"n": 1}))

    [result] = results
    assert (result.ok, result.attempts, result.status) == (True, 3, 200)
    assert sleep.waits == [0.01, 0.02]  # the backoff's ceilings after attempts 1 and 2
    ids = {r.headers["x-mlwarden-delivery-id"] for r in receiver.requests}
    assert len(receiver.requests) == 3 and len(ids) == 1  # one delivery, receivers can dedupe
    assert sender.stats()["retries"] == 2


def test_real_waits_between_attempts_follow_the_backoff(
    served: ServedApp, receiver: Receiver
) -> None:
    receiver.plan = [503, 503]
    sender, results = make_sender(sleep=asyncio.sleep, backoff=small_backoff(0.1, 1.0))
    deliver(sender, ("retrain", served.url, {}))

    assert results[0].ok
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2
    assert results[0].duration_s >= 0.3


def test_retry_after_stretches_the_wait_up_to_the_backoff_cap(
    served: ServedApp, receiver: Receiver
) -> None:
    receiver.plan = [(503, "1"), (429, "120")]
    sleep = SleepRecorder()
    sender, results = make_sender(sleep=sleep, backoff=small_backoff(0.01, 5.0))
    deliver(sender, ("retrain", served.url, {}))

    assert results[0].ok and results[0].attempts == 3
    assert sleep.waits == [1.0, 5.0]  # Retry-After: 1 honoured; 120 capped at 5


def test_retry_after_as_http_date(served: ServedApp, receiver: Receiver) -> None:
    receiver.plan = [(503, "Wed, 01 Jan 2025 12:00:02 GMT")]
    sleep = SleepRecorder()
    sender, results = make_sender(
        sleep=sleep, backoff=small_backoff(0.01, 5.0), wall_clock=lambda: 1735732800.0
    )  # 12:00:00
    deliver(sender, ("retrain", served.url, {}))

    assert results[0].ok
    assert sleep.waits == [2.0]


def test_400_is_final(served: ServedApp, receiver: Receiver) -> None:
    receiver.plan = [400]
    sleep = SleepRecorder()
    sender, results = make_sender(sleep=sleep)
    deliver(sender, ("retrain", served.url, {}))

    assert len(receiver.requests) == 1
    assert sleep.waits == []
    [result] = results
    assert (result.ok, result.attempts, result.status, result.error) == (
        False,
        1,
        400,
        "status 400",
    )
    assert sender.stats()["failed"] == 1


def test_gives_up_after_max_attempts_of_503(served: ServedApp, receiver: Receiver) -> None:
    receiver.plan = [503] * 10
    sender, results = make_sender(max_attempts=3)
    deliver(sender, ("retrain", served.url, {}))

    assert len(receiver.requests) == 3
    assert (results[0].ok, results[0].attempts, results[0].error) == (False, 3, "status 503")


def test_a_hanging_receiver_times_out_each_attempt_then_fails(
    served: ServedApp, receiver: Receiver
) -> None:
    receiver.plan = ["hang", "hang"]
    sender, results = make_sender(timeout_s=0.2, max_attempts=2)
    started = time.monotonic()
    deliver(sender, ("retrain", served.url, {}))

    elapsed = time.monotonic() - started
    assert len(receiver.requests) == 2
    [result] = results
    assert (result.ok, result.attempts, result.status, result.error) == (False, 2, None, "timeout")
    assert 0.4 <= elapsed < 2.0


def test_connect_errors_are_retried() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    sleep = SleepRecorder()
    sender, results = make_sender(max_attempts=3, sleep=sleep)
    deliver(sender, ("retrain", url, {}))

    assert (results[0].ok, results[0].attempts, results[0].error) == (False, 3, "connect_error")
    assert len(sleep.waits) == 2


def test_deliveries_go_out_in_order(served: ServedApp, receiver: Receiver) -> None:
    sender, results = make_sender()
    deliver(sender, *[(f"n{i}", served.url, {"i": i}) for i in range(5)])

    assert [json.loads(r.body)["i"] for r in receiver.requests] == [0, 1, 2, 3, 4]
    assert [r.name for r in results] == ["n0", "n1", "n2", "n3", "n4"]


def test_sends_queued_before_start_go_out_once_started(
    served: ServedApp, receiver: Receiver
) -> None:
    sender, results = make_sender()

    async def main() -> None:
        assert sender.send("early", served.url, {"early": True})
        sender.start()
        await sender.aclose()

    asyncio.run(main())
    assert results[0].ok and json.loads(receiver.requests[0].body) == {"early": True}


def test_a_failing_on_result_hook_is_logged_and_delivery_goes_on(
    served: ServedApp, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(result: WebhookResult) -> None:
        raise RuntimeError("hook bug")

    sender = WebhookSender(on_result=hook, backoff=small_backoff())
    with caplog.at_level(logging.ERROR, logger="mlwarden.sidecar.webhooks"):
        deliver(sender, ("a", served.url, {}), ("b", served.url, {}))

    assert len(receiver.requests) == 2
    assert sender.stats()["sent_ok"] == 2
    assert caplog.text.count("on_result hook failed") == 2


# --- send() refuses, never raises ----------------------------------------------------------


def test_a_full_queue_sheds_and_counts() -> None:
    sender, results = make_sender(max_queue=2)

    async def main() -> None:
        assert sender.send("a", "http://127.0.0.1:9/x", {})
        assert sender.send("b", "http://127.0.0.1:9/x", {})
        assert sender.send("c", "http://127.0.0.1:9/x", {}) is False
        assert sender.stats()["shed"] == 1 and sender.stats()["queued"] == 2
        await sender.aclose(timeout_s=0)  # never started: both are dropped

    asyncio.run(main())
    assert sender.stats()["dropped"] == 2
    assert [(r.name, r.error, r.attempts) for r in results] == [
        ("a", "dropped", 0),
        ("b", "dropped", 0),
    ]


@pytest.mark.parametrize(
    ("url", "body", "headers"),
    [
        ("http://127.0.0.1:9/x", {"blob": "x" * (256 * 1024)}, None),  # too large
        ("http://127.0.0.1:9/x", {"when": object()}, None),  # not JSON
        ("http://127.0.0.1:9/x", ["not", "a", "mapping"], None),
        ("ftp://127.0.0.1/x", {}, None),
        ("http:///no-host", {}, None),
        ("http://127.0.0.1:99999/x", {}, None),
        ("http://127.0.0.1:9/x", {}, {"bad\nname": "v"}),
        ("http://127.0.0.1:9/x", {}, {"x-token": "line\nbreak"}),
    ],
)
def test_send_refuses_bad_input_without_raising(url: str, body: Any, headers: Any) -> None:
    sender, _ = make_sender()
    assert sender.send("bad", url, body, headers=headers) is False
    assert sender.stats()["rejected"] == 1 and sender.stats()["queued"] == 0
    asyncio.run(sender.aclose())


def test_body_limit_is_on_the_encoded_bytes() -> None:
    sender, _ = make_sender(max_body_bytes=20)
    assert sender.send("ok", "http://127.0.0.1:9/x", {"a": "x" * 10})  # 16 bytes
    assert not sender.send("big", "http://127.0.0.1:9/x", {"a": "ü" * 8})  # 24 bytes
    asyncio.run(sender.aclose(timeout_s=0))


def test_non_finite_floats_are_sent_as_strings(served: ServedApp, receiver: Receiver) -> None:
    sender, _ = make_sender()
    deliver(sender, ("s", served.url, {"psi": float("nan"), "max": float("inf")}))
    assert json.loads(receiver.requests[0].body) == {"psi": "nan", "max": "inf"}


def test_the_body_is_encoded_at_send_time(served: ServedApp, receiver: Receiver) -> None:
    sender, _ = make_sender()
    body: dict[str, Any] = {"v": 1}

    async def main() -> None:
        assert sender.send("s", served.url, body)
        body["v"] = 2
        sender.start()
        await sender.aclose()

    asyncio.run(main())
    assert json.loads(receiver.requests[0].body) == {"v": 1}


def test_send_after_close_is_shed() -> None:
    sender, _ = make_sender()
    asyncio.run(sender.aclose())
    assert sender.send("late", "http://127.0.0.1:9/x", {}) is False
    assert sender.stats()["shed"] == 1


def test_send_from_another_thread_wakes_the_worker(served: ServedApp, receiver: Receiver) -> None:
    sender, results = make_sender()

    async def main() -> None:
        sender.start()
        await asyncio.sleep(0.05)  # the worker is idle, waiting
        thread = threading.Thread(target=sender.send, args=("t", served.url, {"t": 1}))
        thread.start()
        thread.join()
        for _ in range(200):
            if results:
                break
            await asyncio.sleep(0.01)
        await sender.aclose()

    asyncio.run(main())
    assert results and results[0].ok


# --- shutdown -------------------------------------------------------------------------------


def test_aclose_with_pending_deliveries_is_bounded(served: ServedApp, receiver: Receiver) -> None:
    receiver.plan = ["hang"] * 5
    sender, results = make_sender(timeout_s=5.0)

    async def main() -> float:
        sender.start()
        for i in range(3):
            assert sender.send(f"n{i}", served.url, {})
        for _ in range(200):  # until the first one is in flight
            if receiver.requests:
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await sender.aclose(timeout_s=0.3)
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert 0.3 <= elapsed < 1.5
    stats = sender.stats()
    assert (stats["dropped"], stats["sent_ok"], stats["failed"], stats["queued"]) == (3, 0, 0, 0)
    assert [(r.name, r.ok, r.error, r.attempts) for r in results] == [
        ("n0", False, "dropped", 1),
        ("n1", False, "dropped", 0),
        ("n2", False, "dropped", 0),
    ]


def test_aclose_leaves_a_given_client_open(served: ServedApp) -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as client:
            sender = WebhookSender(client=client)
            sender.start()
            assert sender.send("s", served.url, {})
            await sender.aclose()
            assert not client.is_closed
            assert (await client.get(served.url)).status_code == 200

    asyncio.run(main())


def test_aclose_twice_is_harmless() -> None:
    async def main() -> None:
        sender = WebhookSender()
        sender.start()
        await sender.aclose()
        await sender.aclose()

    asyncio.run(main())


def test_options_are_validated_all_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        WebhookSender(
            max_queue=0,
            timeout_s=-1,
            max_attempts=1.5,  # type: ignore[arg-type]
            retry_statuses=[503, 700],
        )
    message = str(info.value)
    for key in ("max_queue", "timeout_s", "max_attempts", "retry_statuses"):
        assert key in message


# --- secrets in URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        (
            "https://user:pa55@example.com/api/retrain?token=s3cret#frag",
            "https://example.com/api/retrain",
        ),
        (
            "https://hooks.slack.com/services/T0AB12CD3/B0CD45EF6/aBcDeFgHiJkLmNoPqRsTuVwX",
            "https://hooks.slack.com/services/T0AB12CD3/B0CD45EF6/***",
        ),
        (
            "http://127.0.0.1:8080/hooks/retraining-pipeline",
            "http://127.0.0.1:8080/hooks/retraining-pipeline",
        ),
        ("http://[::1]:81/x/0123456789abcdef0123456789abcdef01234567", "http://[::1]:81/x/***"),
        ("http://host:notaport/x", "<invalid url>"),
    ],
)
def test_redact_url(url: str, logged: str) -> None:
    assert redact_url(url) == logged


def test_a_url_with_credentials_is_never_logged_in_full(
    served: ServedApp, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.plan = [503, 400]
    secret_url = served.url.replace("http://", "http://alice:pa55w0rd@") + "/hook?token=s3cret"
    sender, results = make_sender()
    with caplog.at_level(logging.DEBUG):
        deliver(sender, ("retrain", secret_url, {}))

    assert receiver.requests[0].query == "token=s3cret"  # the receiver did get the secret
    assert results[0].url == f"{served.url}/hook"
    assert "HTTP Request: POST" in caplog.text  # httpx's own line, redacted
    assert "failed after 2 attempts" in caplog.text
    for secret in ("s3cret", "pa55w0rd", "alice"):
        assert secret not in caplog.text
        assert secret not in repr(results)


def test_the_httpx_log_redaction_leaves_other_requests_alone(
    served: ServedApp, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        sender = WebhookSender()  # installs the filter
        async with httpx.AsyncClient() as client:
            await client.get(f"{served.url}/other?page=2")
        await sender.aclose()

    with caplog.at_level(logging.INFO, logger="httpx"):
        asyncio.run(main())
    assert f"{served.url}/other?page=2" in caplog.text


# --- Slack ----------------------------------------------------------------------------------


def _ledger_entries(n: int) -> list[dict[str, Any]]:
    return [
        LedgerRecord(
            action="rollback",
            target=f"canary-{i}",
            outcome="ok",
            at=1735732800.0 + i,
            reason="errors",
        ).to_dict()
        for i in range(n)
    ]


def _texts(body: dict[str, Any]) -> list[str]:
    out = [body["text"]]
    for block in body["blocks"]:
        if "text" in block:
            out.append(block["text"]["text"])
        out.extend(f["text"] for f in block.get("fields", []))
    return out


def test_slack_body_shape() -> None:
    body = slack_body(
        title="canary rolled back",
        severity="critical",
        policy="canary-errors",
        reason="error rate 12% > 5% for 60s",
        signals={"error_rate": 0.123456, "breaker_open": True, "p99_latency_s": None},
        actions=["rollback canary", "open breaker"],
        recent=_ledger_entries(3),
    )
    body = json.loads(json.dumps(body))  # plain JSON
    assert set(body) == {"text", "blocks"}
    assert "canary rolled back" in body["text"] and "critical" in body["text"]
    header, summary, actions, recent = body["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "canary rolled back", "emoji": True},
    }
    assert summary["type"] == "section"
    assert summary["text"] == {
        "type": "mrkdwn",
        "text": "*Reason*\nerror rate 12% > 5% for 60s".replace(">", "&gt;"),
    }
    assert [f["text"] for f in summary["fields"]] == [
        "*Severity*\ncritical",
        "*Policy*\ncanary-errors",
        "*error_rate*\n0.1235",
        "*breaker_open*\ntrue",
        "*p99_latency_s*\n-",
    ]
    assert all(f["type"] == "mrkdwn" for f in summary["fields"])
    assert actions["type"] == "section"
    assert actions["text"]["text"] == "*Actions taken*\n• rollback canary\n• open breaker"
    assert recent["type"] == "section"
    lines = recent["text"]["text"].splitlines()
    assert lines[0] == "*Recent healing actions*"
    assert lines[1] == "`2025-01-01T12:00:00.000000Z` rollback → canary-0: ok"
    assert len(lines) == 4


def test_slack_body_escapes_every_text() -> None:
    evil = "<!channel> & <https://evil.example|click>"
    body = slack_body(
        title=evil,
        severity=evil,
        policy=evil,
        reason=evil,
        signals={evil: evil},
        actions=[evil],
        recent=[{"time": evil, "action": evil, "target": evil, "outcome": evil}],
    )
    for text in _texts(body):
        assert "<" not in text and ">" not in text.replace("→", "")
        assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in text


def test_slack_body_respects_slacks_limits() -> None:
    body = slack_body(
        title="t&" * 500,
        severity="critical",
        policy="p" * 5000,
        reason="r<" * 5000,
        signals={f"signal_{i}": "v" * 3000 for i in range(30)},
        actions=[f"action {i} " + "a" * 400 for i in range(50)],
        recent=_ledger_entries(25),
    )
    header, summary, actions, recent = body["blocks"]
    assert len(header["text"]["text"]) <= 150
    assert header["text"]["text"].endswith("…")
    assert "&am…" not in header["text"]["text"]  # never cut inside an escape
    assert len(summary["text"]["text"]) <= 3000
    assert len(summary["fields"]) == 10
    assert summary["fields"][-1]["text"] == "*…*\n23 more signals"
    assert all(len(f["text"]) <= 2000 for f in summary["fields"])
    assert len(actions["text"]["text"]) <= 3000
    assert actions["text"]["text"].endswith("more_")
    assert len(recent["text"]["text"].splitlines()) == 11  # the title and 10 entries
    assert len(body["text"]) <= 3000


def test_slack_body_without_recent_entries_has_no_recent_block() -> None:
    body = slack_body(
        title="t", severity="warning", policy="p", reason="", signals={}, actions=[], recent=[]
    )
    assert [b["type"] for b in body["blocks"]] == ["header", "section", "section"]
    assert body["blocks"][2]["text"]["text"] == "*Actions taken*\nnone"


def test_a_real_receiver_gets_exactly_the_slack_json(served: ServedApp, receiver: Receiver) -> None:
    body = slack_body(
        title="drift on churn-v3 <high>",
        severity="warning",
        policy="drift",
        reason="psi 0.4 & rising",
        signals={"psi": 0.4},
        actions=["retrain"],
        recent=_ledger_entries(2),
    )
    sender, results = make_sender()
    deliver(sender, ("escalation", f"{served.url}/services/T1/B2/xyz", body))

    assert results[0].ok
    assert json.loads(receiver.requests[0].body) == body
