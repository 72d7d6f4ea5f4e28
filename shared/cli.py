"""Command line for operators and local use: ``python -m shared.cli <command>``.

Settings come from environment variables (the same names as the app settings); when a
``local.settings.json`` is in the working directory, its ``Values`` fill in what the environment
does not set, so the CLI talks to the same services as ``func start``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from .errors import (
    AppError,
    DatabaseUnavailable,
    InvalidInput,
    ProviderMisconfigured,
    ServiceRefused,
    SettingError,
    TransientError,
)
from .schema import SchemaOutdated
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import Runtime


class Exit(IntEnum):
    """The exit codes, each naming what to do next (the table is in README and ``--help``)."""

    OK = 0
    BAD_INPUT = 1
    CONFIGURATION = 2
    TEMPORARY = 3
    REFUSED = 4
    INTERRUPTED = 130


EXIT_CODES: Final[tuple[tuple[Exit, str], ...]] = (
    (Exit.OK, "done"),
    (Exit.BAD_INPUT, "bad input: an argument, a file or a query is wrong (or a command's own refusal)"),
    (Exit.CONFIGURATION, "configuration: a setting is missing, malformed or points at nothing; the line names it"),
    (Exit.TEMPORARY, "temporary: a service is down, restarting or throttling, or blobs were left to do; run again"),
    (Exit.REFUSED, "refused: a service answered no (no such container, wrong key, missing role); the line says"),
    (Exit.INTERRUPTED, "interrupted (Ctrl+C)"),
)


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


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from .db import connect
    from .maintenance import migrate

    with _database_first_contact(settings):
        connect(settings).close()  # a DATABASE_URL that points at nothing is a setting to fix, not a wait
    result = migrate(settings, prepare_model=not args.schema_only)
    where = "Citus cluster (tables distributed)" if result.schema.citus else "single node"
    if result.schema.applied:
        print(f"schema migrated from version {result.schema.before} to {result.schema.after} on {where}")
    else:
        print(f"schema is current (version {result.schema.after}) on {where}")
    if result.model is not None:
        state = "active" if result.model.state == "active" else result.model.state
        built = f"; index {result.built} built" if result.built else ""
        print(f"model {result.model.model_id} is registered ({state}){built}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> int:
    from .maintenance import reindex

    result = reindex(settings, model_id=args.model)
    if not result.rebuilt:
        print("every index matches the settings: nothing to rebuild")
    else:
        print(f"rebuilt {', '.join(result.rebuilt)}; dropped {len(result.dropped)} old index(es)")
    return 0


def cmd_grant_app_role(settings: Settings, args: argparse.Namespace) -> int:
    from .maintenance import grant_app_role

    for statement in grant_app_role(settings, args.role):
        print(statement)
    return 0


def _runtime(settings: Settings) -> Runtime:
    from .blobs import ImageBlobs
    from .runtime import build_runtime

    with _database_first_contact(settings):
        rt = build_runtime(settings)
    # The runtime's storage client is as patient as the blob trigger; a command should answer in seconds.
    rt.blobs = ImageBlobs.from_settings(settings, profile="cli")
    return rt


def _bar(total: int | None, desc: str, unit: str = "file") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, file=sys.stderr, dynamic_ncols=True)


def _workers(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= number <= 64:
        raise argparse.ArgumentTypeError("give a number from 1 to 64")
    return number


def _files(paths: Sequence[str]) -> tuple[list[tuple[Path, str]], int]:
    """(file, blob name) for each file under the given paths, and how many hidden entries were left out.

    Folders recurse; blob names keep the sub-path. Inside a folder, names starting with "." are what a
    photo folder collects besides photos (.DS_Store, ._IMG_1.jpg resource forks named like images, .git/):
    they are skipped, not walked into, and counted for the summary. A dot file named as a PATH is uploaded:
    it was asked for.
    """
    found: list[tuple[Path, str]] = []
    hidden = 0
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append((path, path.name))
        elif path.is_dir():
            for folder, dirs, names in os.walk(path):
                visible = sorted(d for d in dirs if not d.startswith("."))
                hidden += len(dirs) - len(visible)
                dirs[:] = visible
                for name in sorted(names):
                    child = Path(folder, name)
                    if name.startswith("."):
                        hidden += 1
                    elif child.is_file():
                        found.append((child, child.relative_to(path).as_posix()))
        else:
            raise InvalidInput(f"no such file or folder: {_shown(raw)}")
    return found, hidden


def _shown(path: str | Path) -> str:
    """A path as it can be printed: bytes that are not UTF-8 (kept by Python as surrogates) as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def cmd_upload(settings: Settings, args: argparse.Namespace) -> int:
    from .blobs import ImageBlobs
    from .errors import InvalidImage
    from .images import MAX_BYTES, inspect_image

    prefix = args.prefix.strip("/") + "/" if args.prefix else ""
    if not _is_utf8(prefix):
        raise InvalidInput(f"--prefix {_shown(prefix)} is not valid UTF-8")
    files, hidden = _files(args.paths)  # a mistyped PATH is reported before anything is uploaded
    blobs = ImageBlobs.from_settings(settings, profile="cli")
    if settings.images_container in blobs.ensure_container():
        # Said aloud: a misspelt IMAGES_CONTAINER would otherwise fill a container nothing indexes.
        print(f"created container '{settings.images_container}' (it did not exist)", file=sys.stderr)
    uploaded = not_image = too_large = bad_name = unreadable = 0
    with _bar(len(files), "upload") as bar:
        for path, name in files:
            bar.update(1)
            # Skipped, not renamed: a blob's name is its identity (the row id derives from it, results show
            # it). Guessing the encoding (Latin-1? CP437 from an old zip?) would store a wrong name for good,
            # and U+FFFD for the bad bytes can make two files one blob. Named here, renamed once by the user.
            if not _is_utf8(name):
                bar.write(
                    f"skipped {_shown(path)}: its name is not valid UTF-8, which blob names must be; rename it "
                    "(e.g. convmv -f latin1 -t utf-8 --notest FILE) and upload it again",
                    file=sys.stderr,
                )
                bad_name += 1
                continue
            try:
                size = path.stat().st_size
                # Checked before reading: an oversized file is never loaded whole.
                data = path.read_bytes() if size <= MAX_BYTES or args.all else b""
            except OSError as exc:
                bar.write(f"skipped {_shown(path)}: cannot read it ({exc.strerror or exc})", file=sys.stderr)
                unreadable += 1
                continue
            try:
                if size > MAX_BYTES:
                    raise InvalidImage(
                        f"{size:,} bytes is too large: the embedding service takes at most {MAX_BYTES:,}",
                        code="TooLarge",
                    )
                content_type = inspect_image(data).content_type
            except InvalidImage as exc:
                if not args.all:
                    bar.write(f"skipped {_shown(path)}: {exc.message}", file=sys.stderr)
                    if exc.code == "TooLarge":
                        too_large += 1
                    else:
                        not_image += 1
                    continue
                content_type = "application/octet-stream"
            blobs.upload(prefix + name, data, content_type)
            uploaded += 1
    skipped = [
        (not_image, "not an image"),
        (too_large, f"too large (over {MAX_BYTES // 2**20} MB)"),
        (hidden, "hidden (names starting with '.')"),
        (bad_name, "with a name that is not UTF-8"),
        (unreadable, "unreadable"),
    ]
    summary = f"uploaded {uploaded} file(s) to container {settings.images_container}"
    if any(n for n, _ in skipped):
        summary += "; skipped " + ", ".join(f"{n} {what}" for n, what in skipped if n)
    print(summary)
    return 0


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from .ingest import reconcile

    rt = _runtime(settings)
    bar = None

    def plan(total: int) -> None:
        nonlocal bar
        if not args.dry_run:
            bar = _bar(total, "reconcile", unit="blob")

    try:
        report = reconcile(
            rt,
            dry_run=args.dry_run,
            concurrency=args.concurrency,
            on_plan=plan,
            progress=lambda n: bar.update(n) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
        rt.close()
    print(report.summary())
    for line in report.errors[:20]:
        print(f"  error: {line}", file=sys.stderr)
    if report.errors:
        print("some blobs could not be processed (temporary errors): run reconcile again later", file=sys.stderr)
        return 3
    return 0


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    from .runtime import open_store

    with _database_first_contact(settings):
        store = open_store(settings)
    try:
        stats = store.catalogue.stats(recent_failures=args.failures)
    finally:
        store.close()
    print("images by status:")
    for status, n in sorted(stats["by_status"].items()) or [("(none)", 0)]:
        print(f"  {status:<10} {n:>8}")
    print("vectors by model:")
    for m in stats["by_model"]:
        print(f"  {m['model_id']:<32} {m['state']:<9} dim {m['dimension']:<5} {m['n']:>8}")
    if stats["failures"]:
        print("recent failures:")
        for f in stats["failures"]:
            when = f["failed_at"].strftime("%Y-%m-%d %H:%M") if f["failed_at"] else ""
            print(f"  {when}  {f['name']}  [{f['failure_code']}] x{f['failure_count']}: {f['failure_reason']}")
    return 0


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    rt = _runtime(settings)
    try:
        models = rt.store.registry.models()
    finally:
        rt.close()
    print(f"{'model':<34} {'state':<9} {'dim':>5} {'coverage':>17}")
    for m in models:
        cover = f"{m.covered}/{m.total}"
        print(f"{m.model.model_id:<34} {m.model.state:<9} {m.model.dimension:>5} {cover:>17}")
    return 0


def cmd_reembed(settings: Settings, args: argparse.Namespace) -> int:
    from .models import reembed, target

    goal = target(settings, args.provider, args.model)
    rt = _runtime(settings)
    bar = None

    def total(n: int) -> None:
        nonlocal bar
        bar = _bar(n, f"reembed {goal.provider.model_id}", unit="image")

    try:
        if rt.model.model_id == goal.provider.model_id:
            print(f"{goal.provider.model_id} is already the active model: nothing to do")
            return 0
        report = reembed(
            rt,
            goal,
            concurrency=args.concurrency,
            on_total=total,
            progress=lambda n: bar.update(n) if bar is not None else None,
        )
        status = rt.store.registry.model_status(goal.provider.model_id)
    finally:
        if bar is not None:
            bar.close()
        rt.close()
    print(report.summary())
    if status is not None:
        print(f"coverage {status.covered}/{status.total}")
        if not status.missing and not report.errors:
            print(f"next: python -m shared.cli activate {goal.provider.model_id}")
    for line in report.errors[:20]:
        print(f"  error: {line}", file=sys.stderr)
    return 3 if report.errors else 0


def cmd_activate(settings: Settings, args: argparse.Namespace) -> int:
    rt = _runtime(settings)
    try:
        status = rt.store.registry.activate(args.model, force=args.force)
    finally:
        rt.close()
    print(f"{status.model.model_id} is now active ({status.covered}/{status.total} images); workers switch within 30 s")
    return 0


def cmd_drop_model(settings: Settings, args: argparse.Namespace) -> int:
    from .maintenance import drop_model

    removed = drop_model(settings, args.model)
    print(f"dropped {args.model}: {removed} vectors and its index removed")
    return 0


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    """Run one query through the same pipeline as the HTTP API and print the results as a table."""
    from .search import Searcher, parse_image_id, parse_options

    given = [bool(args.text), args.image is not None, args.similar is not None]
    if sum(given) != 1:
        raise InvalidInput("give exactly one of TEXT, --image FILE or --similar ID")
    options = parse_options(
        {
            "k": args.k,
            "prefix": args.prefix,
            "content_type": args.content_type,
            "min_score": args.min_score,
            "uploaded_after": args.uploaded_after,
            "uploaded_before": args.uploaded_before,
            "cursor": args.cursor,
        }
    )
    data = b""
    if args.image is not None:
        try:
            data = Path(args.image).read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read {args.image}: {exc.strerror or exc}") from None
    rt = _runtime(settings)
    try:
        searcher = Searcher(
            rt.store,
            rt,
            blobs=rt.blobs if args.links else None,
            container=settings.images_container,
            read_link_minutes=settings.read_link_minutes,
        )
        if args.similar is not None:
            page = searcher.similar(parse_image_id(args.similar), options)
        elif args.image is not None:
            page = searcher.image(data, options)
        else:
            page = searcher.text(" ".join(args.text), options)
    finally:
        rt.close()
    print(f"{'rank':>4}  {'score':>6}  {'id':>19}  {'size':>9}  {'WxH':>11}  name")
    for rank, r in enumerate(page.results, 1):
        size = _size(r.byte_size) if r.byte_size is not None else "?"
        wxh = f"{r.width}x{r.height}" if r.width and r.height else "?"
        print(f"{rank:>4}  {r.score:>6.3f}  {r.id:>19}  {size:>9}  {wxh:>11}  {r.name}")
        if r.url:
            print(f"{'':>4}  {r.url}")
    if not page.results:
        print("(no results)")
    if page.next_cursor:
        print(f"more: add --cursor {page.next_cursor}")
    return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1024 or unit == "MB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # A mistyped command line is bad input (1), like a bad value; argparse's own 2 reads as "configuration".
        self.print_usage(sys.stderr)
        self.exit(Exit.BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(f"  {int(code):<4} {meaning}" for code, meaning in EXIT_CODES)
    parser = _Parser(
        prog="python -m shared.cli",
        description=__doc__.splitlines()[0],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log details, retries and libraries' warnings (never secrets)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in ("migrate", "init-db"):
        p = sub.add_parser(
            command,
            help="create or upgrade the schema and prepare the configured model and its index (safe to run again)"
            + ("; an alias of migrate" if command == "init-db" else ""),
        )
        p.add_argument("--schema-only", action="store_true", help="leave the model and its index alone")
        p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("reindex", help="rebuild model indexes whose HNSW settings changed (search keeps answering)")
    p.add_argument("--model", help="only this model (default: the active one and any being built)")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("grant-app-role", help="grant the app's database role what it needs at run time, no more")
    p.add_argument("role", help="the role's name (in Azure: the Function App's name)")
    p.set_defaults(func=cmd_grant_app_role)

    p = sub.add_parser("upload", help="upload files or folders (recursively) to the images container")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--prefix", default="", help="virtual folder to put the blobs under")
    p.add_argument(
        "--all", action="store_true", help="upload files that are not images too (they get recorded as failures)"
    )
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("reconcile", help="index blobs missing or changed, remove rows whose blob is gone")
    p.add_argument("--dry-run", action="store_true", help="only say what would be done")
    p.add_argument("--concurrency", type=_workers, default=8, help="blobs processed at once (default 8)")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("models", help="embedding models with their state and coverage")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("reembed", help="compute another model's vectors beside the active ones (resumable)")
    p.add_argument("--provider", required=True, help="provider of the new model, e.g. azure-vision or clip")
    p.add_argument("--model", help="model of that provider (VISION_MODEL_VERSION or CLIP_MODEL_NAME)")
    p.add_argument("--concurrency", type=_workers, default=4, help="images embedded at once (default 4)")
    p.set_defaults(func=cmd_reembed)

    p = sub.add_parser("activate", help="switch queries to a model whose vectors are complete")
    p.add_argument("model", help="model id, as `models` lists it")
    p.add_argument("--force", action="store_true", help="activate even if some images lack its vector")
    p.set_defaults(func=cmd_activate)

    p = sub.add_parser("drop-model", help="remove a model that is not active: its vectors and index")
    p.add_argument("model", help="model id, as `models` lists it")
    p.set_defaults(func=cmd_drop_model)

    p = sub.add_parser("search", help="search by TEXT, --image FILE or --similar ID; print a table")
    p.add_argument("text", nargs="*", metavar="TEXT", help="what to look for, 1 to 70 words")
    p.add_argument("--image", metavar="FILE", help="find images like this file")
    p.add_argument("--similar", metavar="ID", help="find images like this indexed image (no embedding call)")
    p.add_argument("-k", default="10", help="how many results (1-100, default 10)")
    p.add_argument("--prefix", help="only blobs whose name starts with this")
    p.add_argument("--content-type", help="only these media types, comma-separated (e.g. image/png)")
    p.add_argument("--min-score", help="only results with at least this cosine similarity (-1 to 1)")
    p.add_argument("--uploaded-after", help="only blobs written at or after this ISO 8601 date or date-time")
    p.add_argument("--uploaded-before", help="only blobs written before this ISO 8601 date or date-time")
    p.add_argument("--cursor", help="next page: the cursor the previous page printed")
    p.add_argument("--links", action="store_true", help="also print a time-limited read link for each result")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("stats", help="counts by status and model; recorded failures with their reasons")
    p.add_argument("--failures", type=int, default=20, help="how many recent failures to list")
    p.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with _logging_to_stderr(verbose=args.verbose):
        return int(_run(args))


def _run(args: argparse.Namespace) -> int:
    """Run the command; a failure the project knows ends with one line on stderr and its exit code."""
    try:
        settings = Settings(load_local_settings())
        return int(args.func(settings, args))
    except SettingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return Exit.CONFIGURATION
    except SchemaOutdated as exc:
        # Not a wait (nothing changes until an operator migrates): the database's set-up needs doing.
        print(f"error: {exc.message}", file=sys.stderr)
        return Exit.CONFIGURATION
    except (ServiceRefused, ProviderMisconfigured) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return Exit.REFUSED
    except TransientError as exc:
        print(f"error: {exc.message} (temporary: try again)", file=sys.stderr)
        return Exit.TEMPORARY
    except AppError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return Exit.BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return Exit.INTERRUPTED


# --- logging ---------------------------------------------------------------------------------------

# Their warnings are retries that the command's final error line sums up ("failed 4 time(s) in 5.1 s").
_RETRY_CHATTER: Final = ("shared.vision",)


class _ForTheTerminal(logging.Filter):
    """Without -v: the project's own warnings (retry chatter aside) and anyone's errors. With -v: the project's
    info too, and the libraries' (azure, urllib3, …) warnings."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "shared" or record.name.startswith("shared.")
        if self.verbose or record.levelno >= logging.ERROR:
            return ours or record.levelno >= logging.WARNING
        return ours and record.levelno >= logging.WARNING and not record.name.startswith(_RETRY_CHATTER)


@contextmanager
def _logging_to_stderr(*, verbose: bool) -> Iterator[None]:
    # A handler of the command's own, removed afterwards, rather than basicConfig: the process may be a test
    # run or a notebook whose logging is not ours to reconfigure.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(_ForTheTerminal(verbose))
    root, ours = logging.getLogger(), logging.getLogger("shared")
    level = ours.level
    if verbose:
        ours.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)


# --- the database: a setting that points at nothing, or an outage? ----------------------------------

# How long a local server may take to listen again before "nothing listens" is the verdict: a restart of
# the embedded PostgreSQL (`make run` restarts it onto TCP) is back well within it.
LOCAL_RESTART_SECONDS: Final = 2.0


@contextmanager
def _database_first_contact(settings: Settings) -> Iterator[None]:
    """Around a command's first connection: a DATABASE_URL that points at nothing is a setting to fix.

    The rule (README, "Command line"): exit 2 when waiting cannot help — DNS says the host name does not
    exist, or the host is this machine and nothing listens on the port for LOCAL_RESTART_SECONDS. Anything
    else stays temporary (exit 3): a remote host that refuses or does not answer (a managed server
    restarting, a container starting), DNS not answering, a server that answers but is not ready. Only the
    first contact is judged: once a command has talked to the database, a failure is an outage.
    """
    try:
        yield
    except DatabaseUnavailable as exc:
        problem = _points_nowhere(settings.database_url)
        if problem is not None:
            raise SettingError("DATABASE_URL", problem) from exc
        raise


def _points_nowhere(conninfo: str) -> str | None:
    """Why no server can be behind ``conninfo`` (for SettingError), or None when it may be an outage."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(conninfo)
    hosts = str(params.get("host") or os.environ.get("PGHOST") or "").split(",")
    ports = str(params.get("port") or os.environ.get("PGPORT") or "5432").split(",")
    if params.get("hostaddr") or not all(h.strip() for h in hosts):
        return None  # addresses given directly, or libpq's default socket: not ours to second-guess
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts) or not all(p.strip().isdigit() for p in ports):
        return None
    verdicts = [_host_points_nowhere(h.strip(), int(p)) for h, p in zip(hosts, ports, strict=True)]
    if any(v is None for v in verdicts):
        return None  # one of several hosts may be up again soon
    return "; ".join(v for v in verdicts if v)


def _host_points_nowhere(host: str, port: int) -> str | None:
    if host.startswith("/"):  # a Unix socket directory: always this machine
        path = f"{host}/.s.PGSQL.{port}"
        if _listens_soon([(socket.AF_UNIX, path)]):
            return None
        return f"points at the socket {path} on this machine, where no server listens: fix host/port, or start it"
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_NAME:
            return f"names host '{host}', which does not exist ({exc.strerror}): fix the host name"
        return None  # e.g. EAI_AGAIN: the resolver did not answer, which is temporary
    addresses = [(family, sockaddr) for family, _, _, _, sockaddr in found]
    if not all(_is_loopback(str(sockaddr[0])) for _, sockaddr in addresses):
        return None
    if _listens_soon(addresses):
        return None
    return (
        f"points at {host}:{port} on this machine, where nothing listens: fix the port, or start PostgreSQL "
        "(`make run` starts the local one)"
    )


_NO_SUCH_NAME: Final = {socket.EAI_NONAME} | ({socket.EAI_NODATA} if hasattr(socket, "EAI_NODATA") else set())


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _listens_soon(addresses: Sequence[tuple[int, Any]], seconds: float = LOCAL_RESTART_SECONDS) -> bool:
    """Whether something accepts connections at one of ``addresses`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        for family, address in addresses:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                try:
                    probe.connect(address)
                except OSError:
                    continue
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
