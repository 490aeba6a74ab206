"""MCP conformance fixture server (Python `mcp==2.3.0` SDK, low-level `Server` API).

Implements every tool, resource, prompt and utility that the server scenarios of
`@modelcontextprotocol/conformance@0.1.16` expect from the server under test, so
that Mandate can put it behind the broker and run the conformance suite through it.

Run it with the interpreter from `scripts/install-peers.sh`:

    .peers/venv/bin/python examples/conformance_fixture.py               # stdio (default)
    .peers/venv/bin/python examples/conformance_fixture.py --http 8931   # streamable HTTP
                                                                         # at http://127.0.0.1:8931/mcp

In HTTP mode the server binds 127.0.0.1 only, validates Host/Origin (DNS
rebinding protection), keeps sessions, and stores events in memory so SSE
streams can be resumed with Last-Event-ID (the `test_reconnection` tool).

Both protocol eras work on both transports: a handshake-era client (2025-xx,
`initialize`; what the conformance suite and the Inspector speak) gets real
server->client `sampling/createMessage` / `elicitation/create` requests on the
tool call's own stream; a 2026-07-28 client (`server/discover`) gets an
`InputRequiredResult` and retries with `inputResponses`. On 2026-07-28 log
notifications are only sent to requests that opt in via `_meta`
(`io.modelcontextprotocol/logLevel`; the Python client's `log_level=`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import warnings
import weakref
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

# Logging, sampling and `logging/setLevel` are deprecated as of 2026-07-28 but
# are exactly what the 2025-era conformance scenarios exercise.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

SERVER_NAME = "mandate-conformance-fixture"
SERVER_VERSION = "1.0.0"

# 1x1 red pixel PNG.
RED_PIXEL_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
# Minimal valid WAV: RIFF header, 8 kHz mono 8-bit PCM, one silent sample.
MINIMAL_WAV = "UklGRiUAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQEAAACA"

JSON_SCHEMA_2020_12_TOOL = "json_schema_2020_12_tool"
JSON_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"

LOG_LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
WATCHED_RESOURCE = "test://watched-resource"
RESOURCE_NOT_FOUND = -32002  # spec error code for an unknown resource URI

M = TypeVar("M")


def _schema(properties: dict[str, Any] | None = None, required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties or {}}
    if required:
        schema["required"] = required
    return schema


TOOLS: list[dict[str, Any]] = [
    {"name": "test_simple_text", "description": "Returns simple text content", "inputSchema": _schema()},
    {"name": "test_image_content", "description": "Returns image content", "inputSchema": _schema()},
    {"name": "test_audio_content", "description": "Returns audio content", "inputSchema": _schema()},
    {"name": "test_embedded_resource", "description": "Returns embedded resource content", "inputSchema": _schema()},
    {
        "name": "test_multiple_content_types",
        "description": "Returns text, image and resource content",
        "inputSchema": _schema(),
    },
    {
        "name": "test_tool_with_logging",
        "description": "Sends three log notifications while it runs",
        "inputSchema": _schema(),
    },
    {
        "name": "test_tool_with_progress",
        "description": "Sends three progress notifications while it runs",
        "inputSchema": _schema(),
    },
    {"name": "test_error_handling", "description": "Always returns a tool error", "inputSchema": _schema()},
    {
        "name": "test_sampling",
        "description": "Asks the client for an LLM completion (sampling/createMessage)",
        "inputSchema": _schema({"prompt": {"type": "string", "description": "The prompt to send"}}, ["prompt"]),
    },
    {
        "name": "test_elicitation",
        "description": "Asks the client for user input (elicitation/create)",
        "inputSchema": _schema(
            {"message": {"type": "string", "description": "The message to show the user"}}, ["message"]
        ),
    },
    {
        "name": "test_elicitation_sep1034_defaults",
        "description": "Elicitation with default values for every primitive type (SEP-1034)",
        "inputSchema": _schema(),
    },
    {
        "name": "test_elicitation_sep1330_enums",
        "description": "Elicitation with all five enum schema variants (SEP-1330)",
        "inputSchema": _schema(),
    },
    {
        "name": JSON_SCHEMA_2020_12_TOOL,
        "description": "Tool with JSON Schema 2020-12 features",
        "inputSchema": {
            "$schema": JSON_SCHEMA_2020_12,
            "type": "object",
            "$defs": {
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                }
            },
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    },
    {
        "name": "test_roots",
        "description": "Asks the client for its roots (roots/list) and returns their URIs (not a conformance scenario; used by Mandate's relay tests)",
        "inputSchema": _schema(),
    },
    {
        "name": "test_reconnection",
        "description": "Closes the SSE stream mid-call, then answers after the client reconnects (SEP-1699)",
        "inputSchema": _schema(),
    },
]

RESOURCES: list[dict[str, Any]] = [
    {
        "uri": "test://static-text",
        "name": "static-text",
        "description": "A static text resource",
        "mimeType": "text/plain",
    },
    {
        "uri": "test://static-binary",
        "name": "static-binary",
        "description": "A static binary resource (PNG)",
        "mimeType": "image/png",
    },
    {
        "uri": WATCHED_RESOURCE,
        "name": "watched-resource",
        "description": "A resource that can be subscribed to",
        "mimeType": "text/plain",
    },
]

RESOURCE_TEMPLATES: list[dict[str, Any]] = [
    {
        "uriTemplate": "test://template/{id}/data",
        "name": "template-data",
        "description": "A templated resource; {id} is substituted",
        "mimeType": "application/json",
    }
]

PROMPTS: list[dict[str, Any]] = [
    {"name": "test_simple_prompt", "description": "A simple prompt without arguments"},
    {
        "name": "test_prompt_with_arguments",
        "description": "A prompt with two required arguments",
        "arguments": [
            {"name": "arg1", "description": "First test argument", "required": True},
            {"name": "arg2", "description": "Second test argument", "required": True},
        ],
    },
    {
        "name": "test_prompt_with_embedded_resource",
        "description": "A prompt that embeds a resource",
        "arguments": [{"name": "resourceUri", "description": "URI of the resource to embed", "required": True}],
    },
    {"name": "test_prompt_with_image", "description": "A prompt with image content"},
]


# --- per-connection state -----------------------------------------------------
# The low-level API hands each handler a per-request `ServerSession`; the
# connection behind it is the natural key for per-client state (log level,
# subscriptions). Fall back to the session object if the SDK internals change.


class _ConnState:
    def __init__(self) -> None:
        self.log_level = "debug"
        self.subscriptions: set[str] = set()


_conn_states: "weakref.WeakKeyDictionary[Any, _ConnState]" = weakref.WeakKeyDictionary()


def _state(ctx: ServerRequestContext[Any, Any]) -> _ConnState:
    key = getattr(ctx.session, "_connection", ctx.session)
    st = _conn_states.get(key)
    if st is None:
        st = _ConnState()
        _conn_states[key] = st
    return st


async def _log(ctx: ServerRequestContext[Any, Any], level: str, message: str) -> None:
    st = _state(ctx)
    if LOG_LEVELS.index(level) < LOG_LEVELS.index(st.log_level):
        return
    # Request-scoped: on streamable HTTP the entry rides the tool call's POST stream.
    await ctx.session.send_log_message(level, message, logger="conformance-fixture", related_request_id=ctx.request_id)


async def _progress(ctx: ServerRequestContext[Any, Any], progress: float, total: float) -> None:
    # A no-op unless the request carried `_meta.progressToken`; the SDK threads
    # the token and sends on the request's own stream.
    await ctx.session.report_progress(progress, total)


def _wire(model: type[M], data: dict[str, Any]) -> M:
    """Build a typed result from its camelCase wire form.

    Typed results (not bare dicts) matter on 2026-07-28 connections, where
    `resultType`, `ttlMs` and `cacheScope` are required: the models default them.
    """
    return model.model_validate(data, by_name=False)


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _result(*content: dict[str, Any], is_error: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"content": list(content)}
    if is_error:
        out["isError"] = True
    return out


def _client_has(ctx: ServerRequestContext[Any, Any], capability: str) -> bool:
    caps = ctx.session.client_capabilities
    return caps is not None and getattr(caps, capability, None) is not None


def _related(ctx: ServerRequestContext[Any, Any]) -> ServerMessageMetadata:
    """Route a server->client message onto the stream of the request being handled."""
    return ServerMessageMetadata(related_request_id=ctx.request_id)


class _NeedInput(Exception):
    """Raised on a 2026-07-28 connection to answer with an `InputRequiredResult`."""

    def __init__(self, result: types.InputRequiredResult) -> None:
        super().__init__("input required")
        self.result = result


async def _ask(
    ctx: ServerRequestContext[Any, Any],
    params: types.CallToolRequestParams,
    request: types.CreateMessageRequest | types.ElicitRequest,
    result_type: type[Any],
) -> Any:
    """Ask the client for input (sampling or elicitation), in either protocol era.

    Handshake era (2025-xx, what the conformance suite speaks): a real
    server->client JSON-RPC request on the tool call's own stream.
    2026-07-28 era: there is no back-channel; return `InputRequiredResult` and
    read the answer from `inputResponses` when the client retries the call.
    """
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        responses = params.input_responses or {}
        if "input" in responses:
            answer = responses["input"]
            return answer if isinstance(answer, result_type) else result_type.model_validate(answer)
        raise _NeedInput(types.InputRequiredResult(input_requests={"input": request}))
    return await ctx.session.send_request(request, result_type, metadata=_related(ctx))


async def _elicit(
    ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams, message: str, schema: dict[str, Any]
) -> types.ElicitResult:
    request = types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))
    return await _ask(ctx, params, request, types.ElicitResult)


# --- tools --------------------------------------------------------------------


async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
    return _wire(types.ListToolsResult, {"tools": TOOLS})


async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
    try:
        return _wire(types.CallToolResult, await _call_tool(ctx, params))
    except _NeedInput as need:
        return need.result


async def _call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> dict[str, Any]:
    name = params.name
    args = params.arguments or {}

    if name == "test_simple_text":
        return _result(_text("This is a simple text response for testing."))

    if name == "test_image_content":
        return _result({"type": "image", "data": RED_PIXEL_PNG, "mimeType": "image/png"})

    if name == "test_audio_content":
        return _result({"type": "audio", "data": MINIMAL_WAV, "mimeType": "audio/wav"})

    if name == "test_embedded_resource":
        return _result(
            {
                "type": "resource",
                "resource": {
                    "uri": "test://embedded-resource",
                    "mimeType": "text/plain",
                    "text": "This is an embedded resource content.",
                },
            }
        )

    if name == "test_multiple_content_types":
        return _result(
            _text("Multiple content types test:"),
            {"type": "image", "data": RED_PIXEL_PNG, "mimeType": "image/png"},
            {
                "type": "resource",
                "resource": {
                    "uri": "test://mixed-content-resource",
                    "mimeType": "application/json",
                    "text": json.dumps({"test": "data", "value": 123}, separators=(",", ":")),
                },
            },
        )

    if name == "test_tool_with_logging":
        await _log(ctx, "info", "Tool execution started")
        await anyio.sleep(0.05)
        await _log(ctx, "info", "Tool processing data")
        await anyio.sleep(0.05)
        await _log(ctx, "info", "Tool execution completed")
        return _result(_text("Tool with logging executed successfully"))

    if name == "test_tool_with_progress":
        await _progress(ctx, 0, 100)
        await anyio.sleep(0.05)
        await _progress(ctx, 50, 100)
        await anyio.sleep(0.05)
        await _progress(ctx, 100, 100)
        return _result(_text("Tool with progress executed successfully"))

    if name == "test_error_handling":
        return _result(_text("This tool intentionally returns an error for testing"), is_error=True)

    if name == "test_roots":
        if not _client_has(ctx, "roots"):
            return _result(_text("Client does not support roots"), is_error=True)
        roots = await ctx.session.send_request(types.ListRootsRequest(), types.ListRootsResult, metadata=_related(ctx))
        return _result(_text("Roots: " + ", ".join(str(r.uri) for r in roots.roots)))

    if name == "test_sampling":
        if not _client_has(ctx, "sampling"):
            return _result(_text("Client does not support sampling"), is_error=True)
        prompt = str(args.get("prompt", ""))
        request = types.CreateMessageRequest(
            params=types.CreateMessageRequestParams(
                messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
                max_tokens=100,
            )
        )
        response = await _ask(ctx, params, request, types.CreateMessageResult)
        content = response.content
        text = getattr(content, "text", None) or json.dumps(
            content.model_dump(by_alias=True, mode="json", exclude_none=True)
        )
        return _result(_text(f"LLM response: {text}"))

    if name == "test_elicitation":
        if not _client_has(ctx, "elicitation"):
            return _result(_text("Client does not support elicitation"), is_error=True)
        result = await _elicit(
            ctx,
            params,
            str(args.get("message", "")),
            {
                "type": "object",
                "properties": {
                    "username": {"type": "string", "description": "User's response"},
                    "email": {"type": "string", "description": "User's email address"},
                },
                "required": ["username", "email"],
            },
        )
        return _result(_text(f"User response: action={result.action}, content={json.dumps(result.content)}"))

    if name == "test_elicitation_sep1034_defaults":
        if not _client_has(ctx, "elicitation"):
            return _result(_text("Client does not support elicitation"), is_error=True)
        result = await _elicit(
            ctx,
            params,
            "Please review and update the form fields with defaults",
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "User name", "default": "John Doe"},
                    "age": {"type": "integer", "description": "User age", "default": 30},
                    "score": {"type": "number", "description": "User score", "default": 95.5},
                    "status": {
                        "type": "string",
                        "description": "User status",
                        "enum": ["active", "inactive", "pending"],
                        "default": "active",
                    },
                    "verified": {"type": "boolean", "description": "Verification status", "default": True},
                },
                "required": [],
            },
        )
        return _result(
            _text(f"Elicitation completed: action={result.action}, content={json.dumps(result.content)}")
        )

    if name == "test_elicitation_sep1330_enums":
        if not _client_has(ctx, "elicitation"):
            return _result(_text("Client does not support elicitation"), is_error=True)
        result = await _elicit(
            ctx,
            params,
            "Please select options from the enum fields",
            {
                "type": "object",
                "properties": {
                    "untitledSingle": {
                        "type": "string",
                        "description": "Untitled single-select",
                        "enum": ["option1", "option2", "option3"],
                    },
                    "titledSingle": {
                        "type": "string",
                        "description": "Titled single-select",
                        "oneOf": [
                            {"const": "value1", "title": "First Option"},
                            {"const": "value2", "title": "Second Option"},
                            {"const": "value3", "title": "Third Option"},
                        ],
                    },
                    "legacyEnum": {
                        "type": "string",
                        "description": "Legacy titled enum (deprecated enumNames)",
                        "enum": ["opt1", "opt2", "opt3"],
                        "enumNames": ["Option One", "Option Two", "Option Three"],
                    },
                    "untitledMulti": {
                        "type": "array",
                        "description": "Untitled multi-select",
                        "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                    },
                    "titledMulti": {
                        "type": "array",
                        "description": "Titled multi-select",
                        "items": {
                            "anyOf": [
                                {"const": "value1", "title": "First Choice"},
                                {"const": "value2", "title": "Second Choice"},
                                {"const": "value3", "title": "Third Choice"},
                            ]
                        },
                    },
                },
                "required": [],
            },
        )
        return _result(
            _text(f"Elicitation completed: action={result.action}, content={json.dumps(result.content)}")
        )

    if name == JSON_SCHEMA_2020_12_TOOL:
        return _result(_text(f"Received: {json.dumps(args, sort_keys=True)}"))

    if name == "test_reconnection":
        # SEP-1699: close the POST SSE stream mid-call (only possible on streamable
        # HTTP with an event store); the result is delivered on the resumed stream.
        if ctx.close_sse_stream is not None:
            await anyio.sleep(0.1)
            await ctx.close_sse_stream()
            await anyio.sleep(0.3)
        return _result(_text("Reconnection test completed successfully"))

    raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")


# --- resources ----------------------------------------------------------------


async def list_resources(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
    return _wire(types.ListResourcesResult, {"resources": RESOURCES})


async def list_resource_templates(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourceTemplatesResult:
    return _wire(types.ListResourceTemplatesResult, {"resourceTemplates": RESOURCE_TEMPLATES})


async def read_resource(
    ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
) -> types.ReadResourceResult:
    uri = str(params.uri)
    if uri == "test://static-text":
        contents = {"uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource."}
    elif uri == "test://static-binary":
        contents = {"uri": uri, "mimeType": "image/png", "blob": RED_PIXEL_PNG}
    elif uri == WATCHED_RESOURCE:
        contents = {"uri": uri, "mimeType": "text/plain", "text": "Watched resource content"}
    elif uri.startswith("test://template/") and uri.endswith("/data"):
        ident = uri[len("test://template/") : -len("/data")]
        if not ident or "/" in ident:
            raise MCPError(code=RESOURCE_NOT_FOUND, message=f"Resource not found: {uri}")
        body = {"id": ident, "templateTest": True, "data": f"Data for ID: {ident}"}
        contents = {"uri": uri, "mimeType": "application/json", "text": json.dumps(body, separators=(",", ":"))}
    else:
        raise MCPError(code=RESOURCE_NOT_FOUND, message=f"Resource not found: {uri}")
    return _wire(types.ReadResourceResult, {"contents": [contents]})


async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
    _state(ctx).subscriptions.add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    _state(ctx).subscriptions.discard(str(params.uri))
    return types.EmptyResult()


# --- prompts ------------------------------------------------------------------


async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
    return _wire(types.ListPromptsResult, {"prompts": PROMPTS})


async def get_prompt(ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> types.GetPromptResult:
    return _wire(types.GetPromptResult, _prompt_messages(params))


def _prompt_messages(params: types.GetPromptRequestParams) -> dict[str, Any]:
    name = params.name
    args = params.arguments or {}
    if name == "test_simple_prompt":
        return {"messages": [{"role": "user", "content": _text("This is a simple prompt for testing.")}]}
    if name == "test_prompt_with_arguments":
        arg1, arg2 = args.get("arg1", ""), args.get("arg2", "")
        return {
            "messages": [{"role": "user", "content": _text(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")}]
        }
    if name == "test_prompt_with_embedded_resource":
        uri = args.get("resourceUri", "test://example-resource")
        return {
            "messages": [
                {
                    "role": "user",
                    "content": {
                        "type": "resource",
                        "resource": {
                            "uri": uri,
                            "mimeType": "text/plain",
                            "text": "Embedded resource content for testing.",
                        },
                    },
                },
                {"role": "user", "content": _text("Please process the embedded resource above.")},
            ]
        }
    if name == "test_prompt_with_image":
        return {
            "messages": [
                {"role": "user", "content": {"type": "image", "data": RED_PIXEL_PNG, "mimeType": "image/png"}},
                {"role": "user", "content": _text("Please analyze the image above.")},
            ]
        }
    raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {name}")


# --- completion and logging -----------------------------------------------------

COMPLETIONS: dict[str, list[str]] = {
    "arg1": ["paris", "park", "party", "test", "testing"],
    "arg2": ["world", "word", "work"],
    "id": ["1", "2", "3", "123"],
    "resourceUri": ["test://static-text", "test://static-binary", "test://example-resource"],
}


async def complete(ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> types.CompleteResult:
    prefix = params.argument.value or ""
    values = [v for v in COMPLETIONS.get(params.argument.name, []) if v.startswith(prefix)]
    return _wire(types.CompleteResult, {"completion": {"values": values, "total": len(values), "hasMore": False}})


async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
    _state(ctx).log_level = str(params.level)
    return types.EmptyResult()


# --- event store for SSE resumability (HTTP mode) --------------------------------


class InMemoryEventStore(EventStore):
    def __init__(self, max_events: int = 10_000) -> None:
        self._events: list[tuple[EventId, StreamId, Any]] = []
        self._counter = itertools.count(1)
        self._max = max_events

    async def store_event(self, stream_id: StreamId, message: Any) -> EventId:
        event_id = str(next(self._counter))
        self._events.append((event_id, stream_id, message))
        if len(self._events) > self._max:
            del self._events[: len(self._events) - self._max]
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        index = next((i for i, (eid, _, _) in enumerate(self._events) if eid == last_event_id), None)
        if index is None:
            return None
        stream_id = self._events[index][1]
        for event_id, sid, message in self._events[index + 1 :]:
            if sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


# --- wiring ---------------------------------------------------------------------


def build_server() -> Server[Any]:
    return Server(
        SERVER_NAME,
        version=SERVER_VERSION,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        on_set_logging_level=set_level,
    )


async def run_stdio(server: Server[Any]) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def run_http(server: Server[Any], port: int) -> None:
    import uvicorn

    # host="127.0.0.1" turns on the SDK's DNS-rebinding protection (Host/Origin
    # must be 127.0.0.1 / localhost / [::1], any port).
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        host="127.0.0.1",
        event_store=InMemoryEventStore(),
        retry_interval=500,
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    server = build_server()
    if args.http is not None:
        run_http(server, args.http)
    else:
        anyio.run(run_stdio, server)


if __name__ == "__main__":
    main()
