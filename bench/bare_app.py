"""The bare Starlette baseline of bench/http.py: one route, a fixed small JSON body.

Served by the same uvicorn options as the taskhub app:
``python -m uvicorn bench.bare_app:app`` from the repo root.
"""
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY = b'{"success":true}'


async def bare(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/bare", bare, methods=["GET", "POST"])])
