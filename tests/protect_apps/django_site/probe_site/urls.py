from django.urls import path

from probe.views import backend, every_alias

urlpatterns = [path("", backend), path("all", every_alias)]
