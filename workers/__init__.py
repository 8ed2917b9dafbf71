"""Workers: Celery app, thin tasks, the embedding pipeline and media I/O."""
