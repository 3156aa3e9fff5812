"""Deliveries: what was sent where, and retrying what failed."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/deliveries", tags=["deliveries"])
