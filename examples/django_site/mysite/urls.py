"""URLs of the example project."""

from accounts import views
from django.urls import path

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("accounts/<int:pk>/", views.account, name="account"),
    path("reports/", views.report, name="report"),
]
