"""Throughput, per-stage latency percentiles and failure rates."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/stats", tags=["stats"])
