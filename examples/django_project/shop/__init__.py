"""A tiny Django project limited by throttlekit (served by ``uvicorn shop.asgi:application``
from ``examples/django_project/``)."""
