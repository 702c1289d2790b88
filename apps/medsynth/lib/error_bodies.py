"""What MONAI Label's endpoints answer a client, made exact: malformed infer params are a 422 naming the problem (not a
bare 500), and no answer carries an absolute path of the server (error details, session replies).

MONAI Label parses ``params`` with ``json.loads`` inside its /infer endpoint, before any app code runs, and builds
session replies with ``SessionInfo.to_json``; both are replaced at those two places only.
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

from fastapi import HTTPException

# An absolute POSIX path: a slash, then name characters and further slashes.
_ABSOLUTE = re.compile(r"(?<![\w.~])/[^\s\"'`:;,()<>|]+")


def without_server_paths(message: str) -> str:
    """``message`` with every absolute path of this machine (one whose folder exists) replaced by its file name, so
    that an error still names the file at fault without telling the client where the server keeps it."""
    def name_only(match: re.Match) -> str:
        path = match.group(0)
        return os.path.basename(path.rstrip("/")) if os.path.isdir(os.path.dirname(path.rstrip("/")) or "/") and \
            path.count("/") > 1 else path
    return _ABSOLUTE.sub(name_only, message)


class _InferParams:
    """Stands in for the ``json`` module of MONAI Label's infer endpoint: its ``loads`` refuses what is not a JSON
    object with 422 naming the problem; ``dumps`` is the standard one."""

    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(text, **kwargs) -> Any:
        try:
            value = json.loads(text, **kwargs)
        except json.JSONDecodeError as err:
            raise HTTPException(422, f"params: not valid JSON ({err})") from None
        if not isinstance(value, dict):
            raise HTTPException(422, f"params: must be a JSON object {{\"target\": ...}}, not {type(value).__name__}")
        return value


def _session_reply(self, indent=None) -> dict:
    """A session as a client sees it: its name, expiry and image file name; never the server's folders."""
    reply = {k: v for k, v in vars(self).items() if k != "path"}
    reply["image"] = os.path.basename(str(self.image or "").rstrip("/"))
    return reply


def install() -> None:
    """Apply both replacements to the running MONAI Label server (idempotent; a process without its endpoints, e.g.
    a training subprocess, is left alone)."""
    infer = sys.modules.get("monailabel.endpoints.infer")
    if infer is not None:
        infer.json = _InferParams
    from monailabel.utils.sessions import SessionInfo

    SessionInfo.to_json = _session_reply
