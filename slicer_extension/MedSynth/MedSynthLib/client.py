"""REST client of the MedSynth MONAI Label server (``apps/medsynth``): info, session upload, synthesis, training.

Only ``requests`` and the standard library (both ship with 3D Slicer). Multipart answers are parsed with
``email.parser`` -- never with the ``cgi`` module, which Python 3.13 removed (the official MONAI Label Slicer client
still uses it).

Every failure is a :class:`MedSynthError`: :class:`ServerError` carries the HTTP status and the server's own
``{"detail": ...}`` message, :class:`ConnectionFailed` says which address could not be reached and why,
:class:`Cancelled` is raised when the caller's cancel event is set.
"""
from __future__ import annotations

import email.parser
import email.policy
import json
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import requests

SYNTHESIS_TYPE = "synthesis"
DEFAULT_PORT = 8000
# (connect, read) seconds. Reading covers the whole inference on the server: a deep model on a CPU server can take
# minutes for a full volume.
DEFAULT_TIMEOUT: Tuple[float, float] = (10.0, 900.0)
SHORT_TIMEOUT: Tuple[float, float] = (10.0, 60.0)
RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
UPLOAD_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


class MedSynthError(Exception):
    """Any failure of a MedSynth request; ``str(err)`` is a one-line message meant for the user."""


class ConnectionFailed(MedSynthError):
    pass


class ServerError(MedSynthError):
    """The server answered with an HTTP error; ``detail`` is its own message."""

    def __init__(self, status: int, detail: str, url: str = ""):
        self.status, self.detail, self.url = status, detail, url
        super().__init__(f"server error {status}: {detail}")


class Cancelled(MedSynthError):
    def __init__(self, message: str = "cancelled"):
        super().__init__(message)


@dataclass
class SynthesisResult:
    path: str  # the result file on this machine
    params: Dict[str, Any] = field(default_factory=dict)  # the server's answer: inputs used, checkpoint, ...
    extras: Dict[str, str] = field(default_factory=dict)  # field -> path of further images (an uncertainty map)


