"""The audit trail, for admins."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
