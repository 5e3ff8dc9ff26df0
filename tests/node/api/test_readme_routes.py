"""The README's table of the HTTP API is the app's real route list, both ways: every
documented route is served, every served route is documented, and the "admin only"
column says which routes need the admin token."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from starlette.routing import Mount, Route

from node.api.app import create_app, served_routes

README = Path(__file__).resolve().parents[3] / "README.md"
MARKER = "<!-- route-table"


def readme_routes() -> dict[tuple[str, str], bool]:
    """{(METHOD, path): admin_only} from the table that follows the marker comment."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(MARKER))
    header = [c.strip().lower() for c in lines[start + 1].strip("|").split("|")]
    rows: dict[tuple[str, str], bool] = {}
    for line in lines[start + 3 :]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|")), strict=True))
        path = re.fullmatch(r"`([^`]+)`", cells["path"])
        assert path, f"path cell is not `code`: {line}"
        key = (cells["method"].upper(), path.group(1))
        assert key not in rows, f"{key} is in the README table twice"
        assert cells["admin only"] in ("yes", "no"), line
        rows[key] = cells["admin only"] == "yes"
    return rows


def app_routes() -> dict[tuple[str, str], bool]:
    """{(METHOD, path): admin_only} of the app (HEAD is implied by GET)."""
    app = create_app(SimpleNamespace(started_at=0.0))  # the route list does not depend on the node
    doc = app.openapi()
    out: dict[tuple[str, str], bool] = {}
    for route in served_routes(app):
        if isinstance(route, Mount):
            out[("GET", f"{route.path}/{{path}}")] = False
        elif isinstance(route, Route):  # APIRoute too
            for method in sorted((route.methods or set()) - {"HEAD"}):
                op = doc["paths"].get(route.path, {}).get(method.lower(), {})
                out[(method, route.path)] = bool(op.get("security"))
    return out


def test_readme_route_table_matches_the_app() -> None:
    documented, served = readme_routes(), app_routes()
    assert sorted(set(documented) - set(served)) == [], "documented in README.md but not served"
    assert sorted(set(served) - set(documented)) == [], "served but missing from README.md's route table"
    wrong_admin = {k: served[k] for k in served if documented[k] != served[k]}
    assert wrong_admin == {}, "README's 'admin only' column disagrees with the app (app's value shown)"


def test_admin_routes_exist() -> None:
    """The table is not vacuous: the admin route is marked, and the core routes are listed."""
    documented = readme_routes()
    assert documented[("POST", "/v1/workers")] is True
    assert {("POST", "/v1/requests"), ("POST", "/v1/chat/completions"), ("GET", "/metrics")} <= set(
        documented
    )
