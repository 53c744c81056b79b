"""The Flask app's routes (web/views.py), one view per method; unmatched URLs get its JSON 404."""

from django.urls import path

from . import views

urlpatterns = [
    path("healthz", views.methods(GET=views.healthz)),
    path("readyz", views.methods(GET=views.readyz)),
    path("pool", views.methods(GET=views.pool_info)),
    path("items", views.methods(GET=views.list_items, POST=views.create_item)),
    path("items/<int:item_id>", views.methods(GET=views.get_item)),
    path("jobs", views.methods(POST=views.enqueue_job)),
    path("jobs/<str:job_id>", views.methods(GET=views.job_status)),
]

handler400 = "django_stack.errors.bad_request"
handler404 = "django_stack.errors.not_found"
handler500 = "django_stack.errors.server_error"
