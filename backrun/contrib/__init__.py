"""Framework integrations: ``backrun.contrib.django`` and ``backrun.contrib.flask``.

Each imports its framework, so neither loads unless the application asks for it.
"""
