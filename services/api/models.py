"""Model versions in the registry, activation per route and per-site thresholds."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/models", tags=["models"])
