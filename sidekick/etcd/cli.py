"""``rke-etcd-backup etcd-backup SUBCOMMAND``: the original's command line (CONTRACT section 11).

The original parses with urfave/cli v1 on Go's ``flag`` package, so callers may write
``--flag value`` or ``--flag=value``, ``-flag`` with one dash, a bool flag bare or as
``--flag=true|false`` (never ``--flag true``: a bool never takes the next word), in any
order. Click does not speak that dialect, so :func:`normalize_go_flags` rewrites the argument
list into click's form first, driven by each command's own parameter list.

Each subcommand accepts exactly the flags the original declares for it (an unknown flag is
an error there too). The work is done elsewhere: each command builds an :class:`Options` and
calls a ``run_*(opts) -> int`` imported only when that command runs. The click command itself
is built only when it runs too (:class:`LazyGroup`): ``serve``, which stays up for the whole
restore, does not keep the other seven commands' 192 options.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from sidekick import log as sklog
from sidekick.cli import run_click
from sidekick.etcd.layout import check_name_fits
from sidekick.etcd.options import (
    DEFAULT_BACKUP_RETRIES,
    DEFAULT_S3_RETRIES,
    KEEP_OPTIONS,
    Options,
    check_retries,
    parse_go_duration,
    retry_wait_from_env,
    validate_name,
)

PROG = "rke-etcd-backup"

_TRUE = {"1", "t", "true", "y", "yes", "on"}
_FALSE = {"0", "f", "false", "n", "no", "off"}


class GoBool(click.ParamType):
    """Go's ``strconv.ParseBool`` words (plus yes/no/on/off), case-insensitive."""

    name = "bool"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE or text == "":
            return False
        self.fail(f"{value!r} is not a boolean (true or false)", param, ctx)


