"""The OpenAPI document matches the application's real routes, both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.openapi import build_openapi
from tests.store_factory import fill_store, make_config


def _real_routes(config: Any) -> set[tuple[str, str]]:
    app = create_app(config, refresh_seconds=None)
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in doc["paths"].items() for method in ops}


def test_every_route_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    for base in ("/musegate", "/sonic/gate"):
        config = make_config(tmp_path, base_path=base)
        real = _real_routes(config)
        documented = _documented(build_openapi(config.base_path))
        assert real - documented == set(), "routes missing from the OpenAPI document"
        assert documented - real == set(), "documented routes the app does not serve"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_document_is_well_formed() -> None:
    doc = build_openapi()
    assert doc["openapi"].startswith("3.")
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    operation_ids = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            assert op["summary"]
            operation_ids.append(op["operationId"])
            path_params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert path_params == {s.strip("{}") for s in path.split("/") if s.startswith("{")}
    assert len(operation_ids) == len(set(operation_ids))


async def test_served_document(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    await fill_store(config)
    app = create_app(config, refresh_seconds=None)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        resp = await session.get(server.make_url("/musegate/api/openapi.json"))
        assert resp.status == 200
        assert await resp.json() == build_openapi("/musegate")
