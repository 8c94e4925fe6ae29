"""`dispatchq job dispatch`: `nomad job dispatch` with the same flags, lines and exit codes.

Flags come before the positional arguments, as with Go's flag package: the first
non-flag argument ends the flags. Argument errors exit 1 with nomad's texts (not argparse's
exit 2), the usage going to stderr. The job argument is dispatched as given, like nomad
v0.8.3 (no prefix lookup).

How a dispatch is carried out is a pluggable `DispatchPath`: a function from the request
to an Outcome that reports events as they happen. `dispatch_direct` calls Nomad from this
process; the output is rendered from the events alone, so every path prints the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click

from dispatchq.cli.options import PASSTHROUGH
from dispatchq.cli.queued import NoWorker, dispatch_queued
from dispatchq.config.logging import configure_logging
from dispatchq.core.durations import parse_duration
from dispatchq.core.monitor import dispatch_and_follow
from dispatchq.core.outcome import Outcome
from dispatchq.core.render import render
from dispatchq.core.request import UNTIL_FINISHED, UNTIL_SCHEDULED, DispatchRequest
from dispatchq.core.retry import RetryPolicy
from dispatchq.core.service import HANDED_OFF
from dispatchq.core.transcript import Event
from dispatchq.errors import ConfigError
from dispatchq.nomad.client import NomadClient
from dispatchq.nomad.config import NomadConfig
from dispatchq.producer.enqueue import InvalidRequest
from dispatchq.store.messages import new_request_id
from dispatchq.tracker.direct import follow_child
from dispatchq.tracker.progress import final_line

USAGE = """\
Usage: dispatchq job dispatch [options] <parameterized job> [input source]

  Dispatch creates an instance of a parameterized job. A data payload can be
  given on stdin with "-" or as a file path (16 KiB at most). Metadata can be
  supplied with -meta one or more times. The dispatched job ID is printed and
  the evaluation it triggered is monitored, unless -detach is given.

