"""Routing rules: which studies go to which model and where results go."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/routes", tags=["routes"])
