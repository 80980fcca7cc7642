"""What every console request passes: its session, the login, the CSRF token, headers.

A visitor without a valid session cookie gets a new session (and the cookie) with the
answer. With access keys, a session that has not logged in sees only the login page:
a page request is sent there, ``live.json`` is 401, an action 403. Every POST must carry
the session's CSRF token. Without keys the gateway's keyless guard (``gateway.local``)
has already refused requests to other hosts or from other origins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from asyncinvoke import clock
from asyncinvoke.console import sessions

PREFIX = "/console"
CSRF_FIELD = "csrf"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(slots=True)
class Visit:
    """One request's session, and whether its cookie must be (re)sent."""

    session: sessions.Session
    csrf: str
    fresh: bool


View = Callable[[web.Request, Visit], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Refusal = Callable[[Visit], web.StreamResponse]  # the page that says a form expired


class Guard:
    def __init__(self, access_keys: dict[str, str], expired_form: Refusal):
        self.keys = access_keys
        self.signer = sessions.Signer(sessions.signing_key(access_keys))
        self._expired_form = expired_form

    def wrap(self, view: View, *, public: bool = False) -> Handler:
        """The aiohttp handler that checks a request and then calls ``view``."""

        async def handler(request: web.Request) -> web.StreamResponse:
            visit = self._visit(request)
            if self.keys and visit.session.key_id is None and not public:
                response = _refuse_anonymous(request)
            elif request.method == "POST" and not await self._csrf_ok(request, visit):
                response = self._expired_form(visit)
            else:
                response = await view(request, visit)
            if visit.fresh:
                self._set_cookie(request, response, visit.session)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return handler

    def new_session(self, visit: Visit, key_id: str | None) -> None:
        """A new session id at login and logout: one planted before is worth nothing."""
        visit.session = self.signer.new(clock.now_ms(), key_id)
        visit.fresh = True

    def _visit(self, request: web.Request) -> Visit:
        now_ms = clock.now_ms()
        session = self.signer.load(request.cookies.get(sessions.COOKIE), now_ms)
        fresh = session is None
        if session is None or (self.keys and session.key_id not in (None, *self.keys)):
            session, fresh = self.signer.new(now_ms), True
        return Visit(session, self.signer.csrf_token(session), fresh)

    async def _csrf_ok(self, request: web.Request, visit: Visit) -> bool:
        if visit.fresh:
            return False
        form = await request.post()
        token = form.get(CSRF_FIELD)
        return isinstance(token, str) and self.signer.csrf_ok(visit.session, token)

    def _set_cookie(
        self, request: web.Request, response: web.StreamResponse, session: sessions.Session
    ) -> None:
        response.set_cookie(
            sessions.COOKIE,
            self.signer.dump(session),
            max_age=self.signer.ttl_s,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )


def _refuse_anonymous(request: web.Request) -> web.StreamResponse:
    if request.path.endswith(".json"):
        return web.json_response({"error": "log in first"}, status=401)
    if request.method != "GET":
        return web.Response(status=403, text="log in first")
    return see_other(f"{PREFIX}/login?" + urlencode({"next": request.path_qs}))


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def after_login(target: str | None) -> str:
    """Where to go after login: a console path, never another site."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return PREFIX + "/functions"
