"""Every default of the library, in one place."""

from __future__ import annotations

from typing import Final

DEFAULT_ENDPOINT: Final = "https://ingest.encharge.io/v1/"
WRITE_KEY_ENV: Final = "ENCHARGE_WRITE_KEY"
ENDPOINT_ENV: Final = "ENCHARGE_INGEST_URL"
# Set to 1 (true, yes, on) to switch every client off: nothing is sent (disabled=True).
DISABLED_ENV: Final = "ENCHARGE_DISABLED"

# Queue bounds: whichever is reached first applies.
DEFAULT_MAX_QUEUE_SIZE: Final = 10_000
DEFAULT_MAX_QUEUE_BYTES: Final = 32 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES: Final = 1024 * 1024
DEFAULT_OVERFLOW: Final = "drop_newest"

# Delivery.
DEFAULT_MAX_CONCURRENCY: Final = 256  # a ceiling: see ADAPTIVE_* below
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_SHUTDOWN_TIMEOUT: Final = 10.0
DEFAULT_BLOCK_TIMEOUT: Final = 5.0

# Retries: exponential backoff with full jitter, bounded by count and by a per-event deadline.
DEFAULT_MAX_RETRIES: Final = 10
DEFAULT_MAX_RETRY_TIME: Final = 120.0
BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAX: Final = 30.0
RETRY_AFTER_MAX: Final = 120.0
RETRYABLE_STATUS_CODES: Final = frozenset({408, 429, 500, 502, 503, 504})

# Containers (objects, arrays) may nest this deep in an event, counting the event itself:
# orjson's own limit, applied by the stdlib serialiser too, so every Python agrees.
MAX_NESTING_DEPTH: Final = 254

# A caller-chosen message id (the Idempotency-Key header) is at most this long.
MAX_MESSAGE_ID_CHARS: Final = 200

# The default asyncio transport refuses response heads longer than this (Encharge's are a
# few hundred bytes), and keeps this much of a body (the rest is read and discarded).
MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024
MAX_RESPONSE_BODY_BYTES: Final = 64 * 1024
# Seconds before the default transport tries the next address of the endpoint's host in
# parallel (RFC 8305's recommended 250 ms).
HAPPY_EYEBALLS_DELAY: Final = 0.25

# Error bodies are read up to this many bytes; longer ones are truncated in errors.
MAX_ERROR_BODY_BYTES: Final = 4096
ERROR_BODY_PREVIEW_CHARS: Final = 500

# A drop warning is logged at most once per this many seconds, with a count of what it covers.
DROP_WARNING_INTERVAL: Final = 10.0

# The queue's order deque is pruned of departed events once it holds this many more entries
# than twice the queued count.
QUEUE_PRUNE_SLACK: Final = 64

# Closing the HTTP transport after the drain is bounded too.
TRANSPORT_CLOSE_TIMEOUT: Final = 2.0

# The durable spool (spool=...).
DEFAULT_SPOOL_MODE: Final = "overflow"
DEFAULT_SPOOL_AFTER: Final = 60.0
DEFAULT_SPOOL_MAX_BYTES: Final = 256 * 1024 * 1024
DEFAULT_SPOOL_MAX_AGE: Final = 7 * 24 * 3600.0
SPOOL_LOAD_PAGE: Final = 1000
# Events waiting for the spool's writer (which appends them all in one transaction) at most,
# or max_queue_size if larger: beyond, the disk is not keeping up and new events are dropped.
SPOOL_MAX_PENDING: Final = 1000
SPOOL_CLOSE_TIMEOUT: Final = 5.0

# The local emulator (encharge_async.emulator): what it keeps, and who may talk to it.
# Records kept for inspection; past these, the oldest go (and are counted as dropped).
EMULATOR_MAX_EVENTS: Final = 100_000
EMULATOR_MAX_EVENT_BYTES: Final = 64 * 1024 * 1024
EMULATOR_MAX_REJECTED: Final = 10_000
# A rejected request keeps at most this much of its body (and of its path and headers).
EMULATOR_REJECTED_BODY_BYTES: Final = 1024
EMULATOR_REJECTED_TEXT_CHARS: Final = 256
# Pages of the /_emulator/ list views.
EMULATOR_PAGE_DEFAULT: Final = 100
EMULATOR_PAGE_MAX: Final = 1000
# Where the CLI reads the inspection token from when --inspect-token is not given.
EMULATOR_INSPECT_TOKEN_ENV: Final = "ENCHARGE_EMULATOR_INSPECT_TOKEN"

# The command line's import (encharge-async import).
# A line (a CSV record) longer than this is dead-lettered by reference (size and prefix),
# never read whole: no event can be larger than the client's own limit anyway.
CLI_MAX_LINE_BYTES: Final = DEFAULT_MAX_EVENT_BYTES

# -- The default asyncio transport (_http11): body limits, grace, idle expiry ------------------

# A 2xx counts once its head arrived: its body (Encharge's is a few bytes) is read for at most
# this many seconds and bytes more, then the connection is closed rather than waited on.
SUCCESS_BODY_GRACE: Final = 0.5
SUCCESS_BODY_BYTES: Final = 4 * 1024
# Bytes of framing (chunk sizes, extensions, trailers) a response may carry beyond its kept
# body before the transport stops reading it: an endless stream of tiny chunks costs CPU.
MAX_RESPONSE_FRAMING_BYTES: Final = 64 * 1024
# An idle keep-alive connection older than this is not reused (httpx's keepalive_expiry);
# nor is one older than the server's `Keep-Alive: timeout=N` minus the margin.
DEFAULT_KEEPALIVE_EXPIRY: Final = 5.0
KEEPALIVE_TIMEOUT_MARGIN: Final = 1.0

# Serverless (integrations.serverless.flush_after): the time left to an AWS Lambda-style
# handler after its flush, so that the flush never runs into the function's own timeout.
SERVERLESS_TIME_MARGIN: Final = 0.5

# -- Adaptive concurrency (_limiter): how many requests may be in flight at once -----------------

# max_concurrency is the ceiling; the limit starts here (the former fixed default) and never
# goes below the floor (both capped by the ceiling).
ADAPTIVE_INITIAL_LIMIT: Final = 16
ADAPTIVE_MIN_LIMIT: Final = 4
# On a refusal (429, 503), a timeout or a latency rise, the limit is multiplied by this.
ADAPTIVE_BACKOFF: Final = 0.7
# Latency has risen when a round's average exceeds the minimum times this, plus the slack
# (the event loop's own scheduling delay, which is not the server's queueing).
ADAPTIVE_LATENCY_TOLERANCE: Final = 2.0
ADAPTIVE_LATENCY_SLACK: Final = 0.010
# The minimum latency is the smallest seen over the last one to two windows of this many
# seconds, so that it follows a lasting change of route or server.
ADAPTIVE_MIN_LATENCY_WINDOW: Final = 10.0

# -- Values quoted in errors and log lines (_text) ---------------------------------------------

# A value quoted in an error or a log line shows at most this many characters (then its
# length), escaped: a 2 MB name must not make a 2 MB message, nor a CR/LF a forged log line.
QUOTED_VALUE_CHARS: Final = 40
# An IPv6 address with an embedded IPv4 one and a scope id fits in this; longer is refused
# before parsing.
MAX_IP_ADDRESS_CHARS: Final = 100
