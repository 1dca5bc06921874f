"""Settings and logging: flags, environment, errors listed, log lines."""

from __future__ import annotations

import json
import logging

import pytest

from mtt_exporter.log import JsonFormatter, TextFormatter
from mtt_exporter import __main__ as cli, state
from mtt_exporter.settings import Settings, load, split_host_port, unknown_variables


def test_flags_and_environment(monkeypatch):
    monkeypatch.setenv("MTT_EXPORTER_CALL_TTL", "60")
    monkeypatch.setenv("MTT_EXPORTER_LOG_FORMAT", "JSON")
    settings = load(["--max-calls", "10", "--call-end-grace", "2.5", "--no-exemplars", "--token", "tok-42"])
    assert (settings.call_ttl, settings.log_format, settings.max_calls, settings.call_end_grace) == (60, "json", 10, 2.5)
    assert settings.exemplars is False
    assert settings.token is not None and settings.token.get_secret_value() == "tok-42"
    assert "tok-42" not in repr(settings)


def test_defaults_work_on_a_fresh_machine():
    settings = Settings(_cli_parse_args=[])  # type: ignore[call-arg]
    assert split_host_port(settings.listen) == ("0.0.0.0", 9888)
    assert (settings.call_ttl, settings.max_calls, settings.call_end_grace) == (21600, 500_000, 15)
    assert settings.token is None and settings.metrics_listen is None


def test_empty_token_variable_means_no_token(monkeypatch):
    monkeypatch.setenv("MTT_EXPORTER_TOKEN", "")
    assert load([]).token is None


def test_invalid_settings_exit_1_listing_every_error(capsys):
    with pytest.raises(SystemExit) as caught:
        load(["--call-ttl", "-1", "--log-level", "loud", "--listen", "nowhere", "--max-calls", "0"])
    assert caught.value.code == 1
    err = capsys.readouterr().err
    for flag in ("--call-ttl", "--log-level", "--listen", "--max-calls"):
        assert flag in err


def test_unknown_flag_exits_1(capsys):
    with pytest.raises(SystemExit) as caught:
        load(["--no-such-flag"])
    assert caught.value.code == 1
    assert "no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9888", ("127.0.0.1", 9888)), (":9888", ("0.0.0.0", 9888)), ("[::1]:80", ("::1", 80))],
)
def test_split_host_port(value, expected):
    assert split_host_port(value) == expected


@pytest.mark.parametrize("value", ["9888", "host:", "host:port", "host:70000"])
def test_split_host_port_rejects(value):
    with pytest.raises(ValueError):
        split_host_port(value)


def _record() -> logging.LogRecord:
    record = logging.LogRecord("mtt_exporter", logging.INFO, __file__, 1, "rejected request", None, None)
    record.reason = "malformed"
    return record


def test_json_log_line():
    line = json.loads(JsonFormatter().format(_record()))
    assert (line["level"], line["msg"], line["reason"]) == ("info", "rejected request", "malformed")


def test_text_log_line():
    assert TextFormatter().format(_record()).endswith("rejected request reason=malformed")


# --- options of issue #5: networks, TLS, state, limits -----------------------------------


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param(["--allow-cidr", "10.0.0.0/8", "--allow-cidr", "192.0.2.7"], None, ["10.0.0.0/8", "192.0.2.7/32"], id="repeated flag"),
        pytest.param(["--allow-cidr", "10.0.0.0/8,2001:db8::/32"], None, ["10.0.0.0/8", "2001:db8::/32"], id="comma-separated flag"),
        pytest.param([], "10.0.0.0/8, 192.0.2.7", ["10.0.0.0/8", "192.0.2.7/32"], id="comma-separated env"),
        pytest.param([], '["10.0.0.0/8", "::1"]', ["10.0.0.0/8", "::1/128"], id="JSON list env"),
        pytest.param([], "", [], id="empty env"),
    ],
)
def test_network_lists(monkeypatch, args, env, expected):
    if env is not None:
        monkeypatch.setenv("MTT_EXPORTER_ALLOW_CIDR", env)
    assert [str(n) for n in load(args).allow_cidr] == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--allow-cidr", "10.0.0.1/8"], "--allow-cidr: 10.0.0.1/8 has host bits set: the network is 10.0.0.0/8",
                     id="host bits set"),
        pytest.param(["--trusted-proxy", "2001:db8::1/32"], "has host bits set: the network is 2001:db8::/32",
                     id="host bits set, IPv6"),
        pytest.param(["--trusted-proxy", "proxy.local"], "--trusted-proxy", id="a name, not a network"),
        pytest.param(["--tls-cert", __file__], "--tls-cert and --tls-key go together", id="cert without key"),
        pytest.param(["--tls-cert", "/no/such.pem", "--tls-key", "/no/such.pem"], "--tls-key", id="missing files"),
        pytest.param(["--state-interval", "60"], "--state-interval needs --state-file", id="interval without file"),
        pytest.param(["--data-dir", "/no/such/dir"], "not a directory", id="missing data dir"),
        pytest.param(["--state-file", "/no/such/dir/state.json"], "is not writable", id="state file in a missing dir"),
        pytest.param(["--max-concurrent-requests", "0"], "--max-concurrent-requests", id="no requests at all"),
        pytest.param(["--read-timeout", "0"], "--read-timeout", id="zero timeout"),
    ],
)
def test_invalid_new_options(capsys, args, message):
    with pytest.raises(SystemExit):
        load(args)
    assert message in capsys.readouterr().err


