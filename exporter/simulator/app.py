"""The aiohttp application: routes, auth and rate-limit gates, fault injection, pages from bytes, writes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from aiohttp import web

from exporter.model.schema import Shape, openapi_document, readable_types, resource_type

from .faults import (
    HTML_PAGE,
    BodyFault,
    Decision,
    Replacement,
    TokenFault,
    date_header,
    gzip_bomb,
    malformed,
    truncated,
)
from .listing import Page
from .paging import Cursor, encode_cursor
from .query import Query, QueryError, parse_query
from .writes import REQUIRED_RELATIONSHIPS, WRITABLE_TYPE, WriteError, parse_write

if TYPE_CHECKING:
    from .server import Simulator

JSONAPI = "application/vnd.api+json"
API_PREFIX = "/api/v2"
SLOW_CHUNKS = 10
NO_FAULT = Decision()
WRITE_METHODS = frozenset({"POST", "PATCH"})


def error_body(status: int, error_id: str, title: str, detail: str) -> bytes:
    return orjson.dumps({"errors": [{"id": error_id, "title": title, "detail": detail}]})


def _scope_refusal(collection: str) -> bytes:
    """The 403 of a token without the collection's read scope (as the API words it, confidence M)."""
    return error_body(
        403,
        "unauthorizedOauthScope",
        "Unauthorized OAuth Scope",
        f"Your OAuth token does not include the scope {collection}.read, required to read "
        f"{collection}. Add it to your app's scopes and authorize again.",
    )


def _query_string(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='[]')}={quote(v, safe='[],:.-_~')}" for k, v in pairs)