class GoDuration(click.ParamType):
    """Go ``time.ParseDuration`` syntax: ``5m``, ``12h``, ``72h0m0s``, ``1h30m``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.timedelta:
        if isinstance(value, dt.timedelta):
            return value
        try:
            return parse_go_duration(str(value).strip())
        except ValueError as err:
            self.fail(f"{err} (Go syntax such as 5m, 12h, 72h0m0s; '24' or '1d' are not durations)", param, ctx)


class GoUint(click.ParamType):
    name = "uint"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not text.isdigit():
            self.fail(f"{value!r} is not a non-negative integer", param, ctx)
        return int(text)


GO_BOOL = GoBool()
GO_DURATION = GoDuration()
GO_UINT = GoUint()


def normalize_go_flags(args: Sequence[str], params: Sequence[click.Parameter]) -> list[str]:
    """Rewrite Go ``flag``-style arguments into click's form.

    ``-name x`` becomes ``--name x``; a bare bool ``--once`` becomes ``--once=true`` (click then
    parses one uniform shape); anything after ``--`` or any unknown word passes through
    unchanged so click reports it.
    """
    bools: set[str] = set()
    valued: set[str] = set()
    for param in params:
        if not isinstance(param, click.Option):
            continue
        names = {n.lstrip("-") for n in param.opts}
        (bools if isinstance(param.type, GoBool) else valued).update(names)
    bools.add("help")
    bools.add("h")

    out: list[str] = []
    expecting_value = False
    for i, arg in enumerate(args):
        if expecting_value:
            out.append(arg)
            expecting_value = False
            continue
        if arg == "--":
            out.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            out.append(arg)
            continue
        body = arg[2:] if arg.startswith("--") else arg[1:]
        flag, eq, value = body.partition("=")
        if flag in ("help", "h") and not eq:
            out.append("--help")
        elif flag in bools:
            out.append(f"--{flag}={value if eq else 'true'}")
        elif flag in valued:
            out.append(f"--{flag}={value}" if eq else f"--{flag}")
            expecting_value = not eq
        else:
            out.append(arg)
    return out


class GoFlagsCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalize_go_flags(args, self.get_params(ctx)))


# --- the flag sets, as the original declares them ---------------------------------------
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _opt(flag: str, dest: str, **kw: Any) -> Decorator:
    return click.option(flag, dest, show_default=bool(kw.get("default")), **kw)


def _text(flag: str, dest: str, envvar: str, help: str) -> Decorator:
    """A string flag of ours, empty by default (the original's behaviour), with its env var shown in --help."""
    return _opt(flag, dest, default="", envvar=envvar, show_envvar=True, help=help)


def _bool(flag: str, dest: str, envvar: str | None = None, help: str = "") -> Decorator:
    return _opt(flag, dest, type=GO_BOOL, default=False, envvar=envvar, help=help, metavar="[=BOOL]")


NAME = _opt("--name", "name", default="", help="snapshot name (a file stem, without .zip)")
ENDPOINTS = _opt("--endpoints", "endpoints", default="127.0.0.1:2379", help="etcd endpoints")
DEBUG = _bool("--debug", "debug", "RANCHER_DEBUG", "verbose logging")
CACERT = _opt("--cacert", "cacert", default="", envvar="ETCD_CACERT", help="etcd CA certificate path")
CERT = _opt("--cert", "cert", default="", envvar="ETCD_CERT", help="etcd client certificate path")
KEY = _opt("--key", "key", default="", envvar="ETCD_KEY", help="etcd client key path")
LOCAL_ENDPOINT = _opt("--local-endpoint", "local_endpoint", default="", envvar="LOCAL_ENDPOINT",
                      help="peer to download the snapshot from (port 2379)")
S3_BACKUP_ENV = _bool("--s3-backup", "s3_backup", "S3_BACKUP", "use S3")
S3_BACKUP_NOENV = _bool("--s3-backup", "s3_backup", None, "delete from S3 too")
S3_ENDPOINT = _opt("--s3-endpoint", "s3_endpoint", default="", envvar="S3_ENDPOINT",
                   help="S3 endpoint host[:port] (TLS; an explicit http:// or https:// is accepted)")
S3_ACCESS = _opt("--s3-accessKey", "s3_access_key", default="", envvar="S3_ACCESS_KEY",
                 show_envvar=True, help="S3 access key (base64 or raw)")
S3_SECRET = _opt("--s3-secretKey", "s3_secret_key", default="", envvar="S3_SECRET_KEY",
                 show_envvar=True, help="S3 secret key (base64 or raw)")
S3_BUCKET = _opt("--s3-bucketName", "s3_bucket_name", default="", envvar="S3_BUCKET_NAME", help="S3 bucket")
S3_REGION = _opt("--s3-region", "s3_region", default="", envvar="S3_BUCKET_REGION", help="S3 region")
S3_CA = _opt("--s3-endpoint-ca", "s3_endpoint_ca", default="", envvar="S3_ENDPOINT_CA",
             help="CA for the S3 endpoint: base64 PEM or a file path")
S3_FOLDER = _opt("--s3-folder", "s3_folder", default="", envvar="S3_FOLDER", help="S3 key prefix folder")
CREATION = _opt("--creation", "creation", type=GO_DURATION, default="5m", help="rolling interval (Go duration)")
RETENTION = _opt("--retention", "retention", type=GO_DURATION, default="24h",
                 help="age after which snapshots are deleted (Go duration)")
ONCE = _bool("--once", "once", None, "take one snapshot and exit")
BACKUP_RETRIES = _opt("--backup-retries", "backup_retries", type=GO_UINT, default=DEFAULT_BACKUP_RETRIES,
                      help="etcd snapshot attempts after the first")
S3_RETRIES = _opt("--s3-retries", "s3_retries", type=GO_UINT, default=DEFAULT_S3_RETRIES,
                  help="upload attempts after the first")
CLEANUP = _bool("--cleanup", "cleanup", None, "remove only the uncompressed file (when the .zip exists)")

KEEP = [_opt(o.flag, o.param, default=None, help=f"{o.help} (env {o.env})", metavar="N") for o in KEEP_OPTIONS]
S3_CATCH_UP = _opt("--s3-catch-up", "s3_catch_up", type=GO_UINT, default=0, envvar="SIDEKICK_S3_CATCH_UP",
                   help="upload up to N local snapshots the bucket lacks (or holds different), oldest first")
DRY_RUN = _bool("--dry-run", "dry_run", None, "print what would be deleted, and why; delete nothing")
VERIFY = _bool("--verify", "verify", "SIDEKICK_VERIFY",
               "rolling mode: verify each new snapshot by a trial restore (ours)")
VERIFY_EVERY = _opt("--verify-every", "verify_every", type=GO_UINT, default=0, envvar="SIDEKICK_VERIFY_EVERY",
                    help="rolling mode: verify every Nth snapshot (ours; implies --verify)")
OUTPUT = _opt("--output", "output", type=click.Choice(["table", "json"]), default="table",
              help="list: a table for people or JSON (docs/list-schema.json)")
DETAILS = _bool("--details", "details", None, "list: read each S3 object's metadata (one HEAD per object)")

# Beyond the original's flags (opt-in; empty keeps its behaviour): sidekick.etcd.s3.S3Config.
S3_ACCESS_FILE = _text("--s3-accessKey-file", "s3_access_key_file", "S3_ACCESS_KEY_FILE",
                       help="file holding the S3 access key (raw, trailing newline ignored)")
S3_SECRET_FILE = _text("--s3-secretKey-file", "s3_secret_key_file", "S3_SECRET_KEY_FILE",
                       help="file holding the S3 secret key (raw, trailing newline ignored)")
S3_TOKEN = _text("--s3-session-token", "s3_session_token", "S3_SESSION_TOKEN",
                 help="session token of temporary S3 credentials")
S3_SSE = _text("--s3-sse", "s3_sse", "S3_SSE",
               help="server-side encryption of uploads: AES256 (SSE-S3) or aws:kms (SSE-KMS)")
S3_SSE_KMS = _text("--s3-sse-kms-key-id", "s3_sse_kms_key_id", "S3_SSE_KMS_KEY_ID",
                   help="KMS key id or ARN for SSE-KMS (implies --s3-sse=aws:kms)")
S3_SSE_C = _text("--s3-sse-c-key-file", "s3_sse_c_key_file", "S3_SSE_C_KEY_FILE",
                 help="file holding a 32-byte SSE-C key (raw or base64); sent on every PUT, GET and HEAD")
S3_CHECKSUM = _text("--s3-checksum", "s3_checksum", "S3_CHECKSUM",
                    help="checksum on every PUT and part: CRC32, CRC32C, SHA1 or SHA256 (Object Lock buckets)")
S3_ADDRESSING = _text("--s3-addressing-style", "s3_addressing_style", "S3_ADDRESSING_STYLE",
                      help="path or virtual (default: virtual for aliyun and AWS, path otherwise)")
S3_PROXY = _text("--s3-proxy", "s3_proxy", "S3_PROXY",
                 help="HTTP proxy URL for S3 (default: HTTPS_PROXY/HTTP_PROXY/NO_PROXY)")
S3_INSECURE = _opt("--s3-insecure-skip-verify", "s3_insecure_skip_verify", type=GO_BOOL, default=False,
                   envvar="S3_INSECURE_SKIP_VERIFY", show_envvar=True, metavar="[=BOOL]",
                   help="do not verify the S3 endpoint's TLS certificate (logs a warning each time)")
S3_EXTRA = [S3_ACCESS_FILE, S3_SECRET_FILE, S3_TOKEN, S3_SSE, S3_SSE_KMS, S3_SSE_C, S3_CHECKSUM, S3_ADDRESSING,
            S3_PROXY, S3_INSECURE]
# Client-side encryption (sidekick.etcd.crypto): recipients for save, an identity to read.
AGE_RECIPIENT = _text("--age-recipient", "age_recipient", "SIDEKICK_AGE_RECIPIENTS",
                      help="encrypt with age to these recipients (age1..., ssh-ed25519 ...; comma-separated)")
AGE_RECIPIENTS_FILE = _text("--age-recipients-file", "age_recipients_file", "SIDEKICK_AGE_RECIPIENTS_FILE",
                            help="file of age recipients, one a line")
AGE_LOCAL = _opt("--age-encrypt-local", "age_encrypt_local", type=GO_BOOL, default=False,
                 envvar="SIDEKICK_AGE_ENCRYPT_LOCAL", show_envvar=True, metavar="[=BOOL]",
                 help="keep only the encrypted <name>.zip.age under /backup (serve and extractstatefile "
                 "then need the identity)")
AGE_IDENTITY = _text("--age-identity-file", "age_identity_file", "SIDEKICK_AGE_IDENTITY_FILE",
                     help="age identity file (age-keygen's output) to decrypt <name>.zip.age")
AGE_SAVE = [AGE_RECIPIENT, AGE_RECIPIENTS_FILE, AGE_LOCAL]

S3_COMMON = [S3_ENDPOINT, S3_ACCESS, S3_SECRET, S3_BUCKET, S3_REGION, S3_CA, S3_FOLDER, *S3_EXTRA]
COMMON = [ENDPOINTS, DEBUG, NAME, CACERT, CERT, KEY, LOCAL_ENDPOINT, S3_BACKUP_ENV, *S3_COMMON]
SNAPSHOT = [CREATION, RETENTION, ONCE, *COMMON]


def _apply(decorators: Sequence[Decorator]) -> Decorator:
    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return wrap


def build_options(command: str, params: dict[str, Any]) -> Options:
    """Turn click's parameters into :class:`Options`, validating what every command shares."""
    keep = {o.param: params.pop(o.param) for o in KEEP_OPTIONS if o.param in params}
    opts = Options(command=command, retry_wait=retry_wait_from_env(), keep=keep, **params)
    if keep:
        from sidekick.etcd.retention import parse_policy

        parse_policy(within=opts.retention, flags=keep, env=os.environ)  # bad counts: a usage error now
    # Register before anything can log them (a decoded form is registered by the S3 code).
    sklog.register_secret(opts.s3_access_key)
    sklog.register_secret(opts.s3_secret_key)
    sklog.register_secret(opts.s3_session_token)
    if opts.debug:
        sklog.set_debug(True)
    if opts.name:
        validate_name(opts.name)
        check_name_fits(opts.name)
    check_retries("--backup-retries", opts.backup_retries)
    check_retries("--s3-retries", opts.s3_retries)
    return opts


def _run(target: str, opts: Options) -> int:
    module_name, _, func_name = target.partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(opts) or 0)


