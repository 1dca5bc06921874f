"""Configuration: every option as a `--flag` and as an `MTT_EXPORTER_*` variable."""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import Field, FilePath, IPvAnyNetwork, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, CliSettingsSource, NoDecode, SettingsConfigDict

from .state import check_url
from .statefile import MAX_AGE_SECONDS

#: A repeatable flag (`--allow-cidr A --allow-cidr B`); in the environment a JSON list or
#: comma-separated (`MTT_EXPORTER_ALLOW_CIDR=10.0.0.0/8,192.0.2.7`).
Networks = Annotated[list[IPvAnyNetwork], NoDecode]


ENV_PREFIX = "MTT_EXPORTER_"


def split_host_port(value: str) -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' -> (host, port); host '' means all interfaces."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class Settings(BaseSettings):
    """mtt-exporter: Prometheus exporter for MTT call-progress notifications."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_prog_name="mtt-exporter",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        extra="ignore",
    )

    listen: str = Field("0.0.0.0:9888", description="HOST:PORT for notifications (and /metrics unless --metrics-listen).")
    metrics_listen: str | None = Field(None, description="HOST:PORT of a second listener for /metrics and health only.")
    token: SecretStr | None = Field(None, description="Shared secret a notification must carry (path, ?token=, Bearer or Basic password).")
    call_ttl: float = Field(6 * 3600, gt=0, description="Seconds a call is kept after its last notification.")
    max_calls: int = Field(500_000, ge=1, description="Cap on calls held in memory; the oldest are evicted.")
    call_end_grace: float = Field(15.0, ge=0, description="Seconds to wait for a late answer or new leg before ending an unanswered call.")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest request body accepted (413 above).")
    max_batch_items: int = Field(1000, ge=1, description="Most notifications in one JSON array (413 above).")
    record: Path | None = Field(None, description="Append every received body with its receipt time to this JSON-lines file, for `replay`. Personal data (phone numbers).")
    record_max_bytes: int = Field(100 * 1024 * 1024, ge=4096, description="Rotate the --record file when it would grow past this size.")
    record_keep: int = Field(5, ge=0, description="Rotated --record files kept (FILE.1 is the newest).")
    exemplars: bool = Field(True, description="Attach the call id as an exemplar to duration histograms (OpenMetrics).")
    data_dir: Path | None = Field(None, description="Writable directory for the state and record files (a relative --state-file or --record is taken from here).")
    state_file: Path | None = Field(None, description="Save calls in progress here on shutdown and load them on start.")
    state_interval: float | None = Field(None, gt=0, description="Also save the state every this many seconds (limits what a hard kill loses).")
    state_max_age: float = Field(MAX_AGE_SECONDS, gt=0, description="Load a --state-file only if it was saved at most this many seconds ago; an older one is set aside (its open calls have likely ended unseen).")
    allow_cidr: Networks = Field([], description="Accept requests only from these networks (repeatable; 403 otherwise). Health checks stay open.")
    trusted_proxy: Networks = Field([], description="Reverse proxies whose X-Forwarded-For is believed (repeatable).")
    tls_cert: FilePath | None = Field(None, description="PEM certificate (chain) to serve the main listener over HTTPS.")
    tls_key: FilePath | None = Field(None, description="PEM private key of --tls-cert.")
    max_concurrent_requests: int = Field(256, ge=1, description="Notification requests processed at once once their body is in; more get 429 (overloaded).")
    max_buffered_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Bytes all request bodies in flight may take at once (at least --max-body-bytes); a body beyond gets 429 (overloaded). With --max-connections it bounds the HTTP side's memory.")
    max_connections: int | None = Field(None, ge=1, description="Open connections accepted at once; beyond, the longest-idle one is closed or the new one gets 429 (too_many_connections). Default: the open-file limit (raised to its hard limit at start) less 512, at most 512.")
    read_timeout: float = Field(30.0, gt=0, description="Seconds to receive a request's headers and body (408 timeout), and to keep an idle connection.")
    event_loop: Literal["asyncio", "uvloop"] = Field("asyncio", description="Event loop; uvloop (pip install 'mtt-call-exporter[uvloop]') is faster.")
    state_backend: SecretStr | None = Field(
        None,
        description="Call state shared by replicas (Redis 6.2+ or Valkey): redis://[:PASSWORD@]HOST:PORT/DB "
        "(rediss:// for TLS), redis+cluster://HOST:PORT, redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB]; "
        "default: this process's memory.",
    )
    label_map: FilePath | None = Field(
        None, description="YAML file naming lines (sip_id -> name) and destinations (redirect number -> name); "
        "reloaded on SIGHUP and POST /-/reload. Without it every line and destination is 'other'.")
    max_lines: int = Field(50, ge=1, le=1000, description="Most distinct line names the --label-map may have.")
    max_destinations: int = Field(50, ge=1, le=1000, description="Most distinct destination names the --label-map may have.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")

    @field_validator("log_level", "log_format", "event_loop", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @field_validator("allow_cidr", "trusted_proxy", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
        for item in value if isinstance(value, list) else ():
            _host_bits(item)
        return value

    @model_validator(mode="after")
    def _files(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.state_interval is not None and self.state_file is None:
            raise ValueError("--state-interval needs --state-file")
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise ValueError(f"--data-dir {self.data_dir} is not a directory")
        state = self.state_path
        if state is not None and not os.access(state.parent, os.W_OK | os.X_OK):
            raise ValueError(f"--state-file: directory {state.parent} is not writable")
        return self

    def _in_data_dir(self, path: Path | None) -> Path | None:
        return self.data_dir / path if path is not None and self.data_dir is not None else path

    @property
    def state_path(self) -> Path | None:
        """--state-file, taken relative to --data-dir when that is set."""
        return self._in_data_dir(self.state_file)

    @property
    def record_path(self) -> Path | None:
        """--record, taken relative to --data-dir when that is set."""
        return self._in_data_dir(self.record)

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None  # an empty variable means no token
        return value


    @field_validator("state_backend")
    @classmethod
    def _state_backend(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        check_url(value.get_secret_value())
        return value


def _host_bits(item: object) -> None:
    """'10.0.0.1/8' is refused by name: the host bits are set, and the network it meant is shown."""
    if not isinstance(item, str) or "/" not in item:
        return
    try:
        ipaddress.ip_network(item.strip())
    except ValueError as error:
        if "host bits set" not in str(error):
            return  # not a network at all: pydantic says so
        network = ipaddress.ip_network(item.strip(), strict=False)
        address = item.strip().partition("/")[0]
        raise ValueError(f"{item.strip()} has host bits set: the network is {network}"
                         f" (or give the address {address} alone)") from None


#: Metavars of the help (pydantic-settings would show the type: `{SecretStr,null}`).
METAVARS = {
    "listen": "HOST:PORT", "metrics_listen": "HOST:PORT", "token": "SECRET", "call_ttl": "SECONDS",
    "max_calls": "N", "call_end_grace": "SECONDS", "max_body_bytes": "BYTES", "max_buffered_bytes": "BYTES", "max_batch_items": "N",
    "record": "FILE", "record_max_bytes": "BYTES", "record_keep": "N", "data_dir": "DIR", "state_file": "FILE",
    "state_interval": "SECONDS", "allow_cidr": "CIDR", "trusted_proxy": "CIDR", "tls_cert": "FILE",
    "tls_key": "FILE", "max_concurrent_requests": "N", "max_connections": "N", "read_timeout": "SECONDS", "state_backend": "URL",
    "label_map": "FILE", "max_lines": "N", "max_destinations": "N",
}

USAGE = """%(prog)s [OPTION ...]
       %(prog)s --version
       %(prog)s simulate [--help] [OPTION ...]
       %(prog)s replay [--help] [OPTION ...] FILE ...
       %(prog)s healthcheck [--help]"""

EPILOG = f"""\
environment:
  Every option is also read from {ENV_PREFIX}<OPTION> (upper case, '_' for '-'), e.g.
  {ENV_PREFIX}CALL_TTL=3600; a flag wins over the variable. Pass secrets (--token,
  --state-backend) this way: a flag shows in `ps`, in shell history and in make's echo.

