"""Result objects: download the DICOM file, rendered PNG previews."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/results", tags=["results"])
