"""The test project's URL patterns: path converters, an ``include()``, a regular expression."""

from __future__ import annotations

from django.urls import include, path, re_path

from tests.clients.python.django_site import views

orders = [path("orders/<slug:ref>/", views.order)]

urlpatterns = [
    path("items/<int:pk>/", views.item),
    path("api/", include(orders)),
    re_path(r"^archive/(?P<year>[0-9]{4})/$", views.archive),
    path("stream/", views.stream),
    path("file/", views.file),
    path("upload/", views.upload),
    path("boom/", views.boom),
]