def normalise_address(address: str) -> str:
    """``gpu01`` -> ``http://gpu01:8000``; ``https://host/prefix/`` -> ``https://host/prefix``."""
    address = (address or "").strip()
    if not address:
        raise ValueError("no server address")
    if "://" not in address:
        address = f"http://{address}"
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a server address: {address!r} (expected http://host:port)")
    netloc = parts.netloc
    if parts.port is None and parts.scheme == "http" and not parts.path.strip("/"):
        netloc = f"{netloc}:{DEFAULT_PORT}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def parse_multipart(content_type: str, body: bytes) -> Dict[str, Tuple[Optional[str], bytes]]:
    """field name -> (file name or None, raw bytes) of a multipart/form-data body, with ``email.parser``."""
    if not content_type.lower().startswith("multipart/"):
        raise MedSynthError(f"expected a multipart answer, got {content_type or 'no content type'}")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise MedSynthError("the server's multipart answer cannot be parsed")
    fields: Dict[str, Tuple[Optional[str], bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        fields[str(name)] = (part.get_filename(), payload if payload is not None else b"")
    return fields


def _filename_from(headers: Mapping[str, str]) -> Optional[str]:
    found = re.search(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)"?', headers.get("content-disposition", ""))
    return found.group(1) if found else None


def _upload_extension(name: str) -> str:
    """The extension of a single-file volume format (a .mhd/.nhdr header would arrive without its data file)."""
    lower = name.lower()
    found = next((ext for ext in UPLOAD_EXTENSIONS if lower.endswith(ext)), None)
    if found is None:
        raise ValueError(f"{name}: upload single-file volumes ({', '.join(UPLOAD_EXTENSIONS)})")
    return found


def _result_extension(name: Optional[str]) -> str:
    lower = (name or "").lower()
    return next((ext for ext in RESULT_EXTENSIONS if lower.endswith(ext)), ".nii.gz")


class MedSynthClient:
    """``MedSynthClient("http://gpu01:8000").synthesize("linear", "FLAIR", session_id=...)``.

    ``token``: a bearer token for a server started with MONAI Label authentication (``login`` fetches one).
    ``timeout``: (connect, read) seconds of the long requests (upload, inference); short ones use at most 60 s.
    """

    def __init__(self, address: str, token: Optional[str] = None,
                 timeout: Tuple[float, float] = DEFAULT_TIMEOUT):
        self.address = normalise_address(address)
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json, multipart/form-data, */*"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"MedSynthClient({self.address!r})"

    def close(self) -> None:
        self.session.close()

    # ---- plumbing ----------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, timeout=None, **kwargs) -> requests.Response:
        url = f"{self.address}{path}"
        try:
            try:
                response = self.session.request(method, url, timeout=timeout or SHORT_TIMEOUT, **kwargs)
            except requests.ConnectionError as err:
                # A kept-alive connection the server dropped (uvicorn closes it after an unhandled error): one retry
                # on a fresh connection for requests that carry no upload and change nothing twice.
                if method not in ("GET", "DELETE") or "aborted" not in str(err).lower():
                    raise
                self.session.close()
                response = self.session.request(method, url, timeout=timeout or SHORT_TIMEOUT, **kwargs)
        except requests.Timeout as err:
            raise ConnectionFailed(f"{self.address}: no answer in time ({err.__class__.__name__}); "
                                   "is the server busy or the timeout too short?") from None
        except requests.ConnectionError as err:
            raise ConnectionFailed(f"cannot reach the MedSynth server at {self.address}: "
                                   f"{_short_reason(err)}") from None
        except requests.RequestException as err:
            raise ConnectionFailed(f"{self.address}: {err}") from None
        if response.status_code >= 400:
            if response.status_code >= 500:
                self.session.close()  # the server may have dropped this connection: do not reuse it
            raise ServerError(response.status_code, _detail(response), url)
        return response

    @staticmethod
    def _json(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise MedSynthError(f"{response.url}: the answer is not JSON: {response.text[:200]!r}") from None

    # ---- server description ------------------------------------------------------------------------------------
    def info(self) -> Dict[str, Any]:
        return self._json(self._request("GET", "/info/"))

    def synthesis_models(self, info: Optional[Mapping[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
        """name -> /info entry of every model of type "synthesis" (segmentation models of the same server are left
        out)."""
        info = self.info() if info is None else info
        return {name: dict(model) for name, model in (info.get("models") or {}).items()
                if isinstance(model, dict) and model.get("type") == SYNTHESIS_TYPE}

    def login(self, username: str, password: str) -> str:
        """Fetch a bearer token from a server started with MONAI Label authentication and use it from now on."""
        answer = self._json(self._request("POST", "/auth/token", data={"username": username, "password": password}))
        token = answer.get("access_token")
        if not token:
            raise MedSynthError(f"{self.address}: the server gave no access token")
        self.session.headers["Authorization"] = f"Bearer {token}"
        return token

    # ---- sessions ----------------------------------------------------------------------------------------------
    def upload_session(self, files: Mapping[str, str], expiry: int = 600,
                       cancel_event: Optional[threading.Event] = None) -> str:
        """Upload contrast -> local file as one session (one study); returns its session id.

        Files are sent under their contrast name (``T1.nii.gz``) whatever they are called here, so that the server
        recognises each one; the server keeps a session ``expiry`` seconds (at most its own
        MONAI_LABEL_SESSION_EXPIRY)."""
        if not files:
            raise ValueError("no input file to upload")
        _check_cancel(cancel_event)
        handles, parts = [], []
        try:
            for contrast, path in files.items():
                path = Path(path)
                _upload_extension(path.name)  # checked before anything is sent
                if not path.is_file():
                    raise MedSynthError(f"{contrast}: no file {path}")
                handle = path.open("rb")
                handles.append(handle)
                parts.append(("files", (f"{contrast}{_upload_extension(path.name)}", handle,
                                        "application/octet-stream")))
            answer = self._call_cancellable(
                cancel_event, lambda: self._json(self._request("PUT", "/session/", params={"expiry": int(expiry)},
                                                              files=parts, timeout=self.timeout)))
        finally:
            for handle in handles:
                handle.close()
        session_id = answer.get("session_id") if isinstance(answer, dict) else None
        if not session_id:
            raise MedSynthError(f"{self.address}: the session upload gave no session id: {answer!r}")
        return str(session_id)

    def delete_session(self, session_id: str) -> None:
        try:
            self._request("DELETE", f"/session/{session_id}")
        except ServerError as err:
            if err.status != 404:  # already expired: nothing to do
                raise

    # ---- synthesis ---------------------------------------------------------------------------------------------
    def synthesize(self, model: str, target: str, session_id: Optional[str] = None, image: Optional[str] = None,
                   inputs: Optional[Mapping[str, str]] = None, cancel_event: Optional[threading.Event] = None,
                   **options) -> str:
        """Synthesise ``target`` with ``model``; returns the path of the result file (a float32 volume on the grid
        of the first input). See :meth:`synthesize_result` for the options."""
        return self.synthesize_result(model, target, session_id=session_id, image=image, inputs=inputs,
                                      cancel_event=cancel_event, **options).path

    def synthesize_result(self, model: str, target: str, session_id: Optional[str] = None,
                          image: Optional[str] = None, inputs: Optional[Mapping[str, str]] = None,
                          cancel_event: Optional[threading.Event] = None, out_dir: Optional[str] = None,
                          intensity: Optional[str] = None, extension: str = ".nii.gz",
                          output: str = "multipart", uncertainty: bool = False) -> SynthesisResult:
        """One inference. The study is an uploaded session (``session_id``) or a datastore image id (``image``);
        ``inputs`` ({contrast: datastore image id}) adds or replaces contrasts. ``output`` "multipart" returns the
        server's params too (inputs and checkpoint used); "image" only the file. The result is written into
        ``out_dir`` (default: a new temporary folder); the caller owns the file.

        ``cancel_event``: when set, the wait is abandoned at once and :class:`Cancelled` raised. MONAI Label cannot
        stop an inference it has started; its answer is then discarded."""
        if not session_id and not image:
            raise ValueError("synthesize needs a session_id (uploaded files) or an image (datastore image id)")
        if output not in ("multipart", "image"):
            raise ValueError(f"output must be 'multipart' or 'image', not {output!r}")
        params: Dict[str, Any] = {"target": target, "result_extension": extension}
        if inputs:
            params["inputs"] = dict(inputs)
        if intensity:
            params["intensity"] = intensity
        if uncertainty:  # the map comes back as a further field of the multipart answer
            params["uncertainty"] = True
        query = {"session_id": session_id} if session_id else {"image": image}
        if output == "image":
            query["output"] = "image"

        def call() -> requests.Response:
            return self._request("POST", f"/infer/{model}", params=query,
                                 files={"params": (None, json.dumps(params), "application/json")},
                                 timeout=self.timeout)

        response = self._call_cancellable(cancel_event, call)
        content_type = response.headers.get("content-type", "")
        others: Dict[str, Tuple[Optional[str], bytes]] = {}
        if output == "image":
            name, data, answer = _filename_from(response.headers), response.content, {}
        elif content_type.lower().startswith("multipart/"):
            fields = parse_multipart(content_type, response.content)
            if "image" not in fields:
                raise MedSynthError(f"{model}: the server's answer holds no image "
                                    f"(fields: {', '.join(fields) or 'none'})")
            name, data = fields.pop("image")
            answer = _json_or_empty(fields.pop("params", (None, b""))[1])
            others = {key: value for key, value in fields.items() if value[0] and value[1]}
        else:
            raise MedSynthError(f"{model}: the server answered {content_type or 'without a content type'} "
                                f"instead of an image: {response.text[:300]!r}")
        if not data:
            raise MedSynthError(f"{model}: the server's result image is empty")
        folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="medsynth_result_"))
        folder.mkdir(parents=True, exist_ok=True)
        stamp = int(time.time() * 1000)
        paths = {}
        for key, (file_name, content) in {"image": (name, data), **others}.items():
            stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{target}_synthetic_{model}_{key}")
            paths[key] = folder / f"{stem}_{stamp}{_result_extension(file_name or extension)}"
            paths[key].write_bytes(content)
        return SynthesisResult(str(paths.pop("image")), answer, {key: str(p) for key, p in paths.items()})

    # ---- datastore ---------------------------------------------------------------------------------------------
    def upload_image(self, path: str, image_id: str, params: Optional[Mapping[str, Any]] = None,
                     cancel_event: Optional[threading.Event] = None) -> Dict[str, Any]:
        """Add one image to the server's datastore as ``image_id`` (MONAI Label ``PUT /datastore/?image=``); the
        file name's extension is kept. Returns the server's answer."""
        path = Path(path)
        _upload_extension(path.name)
        with path.open("rb") as handle:
            files = {"file": (f"{image_id}{_upload_extension(path.name)}", handle, "application/octet-stream")}
            return self._call_cancellable(cancel_event, lambda: self._json(self._request(
                "PUT", "/datastore/", params={"image": image_id}, data={"params": json.dumps(dict(params or {}))},
                files=files, timeout=self.timeout)))

    # ---- training ----------------------------------------------------------------------------------------------
    def start_training(self, model: str, params: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """POST /train/<model> with ``params`` (e.g. {"target": "FLAIR"}); returns the server's task record."""
        return self._json(self._request("POST", f"/train/{model}", json=dict(params or {}), timeout=self.timeout))

    def training_status(self, running_only: bool = False) -> Optional[Dict[str, Any]]:
        """The last (or the running) training task: {"id", "status", "details": [log lines], ...}; None when the
        server has none."""
        try:
            answer = self._request("GET", "/train/", params={"check_if_running": str(bool(running_only)).lower()})
        except ServerError as err:
            if err.status == 404:
                return None
            raise
        return self._json(answer)

    def stop_training(self) -> Dict[str, Any]:
        answer = self._request("DELETE", "/train/")
        return _json_or_empty(answer.content)

    # ---- cancellation ------------------------------------------------------------------------------------------
    @staticmethod
    def _call_cancellable(cancel_event: Optional[threading.Event], call):
        """Run ``call`` and return its value; when ``cancel_event`` is set first, raise :class:`Cancelled` at once
        (the request thread is abandoned: requests cannot interrupt a blocked read)."""
        if cancel_event is None:
            return call()
        _check_cancel(cancel_event)
        box: Dict[str, Any] = {}

        def run():
            try:
                box["value"] = call()
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = err

        worker = threading.Thread(target=run, name="medsynth-request", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            if cancel_event.is_set() and worker.is_alive():
                raise Cancelled()
        if "error" in box:
            raise box["error"]
        return box["value"]


def _check_cancel(cancel_event: Optional[threading.Event]) -> None:
    if cancel_event is not None and cancel_event.is_set():
        raise Cancelled()


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = (response.text or "").strip()[:500] or (response.reason or "no message")
        if response.status_code >= 500:
            text += " (the server gave no reason; see its log)"
        return text
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}]
            return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" if isinstance(d, dict)
                             else str(d) for d in detail)
        return str(detail)
    return json.dumps(body)[:500]


def _short_reason(err: Exception) -> str:
    text = str(err)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host",
                   "Temporary failure in name resolution", "Connection reset"):
        if marker in text:
            return marker.lower()
    return text[:200]


def _json_or_empty(data: bytes) -> Dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8")) if data else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    if value is None:  # DELETE /train/ with nothing running
        return {}
    return value if isinstance(value, dict) else {"value": value}
