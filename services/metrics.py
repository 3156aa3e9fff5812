"""Prometheus metrics at /metrics."""

from fastapi import APIRouter

router = APIRouter(tags=["metrics"])