class Api:
    """The request handlers of one Simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        # The collections served: those of the simulated types (the step world's nine, or every
        # readable one); their read scopes; the ones with a `GET /<collection>/{id}` route.
        tables = sim.store.tables
        self.collections = {table.rtype.collection: name for name, table in tables.items()}
        paths = openapi_document()["paths"]
        self.singles = {c for c in self.collections if f"/{c}/{{id}}" in paths}
        # The readable collections this simulator holds no records of (the step world's: the
        # rest of the account): a list of them is empty, as an account without any would be.
        self.empty = {resource_type(n).collection for n in readable_types()} - set(self.collections)

    def _empty_page(self, request: web.Request) -> bytes:
        """The one page of a collection without records (`meta.count` when asked for)."""
        first = f"{self.sim.store.base_url}/{request.path.rsplit('/', 1)[-1]}"
        if request.query_string:
            first += "?" + request.query_string
        document: dict[str, Any] = {"data": [], "links": {"first": first}}
        meta: dict[str, Any] = {}
        if request.query.get("count") == "true":
            meta = {"count": 0, "count_truncated": False}
        if self.sim.store.wire_extras:
            document = {"data": [], "included": [], "links": {"first": first}}
            meta["api"] = {"version": "2"}
        if meta:
            document["meta"] = meta
        return orjson.dumps(document)

    # --------------------------------------------------------------------------- delivery

    async def refuse(
        self,
        request: web.Request,
        status: int,
        error_id: str,
        title: str,
        detail: str,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """Deliver a JSON:API error document of one error."""
        return await self.deliver(
            request, status, error_body(status, error_id, title, detail), headers
        )

    async def deliver(
        self,
        request: web.Request,
        status: int,
        body: bytes,
        headers: dict[str, str],
        *,
        content_type: str = JSONAPI,
        decision: Decision = NO_FAULT,
        trickle: int = 0,
    ) -> web.StreamResponse:
        """Write a response, damaged as `decision` says (body faults only touch 200/201 answers);
        `trickle` > 0: the body goes out that many bytes a second, whatever its size."""
        if trickle > 0:
            return await self._trickle(
                request, status, body, {**headers, "Content-Type": content_type}, trickle
            )
        fault = decision.body_fault if status in (200, 201) else None
        if fault is BodyFault.TRUNCATE:
            body = truncated(body, decision.cut_at)
        elif fault is BodyFault.MALFORMED:
            body = malformed(body, decision.cut_at)
        headers = {**headers, "Content-Type": content_type}
        if fault is not BodyFault.RESET and not decision.slow:
            return web.Response(status=status, body=body, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        if fault is BodyFault.RESET:
            await response.write(body[: max(1, int(len(body) * decision.cut_at))])
            transport = request.transport
            if transport is not None:
                transport.abort()  # the client sees the connection drop mid-body
            return response
        chunk = max(1, -(-len(body) // SLOW_CHUNKS))
        pause = self.sim.faults.slow_body_s / SLOW_CHUNKS
        try:
            for start in range(0, len(body), chunk):
                await response.write(body[start : start + chunk])
                await asyncio.sleep(pause)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client hung up mid-body (a timeout, a stop): nothing more to send
        return response

    async def _trickle(
        self, request: web.Request, status: int, body: bytes, headers: dict[str, str], rate: int
    ) -> web.StreamResponse:
        """A hostile slow answer: a few bytes a second, so a read timeout never fires."""
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        step = max(1, rate // 10)
        try:
            for start in range(0, len(body), step):
                await response.write(body[start : start + step])
                await asyncio.sleep(step / rate)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client gave up on the trickle (its deadline): what it is meant to do
        return response

    # --------------------------------------------------------------------------- oauth

    async def token(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        sim.counters.count_request("POST /oauth/token")
        try:
            form = await request.post()
            fields = {k: str(v) for k, v in form.items()}
            fault = sim.hostile.next_token_fault()
            if fault is TokenFault.SLOW:
                await asyncio.sleep(sim.hostile.token_slow_s)
            elif fault is not None:
                return await self._token_fault(request, fault, fields)
            answer = sim.auth.exchange(fields)
            sim.counters.tokens_minted = sim.auth.minted
            headers = sim.rate.peek().headers(False)
            return await self.deliver(
                request,
                answer.status,
                orjson.dumps(answer.body),
                headers,
                content_type="application/json",
            )
        finally:
            sim.counters.finish_request()

    async def _token_fault(
        self, request: web.Request, fault: TokenFault, form: dict[str, str]
    ) -> web.StreamResponse:
        """The token endpoint misbehaving (`HostileFaults.token`); no token is minted."""
        faults = self.sim.hostile
        if fault is TokenFault.REDIRECT:
            return web.Response(
                status=307, headers={"Location": faults.redirect_to + "/oauth/token"}
            )
        if fault is TokenFault.ECHO_SECRETS:
            quoted = f"client_secret={form.get('client_secret')} refresh_token={form.get('refresh_token')}"
            body = {
                "error": f"invalid_request {quoted}",
                "error_description": f"Bad form:\n{quoted}\r\nERROR forged line",
            }
            return web.json_response(body, status=400)
        status = int(fault.value)
        headers = {"Retry-After": f"{faults.token_retry_after:g}"} if status == 429 else {}
        title = {500: "Internal Server Error", 503: "Service Unavailable", 429: "Too Many Requests"}
        body_bytes = error_body(
            status, f"simulated{status}", title[status], "Simulated token fault"
        )
        return web.Response(
            status=status, body=body_bytes, headers={**headers, "Content-Type": "application/json"}
        )

    async def _hostile_get(
        self, request: web.Request, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        """A hostile answer to an API GET (`HostileFaults`), or None to serve it for real."""
        faults = self.sim.hostile
        if faults.take("redirect_cross"):
            location = faults.redirect_to + request.path_qs
            return web.Response(status=307, headers={**headers, "Location": location})
        if faults.take("redirect_same"):
            return web.Response(status=307, headers={**headers, "Location": request.path_qs})
        if faults.take("echo_auth"):
            echoed = request.headers.get("Authorization", "")
            detail = f"Refused {echoed}\nERROR forged log line\r\x1b[31m{echoed}"
            body = error_body(faults.echo_auth_status, echoed, f"Bad header {echoed}", detail)
            return await self.deliver(request, faults.echo_auth_status, body, headers)
        if faults.take("gzip_bomb"):
            bomb = gzip_bomb(faults.gzip_bomb_bytes)
            return web.Response(
                status=200,
                body=bomb,
                headers={**headers, "Content-Type": JSONAPI, "Content-Encoding": "gzip"},
            )
        return None

    # --------------------------------------------------------------------------- api

    async def api(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        tail = request.match_info.get("tail", "").strip("/")
        collection, _, record = tail.partition("/")
        type_name = self.collections.get(collection)
        route = f"{request.method} {API_PREFIX}/{collection}" + ("/{id}" if record else "")
        sim.counters.count_request(route)
        if sim.request_log is not None and request.method == "GET":
            sim.request_log.write(request.path_qs + "\n")  # for a benchmark's replay
        try:
            verdict = sim.rate.acquire()
            headers = verdict.headers(sim.cfg.retry_after) | date_header(
                sim.faults, sim.cfg.clock()
            )
            if not verdict.allowed:
                sim.counters.rate_limited += 1
                return await self.deliver(request, 429, orjson.dumps(verdict.document()), headers)
            problem = sim.auth.check(request.headers.get("Authorization"))
            if problem is not None:
                return await self.refuse(
                    request, 401, "unauthorized", "Unauthorized", problem, headers
                )
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            writing = request.method in WRITE_METHODS
            if (content_type or writing) and content_type != JSONAPI:
                detail = f"Content-Type must be {JSONAPI}, not {content_type or 'none'}"
                return await self.refuse(
                    request, 415, "unsupportedMediaType", "Unsupported Media Type", detail, headers
                )
            if not collection and request.method == "GET":
                return await self.deliver(request, 200, self._token_info(), headers)
            if collection in self.empty and not record and request.method == "GET":
                denied = {s.removesuffix(".read") for s in sim.cfg.denied_scopes}
                if collection in denied:
                    return await self.deliver(request, 403, _scope_refusal(collection), headers)
                return await self.deliver(request, 200, self._empty_page(request), headers)
            if type_name is None or "/" in record or (record and collection not in self.singles):
                detail = f"No route for {request.path}"
                return await self.refuse(
                    request, 404, "resourceNotFound", "Resource Not Found", detail, headers
                )
            if request.method == "GET" and collection + ".read" not in sim.granted_scopes:
                return await self.deliver(request, 403, _scope_refusal(collection), headers)
            if request.method == "GET":
                return await self._get(request, type_name, record, headers)
            if type_name == WRITABLE_TYPE and request.method == ("PATCH" if record else "POST"):
                return await self._write(request, type_name, record, headers)
            detail = f"{request.method} {request.path} is not supported"
            if request.method == "DELETE":
                detail += " (the Outreach API has no DELETE for this resource)"
            return await self.refuse(
                request, 405, "methodNotAllowed", "Method Not Allowed", detail, headers
            )
        finally:
            sim.counters.finish_request()

    def _token_info(self) -> bytes:
        """The API root's answer: who the token belongs to (the org, the user)."""
        cfg = self.sim.cfg
        guid = cfg.org_guid or f"sim-org-{cfg.seed}"
        return orjson.dumps(
            {
                "meta": {
                    "api": {"version": "2"},
                    "org": {"guid": guid, "name": f"Simulated account {guid}"},
                    "user": {"id": 1, "email": "api@simulator.invalid"},
                }
            }
        )

    async def _write(
        self, request: web.Request, type_name: str, record: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        """POST a new record to the collection or PATCH one: 201/200 with the record as served."""
        sim = self.sim
        store = sim.store
        decision = sim.dice.decide(sim.faults, None, write=True)
        if sim.faults.latency_s > 0:
            await asyncio.sleep(sim.faults.latency_s)
        if decision.replacement is not None:
            return await self._replace(request, decision.replacement, headers)
        body = await request.read()
        rtype = store.table(type_name).rtype
        record_id: int | None = None
        if record:
            record_id = int(record) if record.isascii() and record.isdigit() else -1
            if store.alive_row(type_name, record_id) is None:
                detail = f"No {type_name} with id {record}"
                return await self.refuse(
                    request, 404, "resourceNotFound", "Resource Not Found", detail, headers
                )
        if sim.hostile.take("echo_auth_write"):
            echoed = request.headers.get("Authorization", "")
            detail = f"Refused {echoed}\nERROR forged log line\r\x1b[31m{echoed}"
            document = {
                "errors": [
                    {
                        "id": echoed,
                        "title": "Unprocessable Entity",
                        "detail": detail,
                        "source": {"pointer": f"/data/attributes/{echoed}"},
                    }
                ]
            }
            return await self.deliver(request, 422, orjson.dumps(document), headers)
        policy = sim.write_policy
        try:
            change = parse_write(
                body,
                rtype,
                record_id=record_id,
                exists=lambda name, i: store.alive_row(name, i) is not None,
                required_relationships=(
                    REQUIRED_RELATIONSHIPS if policy.require_sequence else frozenset()
                ),
            )
        except WriteError as error:
            return await self.deliver(
                request, error.status, orjson.dumps(error.document()), headers
            )
        if policy.apply_delay_s > 0:
            # A slow write: applied after the delay even if its client is gone by then.
            await asyncio.sleep(policy.apply_delay_s)
            if record_id is not None and store.alive_row(type_name, record_id) is None:
                detail = f"No {type_name} with id {record}"
                return await self.refuse(
                    request, 404, "resourceNotFound", "Resource Not Found", detail, headers
                )
        if record_id is None:
            record_id = store.create(type_name, change)
            status = 201
            headers = {**headers, "Location": f"{store.base_url}/{rtype.collection}/{record_id}"}
        else:
            store.patch(type_name, record_id, change)
            status = 200
        sim.counters.writes_applied += 1
        if decision.lose_write:
            sim.counters.writes_lost += 1
            transport = request.transport
            if transport is not None:
                transport.abort()  # applied, but the client never hears back
            return web.Response(status=status)
        row = store.alive_row(type_name, record_id)
        assert row is not None, "a record just written is alive"
        answer = b'{"data":' + store.record_bytes(type_name, row) + b"}"
        return await self.deliver(request, status, answer, headers, decision=decision)

    async def _get(
        self, request: web.Request, type_name: str, record: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        sim = self.sim
        faults = sim.faults
        crafted = await self._hostile_get(request, headers)
        if crafted is not None:
            return crafted
        trickle = sim.hostile.trickle_bytes_per_s if sim.hostile.take("trickle") else 0
        page_size = _page_size(request.query.get("page[size]"), sim.cfg.page_default)
        decision = sim.dice.decide(faults, None if record else page_size)
        if faults.latency_s > 0:
            await asyncio.sleep(faults.latency_s)
        if decision.replacement is not None:
            return await self._replace(request, decision.replacement, headers)
        rtype = sim.store.table(type_name).rtype
        try:
            refused, ignored = faults.relation_policy(type_name)
            query = parse_query(
                rtype,
                request.query.items(),
                relations=tuple(sim.store.table(type_name).fks),
                refused=refused,
                ignored=ignored,
                page_default=sim.cfg.page_default,
                page_max=sim.cfg.page_max,
            )
            if record:
                body, n_records = self._single(query, record)
            else:
                body, n_records = self._collection(request, query)
        except QueryError as error:
            return await self.deliver(
                request, error.status, orjson.dumps(error.document()), headers
            )
        if faults.latency_per_record_s > 0 and n_records:
            await asyncio.sleep(faults.latency_per_record_s * n_records)
        return await self.deliver(request, 200, body, headers, decision=decision, trickle=trickle)

    async def _replace(
        self, request: web.Request, replacement: Replacement, headers: dict[str, str]
    ) -> web.StreamResponse:
        if replacement is Replacement.SERVER_ERROR:
            body = error_body(
                500, "internalServerError", "Internal Server Error", "Simulated failure"
            )
            return await self.deliver(request, 500, body, headers)
        if replacement is Replacement.UNAVAILABLE:
            body = error_body(
                503, "scheduledServerMaintenance", "Service Unavailable", "Simulated outage"
            )
            return await self.deliver(request, 503, body, headers)
        if replacement is Replacement.BIG_PAGE_502:
            body = error_body(
                502, "badGateway", "Bad Gateway", "The page was too big to serve in time"
            )
            return await self.deliver(request, 502, body, headers)
        status = 502 if replacement is Replacement.HTML_502 else 200
        return await self.deliver(request, status, HTML_PAGE, headers, content_type="text/html")

    # --------------------------------------------------------------------------- bodies

    def _record(self, type_name: str, row: int, query: Query, primary: bool) -> bytes:
        store = self.sim.store
        fields = query.fields.get(type_name)
        encoded = (
            store.record_bytes(type_name, row)
            if fields is None
            else store.sparse_bytes(type_name, row, fields)
        )
        extras = store.wire_extras
        if (primary and query.authorization_meta) or extras:
            table = store.table(type_name)
            record_id = table.ids[row]
            # `wire_extras`: every record says where it lives, and carries a `meta` (the only
            # record meta the reference page documents: what the user may do with it).
            own = b""
            if extras:
                url = f"{store.base_url}/{table.rtype.collection}/{store.wire_id(table, row)}"
                own = b'"links":{"self":' + orjson.dumps(url) + b"},"
            meta = b'"meta":{"canWrite":%s,"canDelete":%s}}' % (
                b"true" if record_id % 5 else b"false",
                b"true" if record_id % 3 == 0 else b"false",
            )
            encoded = encoded[:-1] + b"," + own + meta
        return encoded

    def _included(self, query: Query, rows: list[int]) -> list[bytes]:
        store = self.sim.store
        table = store.table(query.rtype)
        seen: set[tuple[str, int]] = {(query.rtype, table.ids[row]) for row in rows}
        out: list[bytes] = []
        for name in query.include:
            relationship = table.rtype.relationship(name)
            if relationship is None or relationship.target not in store.tables:
                continue
            target = relationship.target
            for row in rows:
                if relationship.shape is Shape.TO_ONE:
                    one = store.to_one_id(table, row, name, target)
                    targets = [] if one is None else [one]
                else:
                    targets = store.to_many_ids(query.rtype, name, table.ids[row])
                for target_id in targets:
                    if (target, target_id) in seen:
                        continue
                    seen.add((target, target_id))
                    target_row = store.alive_row(target, target_id)
                    if target_row is not None:
                        out.append(self._record(target, target_row, query, primary=False))
        return out

    def _single(self, query: Query, record: str) -> tuple[bytes, int]:
        store = self.sim.store
        try:
            record_id = int(record)
        except ValueError:
            record_id = -1
        row = store.alive_row(query.rtype, record_id)
        if row is None:
            raise QueryError(
                f"No {query.rtype} with id {record}", status=404, error_id="resourceNotFound"
            )
        parts = [b'{"data":', self._record(query.rtype, row, query, primary=True)]
        if query.include or self.sim.store.wire_extras:
            parts += [b',"included":[', b",".join(self._included(query, [row])), b"]"]
        parts.append(b"}")
        return b"".join(parts), 1

    def _collection(self, request: web.Request, query: Query) -> tuple[bytes, int]:
        sim = self.sim
        try:
            page: Page = sim.lister.page(query)
        except TypeError as error:  # a hand-made cursor whose key values do not compare
            raise QueryError("page[after] is not a valid cursor") from error
        parts = [
            b'{"data":[',
            b",".join(self._record(query.rtype, row, query, True) for row in page.rows),
            b"]",
        ]
        if query.include or sim.store.wire_extras:  # an empty `included` when none is asked
            parts += [b',"included":[', b",".join(self._included(query, page.rows)), b"]"]
        collection = sim.store.table(query.rtype).rtype.collection
        base = f"{sim.store.base_url}/{collection}"
        pairs = [(k, v) for k, v in request.query.items() if k != "page[after]"]
        first = f"{base}?{_query_string(pairs)}" if pairs else base
        links: dict[str, Any] = {"first": first}
        if page.last_key is not None:
            token = encode_cursor(Cursor(sort=query.sort_spec, key=page.last_key))
            links["next"] = f"{base}?{_query_string([*pairs, ('page[after]', token)])}"
        parts += [b',"links":', orjson.dumps(links)]
        meta: dict[str, Any] = {}
        if page.count is not None:
            meta = {"count": page.count, "count_truncated": page.count_truncated}
        if sim.store.wire_extras:
            meta["api"] = {"version": "2"}  # what the API root's meta says too
        if meta:
            parts += [b',"meta":', orjson.dumps(meta)]
        parts.append(b"}")
        return b"".join(parts), len(page.rows)


def _page_size(text: str | None, default: int) -> int | None:
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        return None


async def _mutation_stream(app: web.Application) -> AsyncIterator[None]:
    """While serving, apply `faults.mutation_rate` random mutations per second."""
    sim: Simulator = app[SIM_KEY]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        owed = 0.0
        last = loop.time()
        while True:
            await asyncio.sleep(0.02)
            now = loop.time()
            owed += sim.faults.mutation_rate * (now - last)
            last = now
            if owed >= 1:
                due = int(owed)
                owed -= due
                sim.mutate(due)

    task = asyncio.create_task(run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


SIM_KEY: web.AppKey[Simulator] = web.AppKey("simulator")


def build_app(sim: Simulator) -> web.Application:
    api = Api(sim)
    app = web.Application(client_max_size=1024 * 1024)
    app[SIM_KEY] = sim
    app.router.add_post("/oauth/token", api.token)
    app.router.add_route("*", API_PREFIX, api.api)
    app.router.add_route("*", API_PREFIX + "/{tail:.*}", api.api)
    app.cleanup_ctx.append(_mutation_stream)
    return app
