"""Ingest throughput: RadLight's `radlight dicom-node` against dcmtk's storescp, in one script.

Each round starts a receiver on a fresh port with a fresh output folder (and, for RadLight, a fresh
SQLite or PostgreSQL database), then N concurrent /usr/bin/storescu processes each send their
share of the instances over one association; instances/s = instances / wall time from the first
storescu start to the last exit. Receivers are interleaved round by round, so a busy machine slows
them alike; the ratio RadLight/storescp of the medians is the figure that counts.

The instances are made at run time from the real DICOM in ../shared/assets/dicom: the pixel data
resampled to SIZE x SIZE at 12 bits stored (2048 -> an 8.4 MB DX), a new study, series and SOP
Instance UID per instance. Run: `python bench/bench_ingest.py --instances 200 --senders 1,4
--size 2048,512` (or `make bench`). Figures go in docs/PERFORMANCE.md.
"""

import argparse
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/bench_ingest.py` from the checkout
    sys.path.insert(0, str(REPO))

from tests.peers import (  # noqa: E402
    dicom_env,
    echo_ok,
    free_port,
    postgres_database,
    stop_process,
)

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
AE_TITLE = "RADLIGHT"


def assets_dicom() -> Path:
    root = Path(os.environ.get("RADLIGHT_ASSETS", REPO.parent / "shared" / "assets"))
    return root / "dicom"


def make_instances(source: Path, size: int, count: int, folder: Path) -> list[Path]:
    """``count`` 12-bit SIZE x SIZE DX files from ``source``, each its own study."""
    template = pydicom.dcmread(source)
    pixels = Image.fromarray(template.pixel_array.astype(np.float32))
    resized = np.asarray(pixels.resize((size, size), Image.Resampling.BILINEAR))
    low, high = float(resized.min()), float(resized.max())
    scaled = ((resized - low) * (4095.0 / max(high - low, 1.0))).round().astype("<u2")
    template.SOPClassUID = DX_FOR_PRESENTATION
    template.Modality = "DX"
    template.Rows = template.Columns = size
    template.BitsAllocated = 16
    template.BitsStored = 12
    template.HighBit = 11
    template.PixelRepresentation = 0
    template.SamplesPerPixel = 1
    template.PhotometricInterpretation = "MONOCHROME2"
    template.PixelData = scaled.tobytes()
    template["PixelData"].VR = "OW"
    template.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        template.StudyInstanceUID = generate_uid()
        template.SeriesInstanceUID = generate_uid()
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        path = folder / f"{index:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def listening_sockets(port: int) -> int:
    """Sockets listening on ``port`` (several with SO_REUSEPORT), from /proc/net/tcp."""
    local = f":{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(local) and line.split()[3] == "0A")


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path, listeners: int = 1) -> None:
    """Until every listener process is up and the node answers C-ECHO."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited {process.returncode}:\n{log.read_text()}")
        if listening_sockets(port) >= listeners and echo_ok(port, AE_TITLE):
            return
        time.sleep(0.2)
    raise RuntimeError(f"receiver on port {port} did not answer C-ECHO:\n{log.read_text()}")


def send(port: int, files: Sequence[Path], senders: int, max_pdu: int) -> float:
    """Seconds for ``senders`` concurrent storescu processes to send ``files`` (one share each)."""
    shares = [list(files[i::senders]) for i in range(senders)]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                STORESCU,
                "-aet",
                "BENCH",
                "-aec",
                AE_TITLE,
                "-pdu",
                str(max_pdu),
                "127.0.0.1",
                str(port),
                *map(str, share),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dicom_env(),
        )
        for share in shares
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    elapsed = time.perf_counter() - start
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"storescu exited {process.returncode}:\n{output.decode()[-2000:]}")
    return elapsed


@contextlib.contextmanager
def storescp(workdir: Path, max_pdu: int, fsync: bool) -> Iterator["Receiver"]:
    """dcmtk's storescp writing every instance to ``workdir/out`` (fsync: `sync FILE` per file)."""
    out = workdir / "out"
    out.mkdir()
    port = free_port()
    extra: list[str] = []
    if fsync:
        # storescp has no fsync option; --exec-on-reception with --exec-sync runs coreutils'
        # `sync FILE` (fsync) on each stored file before the C-STORE response is sent.
        extra = ["--exec-on-reception", "/usr/bin/sync #p/#f", "--exec-sync"]
    log = workdir / "storescp.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [STORESCP, "-aet", AE_TITLE, "-pdu", str(max_pdu), "-od", str(out), *extra, str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dicom_env(),
        )
    try:
        wait_ready(process, port, log)
        yield Receiver(port, process.pid)
    finally:
        stop_process(process)


@contextlib.contextmanager
def radlight_node(
    workdir: Path, max_pdu: int, backend: str, tree: Path = REPO, listeners: int = 1
) -> Iterator["Receiver"]:
    """The real `radlight dicom-node` process (code from ``tree``) with its store and a fresh
    database, migrated by that tree's own code."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{workdir / 'radlight.db'}"
        else:
            url = stack.enter_context(postgres_database())
        env = dict(
            dicom_env(),
            PYTHONPATH=str(tree),
            RADLIGHT_DATA_DIR=str(workdir / "data"),
            RADLIGHT_DATABASE_URL=url,
            RADLIGHT_DICOM_HOST="127.0.0.1",
            RADLIGHT_DICOM_PORT=str(port),
            RADLIGHT_AE_TITLE=AE_TITLE,
            RADLIGHT_MAX_PDU_SIZE=str(max_pdu),
            RADLIGHT_STUDY_QUIET_SECONDS="3600",  # ingest only: nothing is routed meanwhile
            RADLIGHT_LOG_LEVEL="WARNING",
            RADLIGHT_DICOM_LISTENERS=str(listeners),
        )
        subprocess.run(
            [sys.executable, "-m", "radlight", "db", "upgrade"],
            env=env,
            cwd=workdir,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        log = workdir / "radlight.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "radlight", "dicom-node"],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
            )
        try:
            wait_ready(process, port, log, listeners)
            yield Receiver(port, process.pid)
        finally:
            stop_process(process)


@dataclass(frozen=True)
class Receiver:
    port: int
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the receiver and its live child processes, from /proc."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(stat.parent.name), int(fields[1])
            if pid == self.pid or ppid == self.pid:
                total += (int(fields[11]) + int(fields[12])) / ticks
        return total


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


@dataclass
class Series:
    label: str
    rates: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # receiver CPU per instance

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def run_round(
    receiver: str,
    files: Sequence[Path],
    senders: int,
    max_pdu: int,
    scratch: Path,
    trees: dict[str, Path],
    listeners: int,
) -> tuple[float, float]:
    """Instances/s and the receiver's CPU milliseconds per instance for one round."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{receiver}-", dir=scratch))
    try:
        if receiver.startswith("storescp"):
            server = storescp(workdir, max_pdu, fsync=receiver == "storescp+fsync")
        else:
            label, backend = receiver.rsplit("-", 1)
            # --listeners applies to this checkout; another (--tree) runs as its code allows.
            tree = trees.get(label, REPO)
            server = radlight_node(
                workdir, max_pdu, backend, tree, listeners if tree == REPO else 1
            )
        with server as receiver_process:
            cpu_before = receiver_process.cpu_seconds()
            elapsed = send(receiver_process.port, files, senders, max_pdu)
            cpu = receiver_process.cpu_seconds() - cpu_before
            kept = workdir / "out" if receiver.startswith("storescp") else workdir / "data/store"
            received = count_files(kept / "instances" if kept.name == "store" else kept)
        if received != len(files):
            log = next(workdir.glob("*.log"), None)
            detail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{receiver} kept {received} of {len(files)} instances\n{detail}")
        return len(files) / elapsed, cpu * 1000 / len(files)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def csv_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--senders", type=csv_ints, default=[1, 4])
    parser.add_argument("--size", type=csv_ints, default=[2048, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-pdu", type=int, default=131072, help="receivers' and senders'")
    parser.add_argument(
        "--receivers",
        default="storescp,storescp+fsync,radlight-sqlite,radlight-postgresql",
        help="comma-separated: storescp, storescp+fsync, radlight-sqlite, radlight-postgresql",
    )
    parser.add_argument(
        "--listeners", type=int, default=1, help="RadLight node processes on the port"
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="also run the node from another checkout (before/after), as LABEL-sqlite and "
        "LABEL-postgresql, e.g. --tree before=/tmp/radlight-main",
    )
    args = parser.parse_args()
    # A SIGTERM unwinds like Ctrl-C, so receivers, folders and databases are cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    trees = {label: Path(path).resolve() for label, path in (t.split("=", 1) for t in args.tree)}
    for label in trees:
        receivers += [f"{label}-sqlite", f"{label}-postgresql"]
    sources = sorted(assets_dicom().glob("*.dcm"))
    if not sources:
        print(f"no DICOM files in {assets_dicom()}; set RADLIGHT_ASSETS", file=sys.stderr)
        return 2

    print(
        f"# ingest: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.instances} instances, max PDU {args.max_pdu}, medians of {args.repeats}, "
        f"RadLight listener processes {args.listeners}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    references = [r for r in receivers if r.startswith("storescp")]
    header = ["size", "senders", *(f"{r} inst/s" for r in receivers)]
    header += [
        f"{r}/{ref}" for r in receivers if not r.startswith("storescp") for ref in references
    ]
    header += [f"{r} CPU ms/inst" for r in receivers]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        scratch = Path(tmp)
        for size in args.size:
            files = make_instances(sources[0], size, args.instances, scratch / f"src-{size}")
            for senders in args.senders:
                series = {r: Series(r) for r in receivers}
                for _ in range(args.repeats):
                    for receiver in receivers:
                        rate, cpu_ms = run_round(
                            receiver, files, senders, args.max_pdu, scratch, trees, args.listeners
                        )
                        series[receiver].rates.append(rate)
                        series[receiver].cpu_ms.append(cpu_ms)
                row = [str(size), str(senders), *(f"{series[r].median:.1f}" for r in receivers)]
                row += [
                    f"{series[r].median / series[ref].median:.2f}"
                    for r in receivers
                    if not r.startswith("storescp")
                    for ref in references
                ]
                row += [f"{statistics.median(series[r].cpu_ms):.1f}" for r in receivers]
                print("| " + " | ".join(row) + " |", flush=True)
            shutil.rmtree(scratch / f"src-{size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