@dataclass(frozen=True)
class _Spec:
    """A subcommand as declared: built into a click command only when it is asked for."""

    flags: Sequence[Decorator]
    target: str
    help: str


SUBCOMMANDS: dict[str, _Spec] = {
    "save": _Spec([*SNAPSHOT, BACKUP_RETRIES, S3_RETRIES, *KEEP, S3_CATCH_UP, VERIFY, VERIFY_EVERY, *AGE_SAVE],
                  "sidekick.etcd.save:run_save",
                  "Take a snapshot (once or rolling) and back it up to S3 compatible storage."),
    "prune": _Spec([RETENTION, DRY_RUN, DEBUG, *KEEP, S3_BACKUP_ENV, *S3_COMMON, S3_RETRIES], "sidekick.etcd.prune:run_prune",
                   "Delete the rolling snapshots the retention policy no longer keeps (local, and S3 with --s3-backup)."),
    "delete": _Spec([NAME, S3_BACKUP_NOENV, CLEANUP, *S3_COMMON], "sidekick.etcd.delete:run_delete",
                    "Delete a snapshot locally and from S3 compatible storage."),
    "download": _Spec([*COMMON, AGE_IDENTITY], "sidekick.etcd.restore:run_download",
                      "Download a snapshot from S3 compatible storage or from a peer."),
    "extractstatefile": _Spec([*SNAPSHOT, AGE_IDENTITY], "sidekick.etcd.restore:run_extractstatefile",
                              "Extract the cluster state file from a snapshot archive."),
    "serve": _Spec([NAME, CACERT, CERT, KEY, AGE_IDENTITY], "sidekick.etcd.serve:run_serve",
                   "Serve the local snapshot over mutual TLS on port 2379."),
    "list": _Spec([DEBUG, S3_BACKUP_ENV, *S3_COMMON, OUTPUT, DETAILS], "sidekick.etcd.listing:run_list",
                  "List the snapshots in /backup and S3 with what save recorded and the last verification."),
    "verify": _Spec([*COMMON, AGE_IDENTITY], "sidekick.etcd.verify:run_verify",
                    "Prove a snapshot restores: restore it into a throwaway etcd member and read it back."),
}


