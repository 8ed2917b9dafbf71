"""API: route modules, one per resource."""