commands:
  simulate   post simulated MTT call traffic to a running exporter and print, or --check,
             the exact numbers it must show (mtt-exporter simulate --help)
  replay     re-post bodies recorded with --record (mtt-exporter replay --help)
  healthcheck
             ask a running exporter's /-/healthy: a container's HEALTHCHECK
             (mtt-exporter healthcheck --help)

Without a command the exporter starts: POST /notify, GET /metrics, /-/healthy, /-/ready,
POST /-/reload (the --label-map, as SIGHUP does)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so `load` reports every problem the same way."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _add_argument(parser: Any, *names: str, **kwargs: Any) -> Any:
    dest = kwargs.get("dest", "")
    if kwargs.get("metavar") is not None:
        kwargs["metavar"] = METAVARS.get(dest, kwargs["metavar"])
    help_text = kwargs.get("help")
    if help_text and help_text != argparse.SUPPRESS and dest in Settings.model_fields:
        kwargs["help"] = help_text.replace("(default: null)", "(default: unset)") + f" [env: {ENV_PREFIX}{dest.upper()}]"
    return parser.add_argument(*names, **kwargs)


def cli_source(args: list[str]) -> CliSettingsSource[Settings]:
    """The command line of the exporter, with readable metavars, the environment variable of each
    option and the commands in the help."""
    parser = _Parser(prog="mtt-exporter", usage=USAGE, description=Settings.__doc__, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return CliSettingsSource(Settings, cli_parse_args=args, root_parser=parser, add_argument_method=_add_argument)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each MTT_EXPORTER_* variable that is no option (it would be ignored),
    naming the closest option."""
    known = [name.upper() for name in Settings.model_fields]
    warnings = []
    for name in sorted(environ):
        option = name.upper().removeprefix(ENV_PREFIX)
        if name.upper().startswith(ENV_PREFIX) and option not in known:
            close = difflib.get_close_matches(option, known, n=1, cutoff=0.6)  # the prefix would match anything
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
            warnings.append(f"{name} is not an option and is ignored{hint}")
    return warnings


def load(argv: list[str] | None = None) -> Settings:
    """Settings from flags and environment; on any invalid value print every error and exit 1."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return Settings(_cli_settings_source=cli_source(args))  # type: ignore[call-arg]
    except ValidationError as error:
        lines = [
            f"  --{str(e['loc'][0]).replace('_', '-')}: {e['msg'].removeprefix('Value error, ')}" if e["loc"]
            else f"  {e['msg'].removeprefix('Value error, ')}"  # a rule across options
            for e in error.errors()
        ]
        print("mtt-exporter: invalid settings:\n" + "\n".join(lines), file=sys.stderr)
    except Exception as error:  # argparse errors (unknown flag, missing value)
        print(f"mtt-exporter: {error}", file=sys.stderr)
    raise SystemExit(1)
