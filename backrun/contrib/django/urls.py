"""``path("ops/jobs/", include("backrun.contrib.django.urls"))``: the jobs dashboard, staff only.

Names: ``backrun_dashboard:overview`` (the admin index links to it).
"""

from __future__ import annotations

from .views import dashboard_patterns

app_name = "backrun_dashboard"

urlpatterns = dashboard_patterns()
