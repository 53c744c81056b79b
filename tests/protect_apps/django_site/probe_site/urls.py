from django.urls import path

from probe.views import backend

urlpatterns = [path("", backend)]
