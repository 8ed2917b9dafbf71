"""API: FastAPI service for ingest, similar items, blended recommendations, events and jobs."""
