"""Destinations: the PACS peers results go to; CRUD and a C-ECHO test."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/destinations", tags=["destinations"])
