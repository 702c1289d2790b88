"""Token verification that works with the PyJWT MONAI Label 0.8.5 requires.

MONAI Label 0.8.5 (``monailabel.endpoints.user.auth.from_token``) calls ``jwt.decode`` without ``algorithms``, which
PyJWT 2 (``pyjwt>=2.8.0``, MONAI Label's own requirement) refuses for every token: with authentication on, even a
valid token is answered 401. :func:`install` replaces that function, as MONAI Label's dependency looks it up at each
request, with the same check naming the algorithm of the realm's keys (RS256, Keycloak's default); the rest of MONAI
Label's authentication (bearer token required, realm public key, roles) is unchanged.
"""
from __future__ import annotations

from typing import Sequence

ALGORITHMS = ["RS256"]


def install(algorithms: Sequence[str] = ALGORITHMS) -> bool:
    """Replace ``from_token`` when authentication is on; returns whether it did."""
    import jwt
    from monailabel.config import settings
    from monailabel.endpoints.user import auth

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return False

    def from_token(token: str):
        key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
        payload = jwt.decode(token, key, algorithms=list(algorithms),
                             options={"verify_signature": True, "verify_aud": False, "verify_exp": True})
        roles = payload
        for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
            roles = roles.get(part) if isinstance(roles, dict) else None
        return auth.User(username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME),
                         email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                         name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME), roles=roles or [])

    auth.from_token = from_token
    return True