def test_state_file_is_taken_from_the_data_dir(tmp_path):
    assert load(["--data-dir", str(tmp_path), "--state-file", "state.json"]).state_path == tmp_path / "state.json"
    assert load(["--state-file", str(tmp_path / "s.json")]).state_path == tmp_path / "s.json"
    assert load([]).state_path is None
    assert load(["--data-dir", str(tmp_path), "--record", "bodies.jsonl"]).record_path == tmp_path / "bodies.jsonl"


def test_label_map_from_flag_or_environment(monkeypatch, tmp_path, capsys):
    path = tmp_path / "labels.yml"
    path.write_text("lines:\n")
    monkeypatch.setenv("MTT_EXPORTER_LABEL_MAP", str(path))
    monkeypatch.setenv("MTT_EXPORTER_MAX_LINES", "5")
    settings = load(["--max-destinations", "7"])
    assert (settings.label_map, settings.max_lines, settings.max_destinations) == (path, 5, 7)
    with pytest.raises(SystemExit):
        load(["--label-map", str(tmp_path / "missing.yml")])
    assert "--label-map" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("present", "absent"),
    [
        pytest.param(["mtt-exporter simulate", "mtt-exporter replay", "mtt-exporter healthcheck", "--version"], [],
                     id="names the commands"),
        pytest.param(["[env: MTT_EXPORTER_TOKEN]", "[env: MTT_EXPORTER_STATE_BACKEND]", "MTT_EXPORTER_<OPTION>"], [],
                     id="names the variables"),
        pytest.param(["--token SECRET", "--state-backend URL", "--allow-cidr CIDR", "--call-ttl SECONDS",
                      "(default: unset)"], ["SecretStr", "null", "IPvAnyNetwork", "{Path", "{float"],
                     id="readable metavars"),
    ],
)
def test_help_stands_on_its_own(capsys, present, absent):
    with pytest.raises(SystemExit) as caught:
        load(["--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # as wrapped for any terminal width
    assert all(text in out for text in present), out
    assert not [text for text in absent if text in out]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({"MTT_EXPORTER_CALL_TTLL": "60"},
                     ["MTT_EXPORTER_CALL_TTLL is not an option and is ignored; did you mean MTT_EXPORTER_CALL_TTL?"],
                     id="one letter too many"),
        pytest.param({"mtt_exporter_tokn": "x"}, ["mtt_exporter_tokn is not an option and is ignored; did you mean "
                                                   "MTT_EXPORTER_TOKEN?"], id="lower case"),
        pytest.param({"MTT_EXPORTER_ALLOWED_CIDRS": "x"}, ["MTT_EXPORTER_ALLOWED_CIDRS is not an option and is ignored; "
                                                         "did you mean MTT_EXPORTER_ALLOW_CIDR?"], id="plural"),
        pytest.param({"MTT_EXPORTER_XYZZY": "1"}, ["MTT_EXPORTER_XYZZY is not an option and is ignored"], id="nothing close"),
        pytest.param({"MTT_EXPORTER_TOKEN": "x", "MTT_EXPORTER_LOG_LEVEL": "debug", "HOME": "/root"}, [],
                     id="known ones and others"),
    ],
)
def test_misspelt_variables_are_named(environ, expected):
    assert unknown_variables(environ) == expected


def test_start_warns_of_misspelt_variables_and_a_missing_redis_client(monkeypatch, capsys):
    monkeypatch.setenv("MTT_EXPORTER_CALL_TTLL", "60")
    monkeypatch.setattr(state, "aioredis", None)  # as without the `redis` extra
    with pytest.raises(SystemExit) as caught:
        cli.main(["--state-backend", "redis://127.0.0.1:9/0"])
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert "did you mean MTT_EXPORTER_CALL_TTL?" in err
    assert "pip install 'mtt-call-exporter[redis]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2
