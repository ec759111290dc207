"""Test helpers: an in-memory Encharge that records what your code sends, no server needed.

```python
from encharge_async.testing import FakeAsyncEncharge


async def test_signup_is_tracked() -> None:
    async with FakeAsyncEncharge() as encharge:
        await signup(encharge, "jon@example.com")  # your code, given the client
        await encharge.assert_tracked("Registered user", email="jon@example.com")
```

- `EnchargeRecorder`: an `httpx` transport that records every request and answers like
  Encharge (200, or the errors you script with `fail_next`). Give it to any client as
  `transport=`; its `assert_*` methods check what was captured so far. `hold()` makes
  requests wait (in flight) until `release()`, and `wait_for_requests(n)` waits for them
  to arrive: the way to test what happens while Encharge has not answered yet.
- `FakeAsyncEncharge` / `FakeEncharge`: an `AsyncEncharge` / `Encharge` wired to a
  recorder (`.recorder`), retrying without delay, whose `assert_*` methods first wait
  (bounded) until everything queued has been delivered or given up on.

The assertions look at the events the recorder accepted (answered 2xx), once per event
however many attempts it took; failures list everything that was captured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, TypeVar

import anyio
import httpx
import sniffio
import tenacity

from ._client import AsyncEncharge
from ._stats import FlushResult
from ._sync import Encharge

__all__ = [
    "DEFAULT_ASSERT_TIMEOUT",
    "DEFAULT_WAIT_TIMEOUT",
    "TEST_WRITE_KEY",
    "CapturedRequest",
    "EnchargeRecorder",
    "FakeAsyncEncharge",
    "FakeEncharge",
]

TEST_WRITE_KEY: Final = "test-write-key"
"""The write key the fakes use unless given another one."""

DEFAULT_ASSERT_TIMEOUT: Final = 5.0
"""How long the fakes' assertions wait for the queue to drain, by default."""

DEFAULT_WAIT_TIMEOUT: Final = 5.0
"""How long `EnchargeRecorder.wait_for_requests` waits, by default."""

_MAX_LISTED = 20
_MAX_LINE = 200

_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass(frozen=True)
class CapturedRequest:
    """One request the recorder received, and the status it answered.

    `body` is the decoded JSON, `content` the raw bytes; `attempt` is 1 for the first
    request of an event, 2 for its first retry, and so on.
    """

    body: dict[str, Any]
    content: bytes
    headers: httpx.Headers
    status: int
    attempt: int

    @property
    def message_id(self) -> str:
        """The event's message id (its `Idempotency-Key` header)."""
        return str(self.headers.get("idempotency-key", ""))

    @property
    def kind(self) -> str:
        """ "track", "identify", "alias" or "group"."""
        kind = self.body.get("type")
        if kind in ("alias", "group"):
            return str(kind)
        return "identify" if self.body.get("name") == "identify" else "track"

    @property
    def name(self) -> str:
        """The event name ("identify" for an identify), or "alias" / "group"."""
        return str(self.body.get("name") or self.body.get("type") or "")

    @property
    def user(self) -> dict[str, Any]:
        """The body's `user` (an empty dict when absent)."""
        user = self.body.get("user")
        return user if isinstance(user, dict) else {}

    @property
    def properties(self) -> dict[str, Any]:
        """The body's `properties` (an empty dict when absent)."""
        properties = self.body.get("properties")
        return properties if isinstance(properties, dict) else {}

    @property
    def accepted(self) -> bool:
        """True when the recorder answered 2xx."""
        return 200 <= self.status < 300

    def describe(self) -> str:
        """One line for assertion messages: kind, name and the rest of the body."""
        rest = {k: v for k, v in self.body.items() if k not in ("name", "type")}
        label = self.kind if self.kind != "track" else f"track {self.name!r}"
        text = f"{label} {json.dumps(rest, sort_keys=True, default=str)}"
        if len(text) > _MAX_LINE:
            text = text[: _MAX_LINE - 3] + "..."
        if not self.accepted:
            text += f"  -> HTTP {self.status} (attempt {self.attempt})"
        return text


