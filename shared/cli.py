"""Command line for operators and local use: ``python -m shared.cli <command>``.

Settings come from environment variables (the same names as the app settings); when a
``local.settings.json`` is in the working directory, its ``Values`` fill in what the environment
does not set, so the CLI talks to the same services as ``func start``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import AppError, SettingError, TransientError
from .settings import Settings


def load_local_settings(path: Path = Path("local.settings.json")) -> dict[str, str]:
    """``Values`` of local.settings.json, if present, under the environment (which wins)."""
    env = dict(os.environ)
    if path.is_file():
        try:
            values = json.loads(path.read_text()).get("Values", {})
        except (OSError, ValueError) as exc:
            raise SettingError("local.settings.json", f"cannot be read ({exc}); fix or delete it") from None
        for key, value in values.items():
            if isinstance(value, str):
                env.setdefault(key, value)
    return env


def cmd_init_db(settings: Settings, args: argparse.Namespace) -> int:
    from .db import connect
    from .store import Store

    with connect(settings) as conn:
        citus = Store.create_schema(conn)
    where = "Citus cluster (tables distributed)" if citus else "single node"
    print(f"schema ready on {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.cli", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (never secrets)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("init-db", help="create the extension, tables and indexes (safe to run again)")
    p.set_defaults(func=cmd_init_db)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        settings = Settings(load_local_settings())
        return int(args.func(settings, args))
    except SettingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except TransientError as exc:
        print(f"error: {exc.message} (temporary: try again)", file=sys.stderr)
        return 3
    except AppError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
