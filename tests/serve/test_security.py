"""Keys, limits, body limits, secrets, opt-outs and TLS against a live server."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from pathlib import Path

import httpx
import pytest
from serve_helpers import KEYS, Serve, key_file, pipeline_text

from engine.providers.stub import StubProvider
from engine.serve.limits import client_ip

ASK = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("authorization", "status"), [
    (None, 401), ("Bearer sk-wrong", 401), (f"Basic {KEYS['alice']}", 401),
    (f"Bearer {KEYS['bob']}", 403),  # bob's key is for `batch` only
    (f"Bearer {KEYS['alice']}", 200),
])
async def test_keys_are_checked_and_scoped(serve: Serve, authorization: str | None,
                                           status: int) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        response = await http.post("/v1/chat/completions", json=ASK, headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "invalid_api_key"
    if status == 403:
        assert response.json()["error"]["code"] == "pipeline_not_allowed"


async def test_a_key_has_its_own_limit_and_says_when_to_retry(serve: Serve,
                                                              tmp_path: Path) -> None:
    keys = key_file(tmp_path, alice={"rate": "2/min"})
    async with serve(keys=keys) as live, httpx.AsyncClient(base_url=live.url) as http:
        codes = [(await http.post("/v1/chat/completions", json=ASK,
                                  headers=live.headers())).status_code for _ in range(2)]
        refused = await http.post("/v1/chat/completions", json=ASK, headers=live.headers())
        other = await http.post("/v1/pipelines/batch/runs", json={"question": "x"},
                                headers=live.headers("bob"))
    assert codes == [200, 200]
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 30
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert other.status_code == 200  # bob's key has its own bucket


async def test_the_ip_limit_believes_forwarded_for_only_from_trusted_proxies(
        serve: Serve) -> None:
    async def calls(live_url: str, headers: dict[str, str], forwarded: list[str]) -> list[int]:
        async with httpx.AsyncClient(base_url=live_url) as http:
            return [(await http.get("/v1/models", headers={**headers,
                                                           "X-Forwarded-For": f}))
                    .status_code for f in forwarded]

    clients = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    async with serve(rate_per_ip="2/min", trusted_proxies=("127.0.0.1",)) as live:
        trusted = await calls(live.url, live.headers(), clients)
    async with serve(rate_per_ip="2/min") as live:
        untrusted = await calls(live.url, live.headers(), clients)
    assert trusted == [200, 200, 200]   # three clients behind our proxy
    assert untrusted == [200, 200, 429]  # one peer forging headers


def test_the_client_address_is_the_first_untrusted_hop() -> None:
    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_ip("10.0.0.5", "198.51.100.7, 10.0.0.9", proxies) == "198.51.100.7"
    assert client_ip("10.0.0.5", "1.2.3.4, 198.51.100.7", proxies) == "198.51.100.7"
    assert client_ip("198.51.100.9", "1.2.3.4", proxies) == "198.51.100.9"
    assert client_ip("10.0.0.5", "not-an-ip", proxies) == "10.0.0.5"


async def test_wrong_keys_spend_the_address_budget(serve: Serve) -> None:
    async with (serve(rate_per_ip="3/min") as live,
                httpx.AsyncClient(base_url=live.url) as http):
        codes = [(await http.get("/v1/models", headers={"Authorization": f"Bearer guess{i}"}))
                 .status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]


async def test_bodies_over_the_limit_get_413(serve: Serve) -> None:
    big = b'{"model": "echo", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'

    async def chunked() -> object:
        for start in range(0, len(big), 1000):
            yield big[start:start + 1000]

    async with serve(max_body=2000) as live, httpx.AsyncClient(base_url=live.url) as http:
        declared = await http.post("/v1/chat/completions", content=big, headers=live.headers())
        streamed = await http.post("/v1/chat/completions", content=chunked(),  # type: ignore[arg-type]
                                   headers=live.headers())
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"


async def test_failed_runs_show_no_secret_and_no_traceback(serve: Serve, stub: StubProvider,
                                                           tmp_path: Path) -> None:
    secret = "sk-live-PLANTED-SECRET-123"
    broken = tmp_path / "leaky.yaml"
    broken.write_text(pipeline_text(stub, "leaky", model="leaky", api_key=secret))
    stub.plan("leaky", ["500"] * 5)
    async with serve(files=(broken,)) as live, httpx.AsyncClient(base_url=live.url) as http:
        response = await http.post("/v1/chat/completions", headers=live.headers(),
                                   json={**ASK, "model": "leaky"})
        streamed = await http.post("/v1/chat/completions", headers=live.headers(),
                                   json={**ASK, "model": "leaky", "stream": True})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "pipeline_error" and error["stage"] == "answer"
    for text in (response.text, streamed.text):
        assert secret not in text and "Traceback" not in text and 'File "' not in text
    assert '"error"' in streamed.text and streamed.text.endswith("data: [DONE]\n\n")


async def test_an_opted_out_user_gets_403_and_no_processing(serve: Serve, stub: StubProvider,
                                                            tmp_path: Path) -> None:
    from engine.audit import AuditLog, OptOuts

    OptOuts(tmp_path / "optout.txt").add("alice")
    audit = tmp_path / "audit"
    async with (serve(audit_dir=audit, opt_out=tmp_path / "optout.txt") as live,
                httpx.AsyncClient(base_url=live.url) as http):
        refused = await http.post("/v1/chat/completions", json=ASK, headers=live.headers())
        allowed = await http.post("/v1/pipelines/batch/runs", json={"question": "q"},
                                  headers=live.headers("bob"))
    assert refused.status_code == 403 and "opted out" in refused.json()["error"]["message"]
    assert allowed.status_code == 200
    assert stub.requests_for("fast") and all(r.body["messages"][-1]["content"] != "hi"
                                             for r in stub.requests_for("fast"))
    assert AuditLog(audit).verify().ok


async def test_tls_with_a_self_signed_certificate(serve: Serve, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    async with (serve(tls_cert=cert, tls_key=key) as live,
                httpx.AsyncClient(base_url=live.url, verify=False) as http):
        assert live.url.startswith("https://")
        response = await http.get("/healthz")
    assert response.status_code == 200


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_slow_headers_are_cut_off(serve: Serve) -> None:
    async with serve(header_timeout=0.3) as live:
        port = int(live.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 3)
        writer.close()
        await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 408")


async def test_slow_headers_of_a_kept_alive_connection_s_next_request_are_cut_off(
        serve: Serve) -> None:
    async with serve(header_timeout=0.3) as live:
        port = int(live.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the next one never finishes
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 3)
        writer.close()
        await writer.wait_closed()
    assert first.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in rest