class _Wakeup:
    """An event of the running loop (asyncio or trio) that any thread can set."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        if sniffio.current_async_library() == "trio":
            import trio

            self._schedule: Callable[[Callable[[], object]], object] = (
                trio.lowlevel.current_trio_token().run_sync_soon
            )
        else:
            self._schedule = asyncio.get_running_loop().call_soon_threadsafe

    def set(self) -> None:
        # RuntimeError: that loop has ended (trio's RunFinishedError is one too); nobody waits.
        with contextlib.suppress(RuntimeError):
            self._schedule(self.event.set)


@dataclass
class _Failure:
    status: int
    events: int
    attempts: int | None
    content: bytes
    headers: dict[str, str]
    used: dict[str, int] = field(default_factory=dict)


class EnchargeRecorder(httpx.AsyncBaseTransport):
    """An in-memory Encharge Ingest API: records every request, answers 200 `{}`.

    Pass it as `transport=` to `AsyncEncharge` or `Encharge` (the fakes do that for you).
    Thread-safe: the sync client delivers from its own thread.

    `hold()` makes the requests that arrive from then on wait, unanswered (in flight for
    the client), until `release()` lets them go; `wait_for_requests(n)` waits until `n`
    requests have arrived, held ones included.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[CapturedRequest] = []
        self._attempts: dict[str, int] = {}
        self._failures: list[_Failure] = []
        self._failing: dict[str, _Failure] = {}
        # Holding: requests that arrive wait in `_held` (oldest first) unless a credit of
        # `release(n)` is left. `_received` counts arrivals, held ones included.
        self._holding = False
        self._credits = 0
        self._held: deque[_Wakeup] = deque()
        self._received = 0
        self._arrivals = threading.Condition(self._lock)
        self._waiters: list[tuple[int, _Wakeup]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Record `request` and answer it: 200 `{}`, or the failure scripted for it.

        While the recorder holds requests, wait (unanswered) until `release()` first.
        """
        content = await request.aread()
        body = json.loads(content)
        message_id = request.headers.get("idempotency-key", "")
        await self._pass_the_hold()
        with self._lock:
            attempt = self._attempts[message_id] = self._attempts.get(message_id, 0) + 1
            failure = self._failure_for(message_id)
            if failure is None:
                response = httpx.Response(200, json={})
            else:
                response = httpx.Response(
                    failure.status, content=failure.content, headers=failure.headers
                )
            self._requests.append(
                CapturedRequest(
                    body=body,
                    content=content,
                    headers=httpx.Headers(request.headers),
                    status=response.status_code,
                    attempt=attempt,
                )
            )
        return response

    def _failure_for(self, message_id: str) -> _Failure | None:
        """The scripted failure this attempt gets, if any (lock held)."""
        failure = self._failing.get(message_id)
        if failure is None:
            if not self._failures:
                return None
            failure = self._failures[0]
            failure.events -= 1
            if failure.events == 0:
                self._failures.pop(0)
            self._failing[message_id] = failure
        used = failure.used.get(message_id, 0)
        if failure.attempts is not None and used >= failure.attempts:
            return None
        failure.used[message_id] = used + 1
        return failure

    async def _pass_the_hold(self) -> None:
        """Count the arrival; while holding, wait for a release (cancellation leaves)."""
        wakeup: _Wakeup | None = None
        with self._lock:
            self._received += 1
            self._arrivals.notify_all()
            for count, waiter in self._waiters:
                if self._received >= count:
                    waiter.set()
            if self._holding:
                if self._credits:
                    self._credits -= 1
                else:
                    wakeup = _Wakeup()
                    self._held.append(wakeup)
        if wakeup is None:
            return
        try:
            await wakeup.event.wait()
        finally:
            with self._lock:
                # Cancelled while held (the client closed): no longer held.
                if wakeup in self._held:
                    self._held.remove(wakeup)

    # -- holding -------------------------------------------------------------------------

    def hold(self) -> None:
        """From now on, hold the requests that arrive: they wait, unanswered, for `release()`.

        Nothing is answered meanwhile: for the client, those events are in flight. A held
        request that the client gives up on (its `timeout`, or `aclose()`) just leaves.
        """
        with self._lock:
            self._holding = True

    def release(self, count: int | None = None) -> None:
        """Let held requests go, oldest first, and answer them as usual (`fail_next` applies).

        With `count`, exactly `count` requests go: held ones first, then the next ones to
        arrive, and the recorder goes on holding after them. Without it, every held request
        goes and the recorder stops holding (until the next `hold()`).

        Raises:
            ValueError: `count` is below 1.
        """
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._lock:
            if count is None:
                self._holding = False
                self._credits = 0
                going = list(self._held)
                self._held.clear()
            else:
                going = [self._held.popleft() for _ in range(min(count, len(self._held)))]
                self._credits += count - len(going)
        for wakeup in going:
            wakeup.set()

    @property
    def held(self) -> int:
        """How many requests are waiting for `release()` right now."""
        with self._lock:
            return len(self._held)

    @property
    def received(self) -> int:
        """How many requests arrived so far, held ones included (`clear()` resets it)."""
        with self._lock:
            return self._received

    async def wait_for_requests(self, count: int, *, timeout: float = DEFAULT_WAIT_TIMEOUT) -> int:
        """Wait until `count` requests have arrived, held ones included; return `received`.

        With `hold()`, this is how a test knows that the client has sent an event and is
        waiting for the answer. Works under asyncio and trio, whichever thread delivers.

        Raises:
            TimeoutError: fewer than `count` arrived within `timeout` seconds.
        """
        with self._lock:
            if self._received >= count:
                return self._received
            entry = (count, _Wakeup())
            self._waiters.append(entry)
        try:
            with anyio.move_on_after(timeout):
                await entry[1].event.wait()
        finally:
            with self._lock:
                self._waiters.remove(entry)
        return self._check_arrived(count, timeout)

    def wait_for_requests_blocking(
        self, count: int, *, timeout: float = DEFAULT_WAIT_TIMEOUT
    ) -> int:
        """`wait_for_requests`, for sync tests (the sync client delivers from its thread).

        Raises:
            TimeoutError: fewer than `count` arrived within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._arrivals:
            while self._received < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrivals.wait(left)
        return self._check_arrived(count, timeout)

    def _check_arrived(self, count: int, timeout: float) -> int:
        with self._lock:
            received, held = self._received, len(self._held)
        if received < count:
            raise TimeoutError(
                f"{received} of {count} requests arrived within {timeout:g}s ({held} held)"
            )
        return received

    # -- scripting -----------------------------------------------------------------------

    def fail_next(
        self,
        status: int = 500,
        *,
        count: int = 1,
        attempts: int | None = None,
        body: str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer `status` to the next `count` events, instead of 200.

        Each of those events gets `status` on its first `attempts` requests (None: on every
        request, so a retryable status fails it once retries run out), then 200. `body`
        (default `{"error": "<reason phrase>"}`) and `headers` (a `Retry-After`, say) go
        with each error. Calls queue up: `fail_next(503)` then `fail_next(400)` fails the
        next event with 503s and the one after it with a 400.

        Raises:
            ValueError: `status` is not a 4xx/5xx, or `count` / `attempts` is below 1.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx error, got {status}")
        if count < 1 or (attempts is not None and attempts < 1):
            raise ValueError("count and attempts must be at least 1")
        if body is None:
            body = {"error": httpx.codes.get_reason_phrase(status) or "error"}
        if isinstance(body, str):
            content, content_type = body.encode(), "text/plain; charset=utf-8"
        else:
            content, content_type = json.dumps(dict(body)).encode(), "application/json"
        merged = {"Content-Type": content_type, **(headers or {})}
        with self._lock:
            self._failures.append(_Failure(status, count, attempts, content, merged))

    def clear(self) -> None:
        """Forget every captured request and every scripted failure.

        Held requests stay held, and count as the only ones received.
        """
        with self._lock:
            self._received = len(self._held)
            self._requests.clear()
            self._attempts.clear()
            self._failures.clear()
            self._failing.clear()

    # -- what was captured ---------------------------------------------------------------

    @property
    def requests(self) -> list[CapturedRequest]:
        """Every request received, retries included, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def events(self) -> list[CapturedRequest]:
        """The requests answered 2xx, oldest first: what Encharge would have recorded."""
        return [r for r in self.requests if r.accepted]

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of `events`."""
        return [r.body for r in self.events]

    # -- assertions ----------------------------------------------------------------------

    def assert_tracked(
        self,
        name: str,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """Check that an event `name` was accepted, and return the first one that matches.

        Only the criteria given are checked: `email` (ignoring case), `user_id` (`42`
        matches `"42"`), `user` and `properties` (the body's contain these items). With
        `count`, exactly that many must match.

        Raises:
            AssertionError: no (or not `count`) accepted event matches; the message lists
                what was captured.
        """
        match = _Match(
            "track", name=name, email=email, user_id=user_id, user=user, props=properties
        )
        return self._find(f"a tracked event {name!r}", match, _check_count(count))[0]

    def assert_identified(
        self,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """Check that an identify was accepted; return the first match (see `assert_tracked`).

        Raises:
            AssertionError: no (or not `count`) accepted identify matches.
        """
        match = _Match("identify", email=email, user_id=user_id, user=user)
        return self._find("an identify", match, _check_count(count))[0]

    def assert_aliased(
        self,
        *,
        previous_email: str | None = None,
        previous_user_id: str | int | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """Check that an alias was accepted; return the first match (see `assert_tracked`).

        Raises:
            AssertionError: no (or not `count`) accepted alias matches.
        """
        match = _Match(
            "alias",
            email=email,
            user_id=user_id,
            previous_email=previous_email,
            previous_user_id=previous_user_id,
        )
        return self._find("an alias", match, _check_count(count))[0]

    def assert_grouped(
        self,
        object_type: str,
        *,
        properties: Mapping[str, Any] | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """Check that a group (custom object) event was accepted; return the first match.

        `properties` are the object's fields; `email`, `user_id`, `user` the person
        associated with it (see `assert_tracked`).

        Raises:
            AssertionError: no (or not `count`) accepted group event matches.
        """
        match = _Match(
            "group",
            object_type=object_type,
            email=email,
            user_id=user_id,
            user=user,
            props=properties,
        )
        return self._find(f"a group event for {object_type!r}", match, _check_count(count))[0]

    def assert_not_tracked(
        self,
        name: str,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        """Check that no accepted event `name` matches the criteria (see `assert_tracked`).

        Raises:
            AssertionError: one does; the message lists what was captured.
        """
        match = _Match(
            "track", name=name, email=email, user_id=user_id, user=user, props=properties
        )
        self._find(f"no tracked event {name!r}", match, 0)

    def _find(self, what: str, match: _Match, count: int | None) -> list[CapturedRequest]:
        """The accepted events matching; AssertionError unless there are `count` (or some)."""
        requests = self.requests
        found = [r for r in requests if r.accepted and match(r)]
        if len(found) == count if count is not None else found:
            return found
        expected = f"expected {what}{match.describe()}"
        if count:
            expected += f", {count} time(s)"
        raise AssertionError(f"{expected}; {len(found)} matched.\n{self.report(requests)}")

    def report(self, requests: list[CapturedRequest] | None = None) -> str:
        """What was captured, for assertion messages: accepted events, then refused requests."""
        if requests is None:
            requests = self.requests
        accepted = [r for r in requests if r.accepted]
        refused = [r for r in requests if not r.accepted]
        lines = [f"Accepted {len(accepted)} event(s)" + (":" if accepted else ".")]
        lines += _listing(accepted)
        if refused:
            lines.append(f"Refused {len(refused)} request(s):")
            lines += _listing(refused)
        return "\n".join(lines)


def _listing(requests: list[CapturedRequest]) -> list[str]:
    lines = [f"  {i}. {r.describe()}" for i, r in enumerate(requests[:_MAX_LISTED], 1)]
    if len(requests) > _MAX_LISTED:
        lines.append(f"  ... and {len(requests) - _MAX_LISTED} more")
    return lines


class _Match:
    """The criteria of one assertion; only those given are checked."""

    def __init__(
        self,
        kind: str,
        *,
        name: str | None = None,
        object_type: str | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        props: Mapping[str, Any] | None = None,
        previous_email: str | None = None,
        previous_user_id: str | int | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.object_type = object_type
        self.email = email
        self.user_id = user_id
        self.user = user
        self.props = props
        self.previous_email = previous_email
        self.previous_user_id = previous_user_id

    def __call__(self, request: CapturedRequest) -> bool:
        body = request.body
        person = request.user
        return (
            request.kind == self.kind
            and (self.name is None or request.name == self.name)
            and (self.object_type is None or body.get("objectType") == self.object_type)
            and _same_email(self.email, person.get("email"))
            and _same_id(self.user_id, person.get("userId"))
            and _same_email(self.previous_email, body.get("previousEmail"))
            and _same_id(self.previous_user_id, body.get("previousUserId"))
            and _contains(person, self.user)
            and _contains(request.properties, self.props)
        )

    def describe(self) -> str:
        parts = [
            f"{label}={value!r}"
            for label, value in (
                ("email", self.email),
                ("user_id", self.user_id),
                ("previous_email", self.previous_email),
                ("previous_user_id", self.previous_user_id),
                ("user", self.user),
                ("properties", self.props),
            )
            if value is not None
        ]
        return f" with {', '.join(parts)}" if parts else ""


def _same_email(expected: str | None, actual: object) -> bool:
    return expected is None or (
        isinstance(actual, str) and actual.casefold() == expected.casefold()
    )


def _same_id(expected: str | int | None, actual: object) -> bool:
    return expected is None or (actual is not None and str(actual) == str(expected))


def _contains(actual: Mapping[str, Any], expected: Mapping[str, Any] | None) -> bool:
    return expected is None or all(
        key in actual and actual[key] == value for key, value in expected.items()
    )


def _check_count(count: int | None) -> int | None:
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1 (use assert_not_tracked for none), got {count}")
    return count


def _fake_options(options: dict[str, Any], recorder: EnchargeRecorder) -> dict[str, Any]:
    if "transport" in options:
        raise TypeError("the fakes deliver to their recorder: pass recorder=, not transport=")
    options.setdefault("retry_wait", tenacity.wait_none())
    options["transport"] = recorder
    return options


def _checked(
    result: FlushResult,
    timeout: float,
    check: Callable[_P, _T],
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """Run a recorder assertion after settling; say so when the queue had not drained."""
    try:
        return check(*args, **kwargs)
    except AssertionError as exc:
        if not result.pending:
            raise
        raise AssertionError(
            f"{result.pending} event(s) were still undelivered after {timeout:g}s; {exc}"
        ) from None


def _checked_none(
    result: FlushResult,
    timeout: float,
    check: Callable[_P, None],
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> None:
    """Run a negative assertion after settling: inconclusive (so failed) unless drained."""
    if result.pending:
        raise AssertionError(
            f"{result.pending} event(s) were still undelivered after {timeout:g}s: "
            "cannot tell that none of them matches"
        )
    check(*args, **kwargs)


class FakeAsyncEncharge(AsyncEncharge):
    """An `AsyncEncharge` that delivers to an in-memory `EnchargeRecorder` (`.recorder`).

    Retries are immediate (`retry_wait=tenacity.wait_none()`) unless you pass another
    `retry_wait`; other keyword arguments are `AsyncEncharge`'s. Its `assert_*` methods
    first wait until the queue has drained, for at most `assert_timeout` seconds, then check
    what the recorder accepted (see `EnchargeRecorder`). Works under asyncio and trio.

    Raises:
        TypeError: `transport` was given (pass `recorder=` to share a recorder).
    """

    def __init__(
        self,
        write_key: str = TEST_WRITE_KEY,
        *,
        recorder: EnchargeRecorder | None = None,
        assert_timeout: float = DEFAULT_ASSERT_TIMEOUT,
        **options: Any,
    ) -> None:
        self.recorder: EnchargeRecorder = recorder if recorder is not None else EnchargeRecorder()
        self.assert_timeout = assert_timeout
        super().__init__(write_key, **_fake_options(options, self.recorder))

    async def __aenter__(self) -> FakeAsyncEncharge:
        await super().__aenter__()
        return self

    async def settle(self) -> FlushResult:
        """Wait until every queued event is delivered or given up on (`assert_timeout`)."""
        return await self.flush(self.assert_timeout)

    async def assert_tracked(
        self,
        name: str,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """`settle()`, then `EnchargeRecorder.assert_tracked`; raises AssertionError."""
        return _checked(
            await self.settle(),
            self.assert_timeout,
            self.recorder.assert_tracked,
            name,
            email=email,
            user_id=user_id,
            user=user,
            properties=properties,
            count=count,
        )

    async def assert_identified(
        self,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """`settle()`, then `EnchargeRecorder.assert_identified`; raises AssertionError."""
        return _checked(
            await self.settle(),
            self.assert_timeout,
            self.recorder.assert_identified,
            email=email,
            user_id=user_id,
            user=user,
            count=count,
        )

    async def assert_aliased(
        self,
        *,
        previous_email: str | None = None,
        previous_user_id: str | int | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """`settle()`, then `EnchargeRecorder.assert_aliased`; raises AssertionError."""
        return _checked(
            await self.settle(),
            self.assert_timeout,
            self.recorder.assert_aliased,
            previous_email=previous_email,
            previous_user_id=previous_user_id,
            email=email,
            user_id=user_id,
            count=count,
        )

    async def assert_grouped(
        self,
        object_type: str,
        *,
        properties: Mapping[str, Any] | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """`settle()`, then `EnchargeRecorder.assert_grouped`; raises AssertionError."""
        return _checked(
            await self.settle(),
            self.assert_timeout,
            self.recorder.assert_grouped,
            object_type,
            properties=properties,
            email=email,
            user_id=user_id,
            user=user,
            count=count,
        )

    async def assert_not_tracked(
        self,
        name: str,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        """`settle()`, then `EnchargeRecorder.assert_not_tracked`.

        Raises:
            AssertionError: a matching event was accepted, or events were still undelivered
                after `assert_timeout` (then the check would not be conclusive).
        """
        return _checked_none(
            await self.settle(),
            self.assert_timeout,
            self.recorder.assert_not_tracked,
            name,
            email=email,
            user_id=user_id,
            user=user,
            properties=properties,
        )


class FakeEncharge(Encharge):
    """An `Encharge` (the sync client) that delivers to an in-memory `EnchargeRecorder`.

    The same as `FakeAsyncEncharge`, for sync code: its `assert_*` methods first block
    until the queue has drained (`flush`), for at most `assert_timeout` seconds.

    Raises:
        TypeError: `transport` was given (pass `recorder=` to share a recorder).
    """

    def __init__(
        self,
        write_key: str = TEST_WRITE_KEY,
        *,
        recorder: EnchargeRecorder | None = None,
        assert_timeout: float = DEFAULT_ASSERT_TIMEOUT,
        **options: Any,
    ) -> None:
        self.recorder: EnchargeRecorder = recorder if recorder is not None else EnchargeRecorder()
        self.assert_timeout = assert_timeout
        super().__init__(write_key, **_fake_options(options, self.recorder))

    def __enter__(self) -> FakeEncharge:
        return self

    def settle(self) -> FlushResult:
        """Block until every queued event is delivered or given up on (`assert_timeout`)."""
        return self.flush(self.assert_timeout)

    def assert_tracked(
        self,
        name: str,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """`settle()`, then `EnchargeRecorder.assert_tracked`; raises AssertionError."""
        return _checked(
            self.settle(),
            self.assert_timeout,
            self.recorder.assert_tracked,
            name,
            email=email,
            user_id=user_id,
            user=user,
            properties=properties,
            count=count,
        )

    def assert_identified(
        self,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """`settle()`, then `EnchargeRecorder.assert_identified`; raises AssertionError."""
        return _checked(
            self.settle(),
            self.assert_timeout,
            self.recorder.assert_identified,
            email=email,
            user_id=user_id,
            user=user,
            count=count,
        )

    def assert_aliased(
        self,
        *,
        previous_email: str | None = None,
        previous_user_id: str | int | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """`settle()`, then `EnchargeRecorder.assert_aliased`; raises AssertionError."""
        return _checked(
            self.settle(),
            self.assert_timeout,
            self.recorder.assert_aliased,
            previous_email=previous_email,
            previous_user_id=previous_user_id,
            email=email,
            user_id=user_id,
            count=count,
        )

    def assert_grouped(
        self,
        object_type: str,
        *,
        properties: Mapping[str, Any] | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        count: int | None = None,
    ) -> CapturedRequest:
        """`settle()`, then `EnchargeRecorder.assert_grouped`; raises AssertionError."""
        return _checked(
            self.settle(),
            self.assert_timeout,
            self.recorder.assert_grouped,
            object_type,
            properties=properties,
            email=email,
            user_id=user_id,
            user=user,
            count=count,
        )

    def assert_not_tracked(
        self,
        name: str,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        """`settle()`, then `EnchargeRecorder.assert_not_tracked` (see `FakeAsyncEncharge`)."""
        return _checked_none(
            self.settle(),
            self.assert_timeout,
            self.recorder.assert_not_tracked,
            name,
            email=email,
            user_id=user_id,
            user=user,
            properties=properties,
        )
