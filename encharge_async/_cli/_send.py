"""`encharge-async send`: one event, delivered with wait=True."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio

from .._client import AsyncEncharge
from .._exceptions import DeliveryError, EnchargeError
from ._options import (
    EXIT_FAILED,
    EXIT_USAGE,
    add_client_options,
    add_verbose,
    cannot_go_on,
    client_kwargs,
    parse_assignments,
)
from ._text import flag_names, one_line

__all__ = ["add_send_parser"]

_IDENTIFIERS = ("email", "userId")  # person fields that are always text


def add_send_parser(subparsers: Any) -> None:
    send = subparsers.add_parser(
        "send",
        help="send one event and wait until Encharge accepts it",
        description="Send one event and wait for Encharge's answer. Exit status: 0 accepted, "
        "1 Encharge refused the event itself, 2 could not send it (bad input or "
        "configuration, a refused write key, a wrong endpoint, Encharge unreachable).",
    )
    add_verbose(send, "verbose_send")
    kinds = send.add_subparsers(dest="kind", required=True, metavar="KIND")

    def person(parser: argparse.ArgumentParser, *, new: bool = False) -> None:
        which = "the new " if new else "the person's "
        parser.add_argument("--email", help=which + "email")
        parser.add_argument(
            "--user-id", metavar="ID", help=which + "userId (always sent as text: 42 is '42')"
        )

    def fields(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--user",
            action="append",
            metavar="KEY=VALUE",
            help="a person field (repeatable); the value is read as JSON when it parses "
            "(3, true, [1]), else as text",
        )

    track = kinds.add_parser(
        "track", help="record an event about a person", description="Record an event."
    )
    track.add_argument("name", help="the event name, e.g. 'Registered user'")
    person(track)
    fields(track)
    track.add_argument(
        "--prop",
        action="append",
        metavar="KEY=VALUE",
        help="an event property (repeatable; JSON when it parses, else text)",
    )
    track.add_argument("--source-ip", metavar="IP", help="the end user's IP address")

    identify = kinds.add_parser(
        "identify", help="create or update a person", description="Create or update a person."
    )
    person(identify)
    fields(identify)

    alias = kinds.add_parser(
        "alias",
        help="change a person's email and/or userId",
        description="Change a person's identifier: give the old one (--previous-email or "
        "--previous-user-id) and the new one (--email or --user-id).",
    )
    alias.add_argument("--previous-email", help="the email the person has now")
    alias.add_argument(
        "--previous-user-id", metavar="ID", help="the userId the person has now (text)"
    )
    person(alias, new=True)

    group = kinds.add_parser(
        "group",
        help="create or update an object such as a company",
        description="Create or update an object (a company...) and link the person to it.",
    )
    group.add_argument("object_type", help="the object's schema name, e.g. company")
    person(group)
    fields(group)
    group.add_argument(
        "--prop",
        action="append",
        metavar="KEY=VALUE",
        help="an object field (repeatable; JSON when it parses, else text)",
    )

    for parser in (track, identify, alias, group):
        # One event, one request: a --concurrency would mean nothing here.
        add_client_options(parser, concurrency=False)
        add_verbose(parser, "verbose_kind")
        parser.set_defaults(handler=run_send, handler_reports_outcomes=True)


def _call(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    kwargs: dict[str, Any] = {}
    if args.kind == "alias":
        kwargs.update(
            previous_email=args.previous_email,
            previous_user_id=args.previous_user_id,
            email=args.email,
            user_id=args.user_id,
        )
        return "alias", kwargs
    kwargs.update(email=args.email, user_id=args.user_id)
    user = parse_assignments(args.user, "--user", text_keys=_IDENTIFIERS)
    if user:
        kwargs["user"] = user
    if args.kind == "track":
        kwargs.update(
            name=args.name,
            properties=parse_assignments(args.prop, "--prop") or None,
            source_ip=args.source_ip,
        )
    elif args.kind == "group":
        kwargs.update(
            object_type=args.object_type, properties=parse_assignments(args.prop, "--prop")
        )
    return args.kind, kwargs


def run_send(args: argparse.Namespace) -> int:
    method, kwargs = _call(args)

    async def send() -> str:
        async with AsyncEncharge(**client_kwargs(args), max_retries=3) as client:
            message_id: str = await getattr(client, method)(**kwargs, wait=True)
            return message_id

    try:
        message_id = anyio.run(send)
    except DeliveryError as exc:
        reason = cannot_go_on(exc)
        if reason is not None:  # not the event's fault: the command could not do its job
            print(f"error: {reason}", file=sys.stderr)
            return EXIT_USAGE
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except (EnchargeError, TimeoutError) as exc:
        print(f"error: {one_line(flag_names(str(exc)))}", file=sys.stderr)
        return EXIT_USAGE
    print(f"accepted: {method} (message id {message_id})")
    return 0
