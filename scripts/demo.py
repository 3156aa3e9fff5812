"""`make demo`: RadLight on embedded defaults, end to end, on this machine.

Starts a demo PACS (Orthanc, if installed) and `radlight run` (node, worker, API; SQLite, local
store, filesystem broker), sends a chest X-ray study with dcmtk's storescu (the real NIH DICOM files
in ../shared/assets/dicom where that folder exists, otherwise a study it generates), waits for the
results, and shows where they are and how to open them.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "radlight-data" / "demo"
ASSETS = Path(os.environ.get("RADLIGHT_ASSETS", ROOT.parent / "shared" / "assets"))
STORESCU = "/usr/bin/storescu"
ORTHANC = "/usr/sbin/Orthanc"
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    raise RuntimeError("no free port")


def radlight(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "radlight", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"radlight {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def generated_study(folder: Path) -> list[Path]:
    """A synthetic frontal chest radiograph (DX, PA), for machines without the shared assets."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[-1:1:1024j, -1:1:1024j]
    body = np.exp(-(((x / 0.85) ** 2 + (y / 0.95) ** 2) ** 4))
    lungs = np.exp(-((((np.abs(x) - 0.38) / 0.25) ** 2 + ((y + 0.05) / 0.55) ** 2) ** 2))
    heart = np.exp(-((((x - 0.1) / 0.22) ** 2 + ((y - 0.25) / 0.2) ** 2) ** 2))
    image = np.clip(3000 * body - 1800 * lungs + 900 * heart + 200, 0, 4095).astype(np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "DEMO^SYNTHETIC", "DEMO0001", "DX"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", "DEMO1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = image.tobytes()
    path = folder / "synthetic_cxr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path]


def start_orthanc(folder: Path) -> tuple[subprocess.Popen[bytes], int, int] | None:
    if not Path(ORTHANC).exists():
        return None
    dicom_port, http_port = free_port(4242), free_port(8042)
    config = {
        "Name": "radlight-demo-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "DicomAet": "DEMOPACS",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [ORTHANC, str(folder / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, TCP_NODELAY="1"),
    )
    return process, dicom_port, http_port


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    dicom_port, api_port = free_port(11112), free_port(8000)
    env = dict(
        os.environ,
        RADLIGHT_DATA_DIR=str(DATA / "node"),
        RADLIGHT_DICOM_HOST="127.0.0.1",
        RADLIGHT_DICOM_PORT=str(dicom_port),
        RADLIGHT_API_PORT=str(api_port),
        RADLIGHT_STUDY_QUIET_SECONDS="2",
        RADLIGHT_LOG_JSON="false",
        RADLIGHT_LOG_LEVEL="WARNING",
    )
    env.pop("RADLIGHT_DATABASE_URL", None)
    env.pop("RADLIGHT_BROKER_URL", None)
    say("== RadLight demo: embedded defaults (SQLite, local store, filesystem queue)")
    say(radlight(env, "init").rstrip())
    model = radlight(env, "models", "list").split()[0]
    # No default account exists: the demo makes one with a random password and says it once.
    password = secrets.token_urlsafe(12)
    radlight(
        env, "users", "create", "demo-admin", "--role", "admin", "--password-stdin", stdin=password
    )
    api_key = radlight(env, "api-keys", "create", "demo-script", "--role", "viewer").strip()
    auth = {"X-API-Key": api_key}
    pacs = start_orthanc(DATA / "pacs")
    if pacs is not None:
        _, pacs_dicom, pacs_http = pacs
        radlight(
            env,
            "destinations",
            "add",
            "demo-pacs",
            "--host",
            "127.0.0.1",
            "--port",
            str(pacs_dicom),
            "--ae-title",
            "DEMOPACS",
        )
        radlight(
            env,
            "routes",
            "add",
            "chest-xray",
            "--model",
            model,
            "--modality",
            "CR",
            "--modality",
            "DX",
            "--destination",
            "demo-pacs",
        )
        say(
            f"demo PACS (Orthanc) at DICOM 127.0.0.1:{pacs_dicom}, web http://127.0.0.1:{pacs_http}"
        )
    node = subprocess.Popen([sys.executable, "-m", "radlight", "run"], env=env)
    try:
        api = f"http://127.0.0.1:{api_port}"
        wait(lambda: httpx.get(api + "/ready", timeout=2).status_code == 200, 60, "the API")
        files = sorted((ASSETS / "dicom").glob("*.dcm")) if (ASSETS / "dicom").is_dir() else []
        if files:
            say(f"sending {len(files)} real NIH chest X-rays from {ASSETS / 'dicom'}")
        else:
            files = generated_study(DATA / "generated")
            say("shared assets not found: sending a generated chest X-ray study")
        sent = subprocess.run(
            [
                STORESCU,
                "-aet",
                "DEMO",
                "-aec",
                "RADLIGHT",
                "127.0.0.1",
                str(dicom_port),
                *map(str, files),
            ],
            env=dict(env, TCP_NODELAY="1"),
            check=False,
        )
        if sent.returncode:
            raise SystemExit("storescu failed")

        def finished() -> list[dict[str, Any]] | None:
            """All jobs final, and every delivery of their results sent or failed."""
            jobs: list[dict[str, Any]] = httpx.get(
                api + "/api/v1/jobs", headers=auth, timeout=5
            ).json()["items"]
            done = [j for j in jobs if j["state"] in ("succeeded", "not_analysed", "failed")]
            deliveries = [d for j in jobs for r in j["results"] for d in r["deliveries"]]
            moving = [d for d in deliveries if d["state"] not in ("sent", "failed")]
            return jobs if jobs and len(done) == len(jobs) and not moving else None

        jobs = wait(finished, 300, "the jobs to finish")
        for job in jobs:
            say(
                f"job {job['id']}: {job['state']} with model {job['model_name']} "
                f"{job['model_version']} {job['reason'] or ''}"
            )
        previews = DATA / "previews"
        previews.mkdir()
        for line in radlight(env, "status").splitlines():
            say("  " + line)
            if line.startswith("result heatmap_sc: "):
                path = Path(line.removeprefix("result heatmap_sc: "))
                png = previews / (path.stem + ".png")
                Image.fromarray(pydicom.dcmread(path).pixel_array).save(png)
                say(f"    preview: {png}")
        say(f"API: {api}/docs  dashboard: {api}/dashboard")
        say(f"sign in as demo-admin with password {password} (made for this demo run only)")
        if pacs is not None:
            time.sleep(3)
            say(f"results in the demo PACS: http://127.0.0.1:{pacs[2]}/app/explorer.html")
        say("open a result: dcmdump <file>, any DICOM viewer, or the PNG previews above")
        if os.environ.get("DEMO_KEEP_RUNNING"):
            say("running until Ctrl-C")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
        if pacs is not None:
            pacs[0].terminate()
            pacs[0].wait(timeout=15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
