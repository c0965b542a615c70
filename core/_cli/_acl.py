"""``rapid-objection acl --namespace NS --role ROLE``: the Redis ACL user of one role.

Prints one ``ACL SETUSER`` line: the commands the role's code sends (declared by the
Redis adapter, never written by hand) on the keys of one namespace. Pipe it into
``redis-cli``, then give the user a password (``ACL SETUSER NAME >PASSWORD``).
"""

from __future__ import annotations

import argparse
from typing import Any

from rapid_objection.bus._acl import ROLES, role, setuser, user_name
from rapid_objection.bus._constants import DEFAULT_NAMESPACE

from ._args import Parser, UsageError, add_namespace_option


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "acl", help="print the Redis ACL user of a role (least privilege)", description=__doc__
    )
    add_namespace_option(parser)
    parser.add_argument("--role", required=True, choices=ROLES)
    parser.add_argument("--plugin", metavar="NAME", help="a worker's plugin: names its user")
    parser.add_argument(
        "--allow-redrive",
        action="store_true",
        help="an operator may also re-drive dead letters and replay --execute",
    )
    parser.add_argument(
        "--allow-migrate",
        action="store_true",
        help="an operator may also ask registries to migrate and seed (migrate APP up)",
    )
    parser.add_argument("--user", help="the user name (default: ro-NAMESPACE-ROLE[-PLUGIN])")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    namespace = args.namespace or DEFAULT_NAMESPACE
    if args.plugin and args.role != "worker":
        raise UsageError("--plugin names a worker's plugin: use it with --role worker")
    if args.allow_redrive and args.role != "operator":
        raise UsageError("--allow-redrive is an operator's grant: use it with --role operator")
    if args.allow_migrate and args.role != "operator":
        raise UsageError("--allow-migrate is an operator's grant: use it with --role operator")
    user = args.user or user_name(namespace, args.role, args.plugin)
    print(
        setuser(
            user,
            role(
                args.role,
                namespace,
                allow_redrive=args.allow_redrive,
                allow_migrate=args.allow_migrate,
            ),
        )
    )
    return 0
