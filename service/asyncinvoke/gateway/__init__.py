"""The HTTP gateway that speaks Function Compute's OpenAPI (SPEC section 9)."""

from asyncinvoke.gateway.app import DEFAULT_HOST, DEFAULT_PORT, Gateway
from asyncinvoke.gateway.auth import Verifier, load_access_keys

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Gateway", "Verifier", "load_access_keys"]
