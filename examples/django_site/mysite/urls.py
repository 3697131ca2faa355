"""URLs of the example project."""

from accounts import views
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The jobs dashboard, staff only (log in through /admin/ first).
    path("ops/jobs/", include("backrun.contrib.django.urls")),
    path("signup/", views.signup, name="signup"),
    path("accounts/<int:pk>/", views.account, name="account"),
    path("reports/", views.report, name="report"),
]