General Options:

  -address=<addr>        The Nomad HTTP API address (env NOMAD_ADDR; http://,
                         https:// or unix://).
  -region=<region>       The region to forward to (env NOMAD_REGION).
  -namespace=<ns>        The namespace to dispatch in (env NOMAD_NAMESPACE).
  -token=<token>         The ACL token (env NOMAD_TOKEN).
  -ca-cert=<path>        A PEM CA certificate file (env NOMAD_CACERT).
  -ca-path=<path>        A directory of PEM CA certificates (env NOMAD_CAPATH).
  -client-cert=<path>    A PEM client certificate (env NOMAD_CLIENT_CERT).
  -client-key=<path>     The client certificate's key (env NOMAD_CLIENT_KEY).
  -tls-server-name=<n>   The server name for SNI and verification
                         (env NOMAD_TLS_SERVER_NAME).
  -tls-skip-verify       Do not verify the server's certificate
                         (env NOMAD_SKIP_VERIFY). Alias: -insecure.

Dispatch Options:

  -meta <key>=<value>    A meta key and value (repeatable; the last one wins).
  -detach                Print the IDs and return without monitoring.
  -idempotency-token=<t> Dispatch at most one instance for this token.
  -id-prefix-template=<t>
                         A prefix template for the dispatched job's ID.
  -priority=<n>          The dispatched job's priority (1-100; 0 inherits).
  -verbose               Print full 36-character IDs.
  -wait                  After the evaluation, follow the dispatched job to its
                         end: a line per allocation or task change, then the
                         job's end. Exit 0 when every allocation completed,
                         2 when it failed (or was still unplaced at the
                         timeout), 1 otherwise. No time limit unless:
  -wait-timeout=<d>      Stop waiting after this long (90s, 5m, 1h30m).
  -direct                Call Nomad from this process instead of going through
                         the queue (the default: a worker dispatches and this
                         command waits for its outcome; there -detach prints
                         the request ID, and connection flags such as -address
                         and -token apply only with -direct).
"""

ARGUMENT_COUNT = "This command takes one or two argument: <parameterized job> [input source]"

# Direct dispatches retry only what cannot have been applied (connection refused, 429,
# "No cluster leader"), or anything retryable when the user gave an idempotency token.
DIRECT_RETRY = RetryPolicy(attempts=3, floor=0.25, cap=2.0)


@dataclass(frozen=True)
class JobDispatch:
    """What the user asked for: the dispatch (not validated here: as with the nomad CLI,
    Nomad or the producer says what is wrong), its payload and idempotency token, and
    where Nomad is."""

    request: DispatchRequest
    payload: bytes | None
    idempotency_token: str | None
    nomad: NomadConfig

    @property
    def detach(self) -> bool:
        return self.request.detach


# Carries out a JobDispatch, passing each event on as it happens, and returns the
# Outcome. May raise ConfigError ("Error initializing client").
DispatchPath = Callable[[JobDispatch, Callable[[Event], None]], Outcome]


def dispatch_direct(request: JobDispatch, on_event: Callable[[Event], None]) -> Outcome:
    """Dispatch and monitor from this process, like the nomad CLI; with -wait, then follow
    the child to its end (`dispatchq.tracker.direct`)."""
    with NomadClient(request.nomad, retry=DIRECT_RETRY) as client:
        outcome = dispatch_and_follow(
            client, request.request, request.payload,
            idempotency_token=request.idempotency_token, on_event=on_event,
        )  # fmt: skip
        child = outcome.dispatched_job_id
        if not request.request.follows_child or not child or outcome.status not in HANDED_OFF:
            return outcome
        timeout = request.request.wait_timeout
        deadline = None if timeout is None else outcome.timings.started_at + timeout
        verdict = follow_child(
            client, child, namespace=request.request.namespace, deadline=deadline,
            on_line=_say, verbose=False,
        )  # fmt: skip
    outcome.with_end(verdict.status, verdict.child, verdict.error_kind, verdict.message)
    _say(final_line(outcome, child))
    return outcome


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def dispatch_through_queue(request: JobDispatch, on_event: Callable[[Event], None]) -> Outcome:
    """Enqueue for the workers and replay their outcome's events (the default path)."""
    outcome, request_id = dispatch_queued(
        request.request,
        payload=request.payload,
        idempotency_token=request.idempotency_token,
        on_event=on_event,
        on_line=_say,
    )
    if request.detach:
        sys.stdout.write(f"Request ID = {request_id}\n")
    return outcome


def choose_path(options: argparse.Namespace) -> DispatchPath:
    """Through the queue by default; `-direct` calls Nomad from this process."""
    return dispatch_direct if options.direct else dispatch_through_queue


class NomadStyleParser(argparse.ArgumentParser):
    """Help is `help_text`; argument errors print the message and it to stderr, exit 1."""

    def __init__(self, *args: Any, help_text: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_text = help_text

    def format_help(self) -> str:
        return self.help_text or super().format_help()

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{message}\n\n{self.format_help()}")
        raise SystemExit(1)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # Unknown flags must fail here, not in the root parser with its exit code 2.
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"flag provided but not defined: {extras[0]}")
        return parsed, extras


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """A flag spelt the nomad way (-name) and also with two dashes (--name)."""
    parser.add_argument(f"-{name}", f"--{name}", **kwargs)


def nomad_parser() -> NomadStyleParser:
    """`nomad job dispatch`'s flags, spelt the nomad way (-name) and with two dashes."""
    parser = NomadStyleParser(
        prog="dispatchq job dispatch", help_text=USAGE, add_help=False, allow_abbrev=False
    )
    parser.add_argument("-h", "-help", "--help", action="help", help=argparse.SUPPRESS)
    for name in ("address", "region", "namespace", "token", "ca-cert", "ca-path"):
        _flag(parser, name)
    for name in ("client-cert", "client-key", "tls-server-name"):
        _flag(parser, name)
    parser.add_argument(
        "-tls-skip-verify",
        "--tls-skip-verify",
        "-insecure",
        "--insecure",
        action="store_const",
        const=True,
        dest="tls_skip_verify",
    )
    _flag(parser, "meta", action="append", default=[])
    _flag(parser, "detach", action="store_true")
    _flag(parser, "verbose", action="store_true")
    _flag(parser, "direct", action="store_true")
    _flag(parser, "wait", action="store_true")
    _flag(parser, "wait-timeout", default="")
    _flag(parser, "idempotency-token", default="")
    _flag(parser, "id-prefix-template", default="")
    _flag(parser, "priority", type=int, default=0)
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    return parser


@click.group("job", short_help="interact with jobs (dispatch)")
def command() -> None:
    """Interact with jobs."""


@command.command(
    "dispatch",
    context_settings={**PASSTHROUGH, "help_option_names": []},
    add_help_option=False,
    short_help="dispatch an instance of a parameterized job",
)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def dispatch_command(arguments: tuple[str, ...]) -> int:
    """Dispatch an instance of a parameterized job: `nomad job dispatch`'s flags, lines and
    exit codes (`dispatchq job dispatch -h`)."""
    return run(nomad_parser().parse_args(list(arguments)))


class Printer:
    """Writes each event's lines as they come: output to `out`, errors to `err`."""

    def __init__(self, verbose: bool, out: TextIO, err: TextIO) -> None:
        self.verbose = verbose
        self.out = out
        self.err = err

    def __call__(self, event: Event) -> None:
        for line in render(event, verbose=self.verbose):
            stream = self.err if line.stderr else self.out
            stream.write(line.text + "\n")
            stream.flush()


class UsageError(Exception):
    """Bad arguments or input: the message is printed as is and the exit code is 1."""


def _read_input(source: str) -> bytes:
    try:
        if source == "-":
            return sys.stdin.buffer.read()
        return Path(source).read_bytes()
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        raise UsageError(f"Error reading input data: open {source}: {reason}") from err


def _parse_meta(pairs: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"Error parsing meta value: {pair}")
        meta[key] = value
    return meta


def build_request(options: argparse.Namespace, environ: Mapping[str, str]) -> JobDispatch:
    """The JobDispatch for parsed options, or UsageError (nomad's checks and order)."""
    positional = list(options.arguments)
    if positional[:1] == ["--"]:
        positional = positional[1:]
    if not 1 <= len(positional) <= 2:
        raise UsageError(f"{ARGUMENT_COUNT}\n\n{USAGE}".rstrip("\n"))
    wait_timeout = None
    if options.wait_timeout:
        if not options.wait:
            raise UsageError("-wait-timeout requires -wait")
        try:
            wait_timeout = parse_duration(options.wait_timeout)
        except ValueError as err:
            raise UsageError(f"Error parsing -wait-timeout: {err}") from None
    payload = _read_input(positional[1]) if len(positional) == 2 else None
    meta = _parse_meta(options.meta)
    nomad = NomadConfig.from_env(environ).with_overrides(
        address=options.address,
        region=options.region,
        namespace=options.namespace,
        token=options.token,
        ca_cert=options.ca_cert,
        ca_path=options.ca_path,
        client_cert=options.client_cert,
        client_key=options.client_key,
        tls_server_name=options.tls_server_name,
        tls_skip_verify=options.tls_skip_verify,
    )
    # Built unvalidated (`model_construct`): what Nomad refuses, it reports in its words.
    request = DispatchRequest.model_construct(
        request_id=new_request_id(),
        job_id=positional[0],
        meta=meta,
        namespace=nomad.namespace or None,
        detach=options.detach,
        id_prefix_template=options.id_prefix_template,
        priority=options.priority,
        until=UNTIL_FINISHED if options.wait else UNTIL_SCHEDULED,
        wait_timeout=wait_timeout,
    )
    token = options.idempotency_token or None
    return JobDispatch(request=request, payload=payload, idempotency_token=token, nomad=nomad)


def run(options: argparse.Namespace) -> int:
    """The handler of `dispatchq job dispatch`; returns the exit code."""
    configure_logging(level="WARNING")  # the client's retry notes stay out of the output
    try:
        request = build_request(options, os.environ)
    except UsageError as err:
        sys.stderr.write(f"{err}\n")
        return 1
    printer = Printer(options.verbose, sys.stdout, sys.stderr)
    try:
        outcome = choose_path(options)(request, printer)
    except ConfigError as err:
        sys.stderr.write(f"Error initializing client: {err}\n")
        return 1
    except (NoWorker, InvalidRequest) as err:
        sys.stderr.write(f"Error: {err}\n")
        return 1
    except KeyboardInterrupt:
        return 130  # as a shell reports a CLI killed by SIGINT, without a traceback
    return outcome.exit_code