def build_command(name: str) -> click.Command:
    """The click command of subcommand ``name``, its options as the original declares them."""
    spec = SUBCOMMANDS[name]

    def callback(**params: Any) -> int:
        return _run(spec.target, build_options(name, params))

    callback.__doc__ = spec.help
    return click.command(name=name, cls=GoFlagsCommand, help=spec.help)(_apply(spec.flags)(callback))


class LazyGroup(click.Group):
    """Click's lazily loaded subcommands: a command is built when it is looked up, so a run
    builds only its own (``--help`` looks them all up to list them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        if cmd_name not in self.commands:
            self.add_command(build_command(cmd_name))
        return self.commands[cmd_name]


# Help texts are given, not taken from docstrings: the image's bytecode has none (-OO).
@click.group(name="etcd-backup", cls=LazyGroup, help="Perform etcd backup tools.",
             context_settings={"help_option_names": ["--help", "-h"]})
def etcd_backup() -> None:
    pass


@click.group(name=PROG, help="Utility services for etcd cluster backup.",
             context_settings={"help_option_names": ["--help", "-h"]})
def app() -> None:
    pass


app.add_command(etcd_backup)


def main(argv: list[str]) -> int:
    """Dispatcher entry: ``rke-etcd-backup etcd-backup SUBCOMMAND [flags]``."""
    return run_click(app, argv, prog_name=PROG)
