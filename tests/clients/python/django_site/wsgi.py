"""The test project's WSGI application, counted as clients/README.md shows: the emitter sends to
the daemon of ``BWMON_TEST_UDP_PORT``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.clients.python.django_site.settings")

from django.core.wsgi import get_wsgi_application

import bwmon_client
from bwmon_client.django import BwmonWSGIMiddleware

emitter = bwmon_client.configure(
    "django-shop", url=f"udp://127.0.0.1:{os.environ['BWMON_TEST_UDP_PORT']}", interval_s=0.2
)
application = BwmonWSGIMiddleware(get_wsgi_application(), emitter)
