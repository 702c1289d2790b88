"""MONAI Label's authentication on the MedSynth app: a real server with MONAI_LABEL_AUTH_ENABLE, and a stand-in for
the identity server's realm on 127.0.0.1 that serves only what MONAI Label reads from it (the realm's public key).
Tokens are RS256 JWTs signed here with the matching private key, as Keycloak would sign them."""
from __future__ import annotations

import base64
import contextlib
import http.server
import json
import threading
import time

import pytest

from conftest import SHARED
from server_fixture import free_port, running_server, write_crops

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
import requests  # noqa: E402
import jwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

USER_ROLE = "monailabel-user"


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@contextlib.contextmanager
def realm(public_key):
    """http://127.0.0.1:PORT/realms/medsynth answering {"public_key": <base64 DER>} like a Keycloak realm."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps({"realm": "medsynth", "public_key": base64.b64encode(der).decode()}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/realms/medsynth" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if self.path == "/realms/medsynth" else b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/realms/medsynth"
    finally:
        server.shutdown()
        server.server_close()


def _token(key, roles, expires_in: float = 600) -> str:
    claims = {"preferred_username": "radiologist", "realm_access": {"roles": list(roles)},
              "exp": int(time.time() + expires_in)}
    return jwt.encode(claims, key, algorithm="RS256")


@pytest.fixture(scope="module")
def signing_key():
    return _key()


@pytest.fixture(scope="module")
def server(signing_key, tmp_path_factory):
    datastore = write_crops(SHARED, tmp_path_factory.mktemp("datastore"))
    with realm(signing_key.public_key()) as realm_uri:
        env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm_uri}
        try:
            with running_server(datastore, tmp_path_factory.mktemp("server"), env=env) as url:
                yield url
        except RuntimeError as err:
            pytest.fail(str(err))


def _info(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{url}/info/", headers=headers, timeout=60)


def test_a_request_without_a_token_is_refused(server):
    response = _info(server)
    assert response.status_code == 401, response.text
    assert "sub01" not in response.text
    infer = requests.post(f"{server}/infer/linear", params={"image": "sub01_T1", "output": "json"},
                          files={"params": (None, json.dumps({"target": "FLAIR"}))}, timeout=60)
    assert infer.status_code == 401
    assert requests.get(f"{server}/datastore/", params={"output": "all"}, timeout=60).status_code == 401


def test_a_forged_or_expired_token_is_refused(server, signing_key):
    assert _info(server, _token(_key(), [USER_ROLE])).status_code == 401  # signed by another key
    assert _info(server, _token(signing_key, [USER_ROLE], expires_in=-60)).status_code == 401
    assert _info(server, "not-a-token").status_code == 401


def test_a_token_without_the_user_role_is_forbidden(server, signing_key):
    assert _info(server, _token(signing_key, ["someone-else"])).status_code == 403


def test_a_valid_user_token_is_served(server, signing_key):
    token = _token(signing_key, [USER_ROLE])
    response = _info(server, token)
    assert response.status_code == 200, response.text
    assert "linear" in response.json()["models"]
    infer = requests.post(f"{server}/infer/linear", params={"image": "sub01_T1", "output": "json"},
                          headers={"Authorization": f"Bearer {token}"},
                          files={"params": (None, json.dumps({"target": "FLAIR"}))}, timeout=300)
    assert infer.status_code == 200, infer.text
    assert infer.json()["checkpoint"] == "linear_T1+T2_to_FLAIR.pt"
    # training needs the admin role
    train = requests.post(f"{server}/train/linear", params={"run_sync": "true"}, json={"target": "FLAIR"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert train.status_code == 403
