"""Views: one plain, one limited by a decorator (async), one class-based."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View

from throttlekit.contrib.django import exempt, limit


def index(request: Any) -> JsonResponse:
    return JsonResponse({"hello": "world"})


@limit("3/minute")
async def search(request: Any) -> JsonResponse:
    return JsonResponse({"results": [], "remaining": request.throttle.remaining})


class Cart(View):
    @method_decorator(limit("2/minute", methods=["POST"]))
    def post(self, request: Any) -> JsonResponse:
        return JsonResponse({"added": True})

    def get(self, request: Any) -> JsonResponse:
        return JsonResponse({"items": []})


@exempt
def health(request: Any) -> HttpResponse:
    return HttpResponse("ok")
