"""The DICOM node's AE settings: the calling-AE allow-list."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/ae", tags=["ae"])
