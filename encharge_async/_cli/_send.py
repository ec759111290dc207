"""`encharge-async send`: one event, delivered with wait=True."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio

from .._client import AsyncEncharge
from .._exceptions import DeliveryError, EnchargeError
from ._options import add_client_options, client_kwargs, parse_assignments, parse_value

__all__ = ["add_send_parser"]


def add_send_parser(subparsers: Any) -> None:
    send = subparsers.add_parser(
        "send",
        help="send one event and wait until Encharge accepts it",
        description="Send one event; exit status 0 only when Encharge accepted it.",
    )
    kinds = send.add_subparsers(dest="kind", required=True, metavar="KIND")

    def person(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--email", help="the person's email")
        parser.add_argument("--user-id", type=parse_value, help="the person's userId")
        parser.add_argument(
            "--user", action="append", metavar="KEY=VALUE", help="a person field (repeatable)"
        )

    track = kinds.add_parser("track", help="record an event about a person")
    track.add_argument("name", help="the event name, e.g. 'Registered user'")
    person(track)
    track.add_argument(
        "--prop", action="append", metavar="KEY=VALUE", help="an event property (repeatable)"
    )
    track.add_argument("--source-ip", help="the end user's IP address")

    identify = kinds.add_parser("identify", help="create or update a person")
    person(identify)

    alias = kinds.add_parser("alias", help="change a person's email and/or userId")
    alias.add_argument("--previous-email")
    alias.add_argument("--previous-user-id", type=parse_value)
    alias.add_argument("--email", help="the new email")
    alias.add_argument("--user-id", type=parse_value, help="the new userId")

    group = kinds.add_parser("group", help="create or update an object such as a company")
    group.add_argument("object_type", help="the object's schema name, e.g. company")
    person(group)
    group.add_argument(
        "--prop", action="append", metavar="KEY=VALUE", help="an object field (repeatable)"
    )

    for parser in (track, identify, alias, group):
        add_client_options(parser)
        parser.set_defaults(handler=run_send)


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
    user = parse_assignments(args.user, "--user")
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
    try:
        method, kwargs = _call(args)
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def send() -> str:
        async with AsyncEncharge(**client_kwargs(args), max_retries=3) as client:
            message_id: str = await getattr(client, method)(**kwargs, wait=True)
            return message_id

    try:
        message_id = anyio.run(send)
    except DeliveryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (EnchargeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"accepted: {method} (message id {message_id})")
    return 0
