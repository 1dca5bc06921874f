"""Strangers get nothing: --allow-cidr behind --trusted-proxy, TLS, and nothing secret in logs."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import ssl
import subprocess
import sys

import pytest

from .conftest import need_binary
from .process import ROOT, Exporter
from .test_server import TOKEN, logged, rejected, value

# the test client connects from 127.0.0.1
PROXY = "127.0.0.1"
OUTSIDE = "203.0.113.9"


@pytest.mark.parametrize(
    ("allow", "trusted", "forwarded", "ok"),
    [
        pytest.param(["10.0.0.0/8"], [], None, False, id="peer outside"),
        pytest.param(["127.0.0.0/8"], [], None, True, id="peer inside"),
        pytest.param(["10.0.0.0/8", "127.0.0.1"], [], None, True, id="second network"),
        pytest.param(["10.0.0.0/8"], [], ["10.1.2.3"], False, id="forwarded-for from an untrusted peer is ignored"),
        pytest.param(["10.0.0.0/8"], [PROXY], ["10.1.2.3"], True, id="behind a trusted proxy"),
        pytest.param(["10.0.0.0/8"], [PROXY], [f"10.1.2.3, {OUTSIDE}"], False, id="rightmost untrusted hop decides"),
        pytest.param(["10.0.0.0/8"], [PROXY, "192.168.0.0/16"], [f"{OUTSIDE}, 10.1.2.3, 192.168.7.7"], True,
                     id="spoofed left hops are ignored behind a proxy chain"),
        pytest.param(["10.0.0.0/8"], [PROXY], [OUTSIDE, "10.1.2.3"], True, id="two headers read as one list"),
        pytest.param(["10.0.0.0/8"], [PROXY], ["not-an-address"], False, id="garbage hop"),
        pytest.param(["10.0.0.0/8"], [PROXY], ["10.1.2.3:5060"], False, id="hop with a port"),
        pytest.param(["127.0.0.0/8"], [PROXY], [OUTSIDE], False, id="the proxy itself being allowed does not let its clients in"),
        pytest.param(["2001:db8::/32"], [PROXY], ["2001:db8::7"], True, id="IPv6 client"),
        pytest.param(["10.0.0.0/8"], [PROXY], ["::ffff:10.1.2.3"], True, id="IPv4-mapped IPv6"),
        pytest.param([], [PROXY], [OUTSIDE], True, id="no allow-list: proxies only name the client in logs"),
    ],
)
async def test_allow_list(make_client, seed_call, caplog, allow, trusted, forwarded, ok):
    caplog.set_level("INFO", logger="mtt_exporter")
    client, app = await make_client(allow_cidr=allow, trusted_proxy=trusted)
    headers = [("X-Forwarded-For", f) for f in forwarded or ()]
    response = await client.post("/notify", json=seed_call[2], headers=headers)
    assert response.status == (200 if ok else 403)
    assert rejected(app, "forbidden") == (0 if ok else 1)
    assert value(app, "mtt_call_attempts_total") == (1 if ok else 0)
    if not ok:
        assert (await response.json())["reason"] == "forbidden"
        assert "rejected request" in caplog.text and "forbidden" in logged(caplog)


async def test_forbidden_before_token_and_health_stays_open(make_client, seed_call, caplog):
    caplog.set_level("DEBUG")
    client, app = await make_client(allow_cidr=["10.0.0.0/8"], token=TOKEN)
    assert (await client.post(f"/notify/{TOKEN}", json=seed_call[2])).status == 403
    assert (await client.post(f"/notify?token={TOKEN}", json=seed_call[2])).status == 403
    assert (await client.get("/metrics")).status == 403  # call ids ride on exemplars
    assert (await client.get("/")).status == 403
    assert (await client.get("/-/healthy")).status == 200
    assert (await client.get("/-/ready")).status == 200
    assert rejected(app, "forbidden") == 4 and rejected(app, "unauthorized") == 0
    assert TOKEN not in logged(caplog)


async def test_logged_client_is_the_forwarded_one(make_client, seed_call, caplog):
    caplog.set_level("INFO", logger="mtt_exporter")
    client, _ = await make_client(trusted_proxy=[PROXY], token=TOKEN)
    await client.post("/notify", json=seed_call[2], headers={"X-Forwarded-For": OUTSIDE})
    assert f"peer={OUTSIDE}" in logged(caplog)


# --- TLS, with a real process --------------------------------------------------------------


def docker_healthcheck(exporter: Exporter) -> int:
    """Run the Dockerfile's HEALTHCHECK command against `exporter` (PID 1 in a container, so
    --pid here), without the exporter's flags or environment; its exit code."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    command = json.loads(re.search(r"HEALTHCHECK .*? CMD (\[.*\])", text)[1])
    assert command[0] == "mtt-exporter"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MTT_EXPORTER_")}
    assert exporter.process is not None
    return subprocess.run([sys.executable, "-m", "mtt_exporter", *command[1:], "--pid", str(exporter.process.pid)],
                          env=environment, capture_output=True, timeout=30).returncode


def test_docker_healthcheck_plain(tmp_path):
    exporter = Exporter(tmp_path, "--allow-cidr", "10.0.0.0/8").start()  # health stays open to the probe
    try:
        assert docker_healthcheck(exporter) == 0
    finally:
        exporter.stop()
    assert docker_healthcheck(exporter) != 0  # and it notices a dead exporter


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, made by the openssl CLI."""
    openssl = need_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=mtt-exporter-test",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_tls_listener(tmp_path, certificate, seed_call):
    cert, key = certificate
    trusting = ssl.create_default_context(cafile=str(cert))
    exporter = Exporter(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), "--token", TOKEN,
                        "--log-level", "debug", scheme="https", tls=trusting).start()
    try:
        assert docker_healthcheck(exporter) == 0  # found --tls-cert: asks over TLS
        assert exporter.post(seed_call, path=f"/notify/{TOKEN}")[0] == 200
        assert exporter.post(seed_call[2], path="/notify/wrong")[0] == 401
        basic = base64.b64encode(f"mtt:{TOKEN}".encode()).decode()
        assert exporter.request("POST", "/notify", seed_call[2], {"Authorization": f"Basic {basic}"})[0] == 200
        assert "mtt_calls_total{line=\"other\",outcome=\"answered\"} 1.0" in exporter.metrics()
        # a client that does not know the certificate is refused at the handshake
        with pytest.raises(ssl.SSLError):
            http.client.HTTPSConnection("127.0.0.1", exporter.port, context=ssl.create_default_context(), timeout=10).request("GET", "/-/healthy")
        # plain HTTP to the TLS port gets no HTTP answer
        plain = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("POST", "/notify", b"{}")
            plain.getresponse()
    finally:
        assert exporter.stop() == 0
    log = exporter.log()
    assert "tls=True" in log and "/notify/<token>" in log
    assert TOKEN not in log and "79684881033" not in log


def test_tls_key_that_does_not_match_exits_1(tmp_path, certificate):
    cert, _ = certificate
    other = tmp_path / "other-key.pem"
    subprocess.run([need_binary("openssl"), "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-out", str(other)], check=True, capture_output=True, timeout=60)
    exporter = Exporter(tmp_path, "--tls-cert", str(cert), "--tls-key", str(other))
    with pytest.raises(AssertionError, match="exited 1"):
        exporter.start()
    assert "cannot start" in exporter.log()
