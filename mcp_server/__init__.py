"""The MCP server for alter-agents: `request` and `connect` over stdio and streamable HTTP."""

from __future__ import annotations

from mcp_server.auth import JWTTokenVerifier, StaticTokenVerifier, auth_settings
from mcp_server.http import CALLBACK_PATH, HttpServer, build_http, serve_http
from mcp_server.resources import GRANTS_URI
from mcp_server.schema import output_schema
from mcp_server.server import build_server, render

__all__ = [
    "CALLBACK_PATH",
    "GRANTS_URI",
    "HttpServer",
    "JWTTokenVerifier",
    "StaticTokenVerifier",
    "auth_settings",
    "build_http",
    "build_server",
    "output_schema",
    "render",
    "serve_http",
]
