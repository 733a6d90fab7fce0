"""Settings of the Django project that tests/clients/python/test_django_gunicorn.py serves with
gunicorn: no database, no apps; the route middleware first, as clients/README.md says."""

from __future__ import annotations

SECRET_KEY = "bwmon-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.clients.python.django_site.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, object] = {}
MIDDLEWARE = [
    "bwmon_client.django.RouteMiddleware",
    "django.middleware.http.ConditionalGetMiddleware",
]
USE_TZ = True
LOGGING = {"version": 1, "disable_existing_loggers": True}
