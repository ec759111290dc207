"""One delivery attempt: build the request, send it through the transport, classify the answer."""

from __future__ import annotations

import logging
import platform
import re
import traceback

import anyio
import httpx

from ._constants import ERROR_BODY_PREVIEW_CHARS, MAX_ERROR_BODY_BYTES, MAX_MESSAGE_ID_CHARS
from ._events import Event
from ._exceptions import ConfigurationError
from ._http11 import Http11Transport
from ._retry import Attempt, Failure, parse_retry_after
from ._text import escape
from ._version import __version__

__all__ = ["USER_AGENT", "Sender"]

USER_AGENT = (
    f"encharge-async/{__version__} httpx/{httpx.__version__} "
    f"{platform.python_implementation()}/{platform.python_version()}"
)

logger = logging.getLogger("encharge_async")


class Sender:
    """Sends events as single POSTs through an `httpx.AsyncBaseTransport`.

    It calls the transport directly with a prepared request instead of going through
    `httpx.AsyncClient`: no cookies, redirects or auth flows are needed, and each of those
    costs CPU on the application's own event loop. With the default transport on asyncio
    (`Http11Transport`) it skips httpx's request and response objects too.
    """

    def __init__(
        self, transport: httpx.AsyncBaseTransport, url: httpx.URL, write_key: str, timeout: float
    ) -> None:
        self._transport = transport
        self._url = url
        self._secret = _secret_pattern(write_key)
        self._timeout = timeout
        self._headers = [
            (b"Accept", b"application/json"),
            (b"Content-Type", b"application/json"),
            (b"User-Agent", USER_AGENT.encode()),
            (b"X-Encharge-Token", write_key.encode()),
        ]
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        self._lean = transport if isinstance(transport, Http11Transport) else None
        # Everything in the lean path's request head but the per-event lines.
        self._head = b"".join(
            [
                b"POST %s HTTP/1.1\r\nHost: %s\r\n" % (url.raw_path, url.netloc),
                *(b"%s: %s\r\n" % header for header in self._headers),
                b"Idempotency-Key: ",
            ]
        )

    def build_request(self, event: Event, message_id: bytes) -> httpx.Request:
        headers = [*self._headers, (b"Idempotency-Key", message_id)]
        return httpx.Request(
            "POST", self._url, headers=headers, content=event.body, extensions=self._extensions
        )

    async def send(self, event: Event) -> Attempt:
        """Make one attempt; never raises except on cancellation."""
        message_id = event.message_id
        # Checked here, where the request's bytes are made, whatever the event's origin
        # (a spool file may have been edited): a CR or LF would inject headers.
        if not (
            0 < len(message_id) <= MAX_MESSAGE_ID_CHARS
            and message_id.isascii()
            and message_id.isprintable()
            and " " not in message_id
        ):
            return Attempt(failure=Failure.BUG, reason="the message id is not a valid header value")
        try:
            if self._lean is not None:
                body = event.body
                status, headers, body = await self._lean.request(
                    b"%s%s\r\nContent-Length: %d\r\n\r\n%s"
                    % (self._head, message_id.encode(), len(body), body)
                )
            else:
                request = self.build_request(event, message_id.encode())
                with anyio.fail_after(self._timeout):
                    response = await self._transport.handle_async_request(request)
                    try:
                        body = await _read_limited(response)
                    finally:
                        await response.aclose()
                status, headers = response.status_code, response.headers.raw
        except ConfigurationError as exc:  # e.g. plain http to a peer that is not loopback
            return Attempt(failure=Failure.REFUSED, reason=self._scrub(str(exc)))
        except TimeoutError:
            return Attempt(
                failure=Failure.TIMEOUT, reason=f"no answer within timeout={self._timeout:g}s"
            )
        except (httpx.TransportError, OSError) as exc:
            # OSError: network errors from transports that do not map them to httpx's.
            return Attempt(
                failure=Failure.NETWORK,
                reason=self._scrub(
                    f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                ),
            )
        except Exception as exc:
            # A transport bug is not worth retrying; report it, keep the worker alive.
            # The failure is logged by the client with a scrubbed message; here only where it
            # happened, since the exception's own text may carry the write key.
            logger.debug(
                "transport raised %s for message %s at:\n%s",
                type(exc).__name__,
                event.message_id,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            return Attempt(failure=Failure.BUG, reason=self._scrub(f"{type(exc).__name__}: {exc}"))
        if 200 <= status < 300:
            return Attempt(status=status)
        # Scrubbed whole, then cut: a key straddling the cut must not leave a piece behind.
        text = self._scrub(body[:MAX_ERROR_BODY_BYTES].decode("utf-8", "replace"))
        return Attempt(
            status=status,
            body=text,
            reason=_reason(status),
            retry_after=parse_retry_after(httpx.Headers(headers)) if status >= 400 else None,
        )

    def _scrub(self, text: str) -> str:
        """Errors must never carry the write key, even when a server or proxy echoes it.

        The key is taken out of the whole text, in any of the forms an echo may take (as
        is, JSON-escaped, percent-encoded); what is left is cut to a preview and escaped,
        since it ends up in log lines (DeliveryError's text).
        """
        text = self._secret.sub("***", text)
        if len(text) > ERROR_BODY_PREVIEW_CHARS:
            text = f"{text[:ERROR_BODY_PREVIEW_CHARS]}..."
        return escape(text)


def _secret_pattern(secret: str) -> re.Pattern[str]:
    """A pattern that finds `secret` as is, JSON-escaped or percent-encoded, in any mix.

    JSON may write any character as \\uXXXX and a slash as \\/ (with more backslashes when
    JSON is nested in JSON); a URL or a form body writes it as %XX. Hex digits in either
    case; the match ignores case altogether (a few more characters redacted is harmless).
    """
    forms = []
    for char in secret:
        code = ord(char)
        # One backslash or more: JSON inside JSON doubles them.
        alternatives = [re.escape(char), rf"\\+u{code:04x}", rf"%{code:02x}"]
        if char == "/":
            alternatives.append(r"\\+/")
        forms.append(f"(?:{'|'.join(alternatives)})")
    return re.compile("".join(forms), re.IGNORECASE)


def _reason(status: int) -> str:
    try:
        return httpx.codes.get_reason_phrase(status) or "unexpected status"
    except ValueError:  # pragma: no cover - get_reason_phrase returns "" for unknown codes
        return "unexpected status"


async def _read_limited(response: httpx.Response) -> bytes:
    """Read at most MAX_ERROR_BODY_BYTES of the body; the rest is not needed."""
    chunks: list[bytes] = []
    size = 0
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    iterator = stream.__aiter__()
    try:
        async for chunk in iterator:
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_ERROR_BODY_BYTES:
                break
    finally:
        # Stopping early must close the generator now, not when the GC finds it.
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
    return b"".join(chunks)
