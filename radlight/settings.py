"""Settings, read once per process from ``RADLIGHT_*`` environment variables and passed down.

With nothing set, RadLight runs on one machine on embedded defaults: SQLite and a local instance store
under ``data_dir``, and Celery on kombu's filesystem transport (a queue in a folder, no server). Point
``RADLIGHT_DATABASE_URL`` at PostgreSQL and ``RADLIGHT_BROKER_URL`` at Redis to scale out.
"""

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Settings that hold secrets; each may instead be read from the file that RADLIGHT_<NAME>_FILE names.
SECRET_FIELDS = ("secret_key", "database_url", "broker_url")


class Settings(BaseSettings):
    """Every tunable of a RadLight process."""

    model_config = SettingsConfigDict(env_prefix="RADLIGHT_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path("radlight-data"), description="Root of store, db and queue."
    )
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite if unset.")
    broker_url: str | None = Field(default=None, description="Celery broker; filesystem if unset.")

    ae_title: str = Field(default="RADLIGHT", min_length=1, max_length=16)
    dicom_host: str = "0.0.0.0"  # noqa: S104 - a DICOM node must be reachable by the PACS
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Calling AE titles allowed to associate; empty = any."
    )
    max_associations: int = Field(default=10, ge=1, le=1000)
    max_pdu_size: int = Field(default=0, ge=0, description="0 = unlimited (pynetdicom).")
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    max_instance_bytes: int = Field(default=2 * 1024**3, gt=0)
    store_min_free_bytes: int = Field(
        default=1024**3,
        ge=0,
        description="Refuse C-STORE with 0xA700 while the store has less free space than this.",
    )
    dicom_listeners: int = Field(
        default=1, ge=1, le=64, description="Node processes sharing the DICOM port (SO_REUSEPORT)."
    )
    dicom_tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain) of the SCP; with the key, enables TLS."
    )
    dicom_tls_key_file: Path | None = Field(default=None, description="PEM private key of the SCP.")
    dicom_tls_ca_file: Path | None = Field(
        default=None, description="PEM CA certificates that client certificates must chain to."
    )
    dicom_tls_require_client_cert: bool = Field(
        default=True, description="Refuse TLS clients without a certificate from the CA file."
    )

    study_quiet_seconds: float = Field(default=5.0, ge=0, description="Study is complete after.")
    assembler_interval_s: float = Field(default=1.0, gt=0)
    requeue_after_s: float = Field(
        default=300.0, gt=0, description="Re-queue jobs queued but not started after this."
    )
    job_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="A running job's lease; its worker renews it every third of this, and the "
        "dispatcher re-queues a job whose lease ran out (the worker died).",
    )
    assembler_poll_s: float = Field(
        default=0.5,
        gt=0,
        description="Between assembler ticks, how often one cheap query looks for a study that "
        "became ready or a job to queue. The node's C-STORE handlers wake the assembler after "
        "each instance (dicom_node/wakeup.py), so this is a safety net; where wake-ups cannot be "
        "set up it is the only way, and a short value (0.02) makes single-image studies prompt.",
    )

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)

    worker_concurrency: int = Field(default=1, ge=1, le=64)
    worker_pool: Literal["prefork", "threads"] = Field(
        default="prefork",
        description="prefork: worker_concurrency processes, one job each (the CPU's choice: "
        "building results is Python, one core per process). threads: one process runs "
        "worker_concurrency jobs in threads sharing one session per model, which is what "
        "dynamic batching (inference_batch_max) needs; for a GPU, run a few such workers.",
    )
    inference_batch_max: int = Field(
        default=1,
        ge=1,
        le=256,
        description="With the threads pool: the most images one model run takes from the jobs "
        "running at once (dynamic batching across studies, models/batching.py); 1 = every job "
        "runs the model alone. For a GPU; on a CPU a batch gains little (docs/PERFORMANCE.md).",
    )
    inference_batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="How long a batched run waits for more images after its first (each job's "
        "inference waits at most this much more). 0 takes only what is already waiting when "
        "the model is free; jobs that got their results from one run then come back a moment "
        "apart and the first runs alone (bench/bench_batching.py: 1.3 images per run with 2 "
        "jobs at 0 ms, 2.0 at 2 ms).",
    )
    inference_precision: Literal["fp32", "fp16"] = Field(
        default="fp32",
        description="fp16: run each model's fp16 copy where `radlight models fp16` made and "
        "checked one (models/precision.py), else its fp32 file with the reason logged. For a "
        "GPU; results made by the copy say version <version>+fp16 and the copy's sha256.",
    )
    inference_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="onnxruntime intra-op threads per worker process; 0 = the cores this process "
        "may run on divided by the worker processes (worker_concurrency with the prefork pool, "
        "1 with the threads pool), at least 1, so N workers on C cores do not oversubscribe "
        "the CPU.",
    )
    inference_spinning: bool = Field(
        default=False,
        description="Let onnxruntime's threads go on busy-waiting after each inference (its own "
        "default; within an inference they always do): CPU taken from everything else on shared "
        "cores, for nothing unless inferences follow each other at once.",
    )
    delivery_inline: bool = Field(
        default=True,
        description="The job's worker sends each result while it builds the next, over a "
        "kept-open association per destination; retries go through the delivery queue. False: "
        "every delivery is a task.",
    )
    delivery_max_attempts: int = Field(default=5, ge=1, le=100)
    delivery_backoff_s: float = Field(default=2.0, gt=0)
    result_ae_title: str = Field(default="RADLIGHT", min_length=1, max_length=16)
    overlays_per_image: int = Field(
        default=3, ge=0, le=14, description="SC overlays for the top present findings per image."
    )
    overlay_max_side: int = Field(
        default=1024,
        ge=0,
        le=8192,
        description="Longest side in pixels of the Secondary Capture overlays: a larger source "
        "is shown reduced in them (its heatmaps come from a 7x7 map; a full-size RGB overlay of "
        "a 3000 px CR is 27 MB). The SR, SEG and GSPS keep the source's coordinates. 0: the "
        "source's own size.",
    )
    default_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Operating threshold where a card sets none."
    )

    secret_key_file: Path | None = Field(
        default=None, description="A file holding the secret key (instead of RADLIGHT_SECRET_KEY)."
    )
    database_url_file: Path | None = Field(
        default=None, description="A file holding the database URL, which has its password."
    )
    broker_url_file: Path | None = Field(
        default=None, description="A file holding the broker URL, which has its password."
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs API tokens; unset = a random key kept in <data_dir>/secret_key (0600).",
    )
    access_token_minutes: int = Field(default=15, ge=1, le=24 * 60)
    login_max_failures_per_user: int = Field(
        default=5, ge=0, description="Failed sign-ins per username in the window; 0 = no limit."
    )
    login_max_failures_per_address: int = Field(
        default=30, ge=0, description="Failed sign-ins per client address in the window; 0 = none."
    )
    login_lockout_s: int = Field(
        default=900, ge=1, description="The window (and lockout) for failed sign-ins, seconds."
    )
    secure_cookies: bool = Field(
        default=False, description="Mark dashboard cookies Secure (set it behind HTTPS)."
    )

    grounding_model: str | None = Field(
        default=None,
        description="The installed classifier the API's grounding and viewer use; by default "
        "the one installed classifier (its latest version).",
    )
    grounding_max_image_bytes: int = Field(default=16 * 1024**2, ge=1024, le=256 * 1024**2)
    log_json: bool = True
    log_level: str = "INFO"
    log_dicom_level: str = Field(
        default="WARNING",
        description="pynetdicom's and pydicom's own log level (no PHI either way).",
    )

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _split_ae_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("ae_title", "result_ae_title")
    @classmethod
    def _ae_title_chars(cls, value: str) -> str:
        if not value.strip() or "\\" in value or any(ord(c) < 32 for c in value):
            raise ValueError("AE title must be 1-16 printable characters without backslash")
        return value.strip()

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: object) -> object:
        """``RADLIGHT_SECRET_KEY_FILE`` etc.: read a secret from a file (Docker/Kubernetes secrets)."""
        if not isinstance(data, dict):
            return data
        for name in SECRET_FIELDS:
            path = data.get(f"{name}_file")
            if path is None:
                continue
            if data.get(name) is not None:
                raise ValueError(
                    f"set RADLIGHT_{name.upper()} or RADLIGHT_{name.upper()}_FILE, not both"
                )
            try:
                data[name] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"cannot read RADLIGHT_{name.upper()}_FILE: {exc.strerror}"
                ) from exc
        return data

    @model_validator(mode="after")
    def _tls_files_together(self) -> "Settings":
        if (self.dicom_tls_cert_file is None) != (self.dicom_tls_key_file is None):
            raise ValueError("DICOM TLS needs both RADLIGHT_DICOM_TLS_CERT_FILE and _KEY_FILE")
        if self.dicom_tls and self.dicom_tls_require_client_cert and not self.dicom_tls_ca_file:
            raise ValueError(
                "RADLIGHT_DICOM_TLS_REQUIRE_CLIENT_CERT needs RADLIGHT_DICOM_TLS_CA_FILE "
                "(or set it to false)"
            )
        return self

    @property
    def dicom_tls(self) -> bool:
        """Whether the SCP speaks TLS (a certificate and key are configured)."""
        return self.dicom_tls_cert_file is not None

    @cached_property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def store_dir(self) -> Path:
        return self.resolved_data_dir / "store"

    @property
    def models_dir(self) -> Path:
        return self.resolved_data_dir / "models"

    @property
    def queue_dir(self) -> Path:
        return self.resolved_data_dir / "queue"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'radlight.db'}"

    @property
    def effective_inference_threads(self) -> int:
        """``inference_threads``, or when 0 this process's usable cores shared out among the
        worker processes."""
        if self.inference_threads:
            return self.inference_threads
        processes = self.worker_concurrency if self.worker_pool == "prefork" else 1
        return max(1, len(os.sched_getaffinity(0)) // processes)

    @property
    def batches_inference(self) -> bool:
        """Whether a worker stacks the images of its concurrent jobs into one model run."""
        return self.worker_pool == "threads" and self.inference_batch_max > 1

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost/"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url is None


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides (tests, CLI flags) on top."""
    return Settings(**overrides)  # type: ignore[arg-type]


__all__ = ["Settings", "load_settings"]
