"""Entry points: the `thaw` command, the demo, the composition of the runtime from settings, the ASGI factory and
the Celery worker module. The only modules that read settings."""
