"""URLs of the example project."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("search", views.search),
    path("cart", views.Cart.as_view()),
    path("health", views.health),
]
