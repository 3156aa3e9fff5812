# RadLight image: one image, the command picks the process (dicom-node, worker, api).
# Not built on the development machines (no Docker engine there); see issue #6 for the full deployment.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends dcmtk && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 radlight
WORKDIR /app
COPY pyproject.toml README.md ./
COPY radlight radlight
COPY db db
COPY dicom_node dicom_node
COPY models models
COPY workers workers
COPY services services
RUN pip install --no-cache-dir .
USER radlight
ENV RADLIGHT_DATA_DIR=/data RADLIGHT_API_HOST=0.0.0.0
VOLUME ["/data"]
ENTRYPOINT ["radlight"]
