"""`kelm serve`: trained run folders and the graph store behind one HTTP API (FastAPI)."""

from kelm.app.serve.app import ServeSettings, create_app
from kelm.app.serve.batching import DynamicBatcher, Overloaded
from kelm.app.serve.services import Service, load_service

__all__ = ["DynamicBatcher", "Overloaded", "ServeSettings", "Service", "create_app", "load_service"]
