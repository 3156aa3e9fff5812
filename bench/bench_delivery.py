"""One small C-STORE to Orthanc over a kept-open association: pynetdicom as it comes (Nagle's
algorithm on) against RadLight's sender (TCP_NODELAY on pynetdicom's socket), in the same run.

A small object (a 64 x 64 copy of the NIH image, a few KB, the size of an SR) is sent ``--sends``
times on one association each way; prints the median milliseconds per C-STORE and the ratio.
Run: ``python -m bench.bench_delivery``.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE

from bench.stack import SOURCE, machine
from dicom_node.scu import NoDelayAE
from tests.peers import run_orthanc


def small_dataset() -> pydicom.Dataset:
    ds = pydicom.dcmread(SOURCE)
    ds.Rows, ds.Columns = 64, 64
    ds.PixelData = np.zeros((64, 64), dtype=np.uint8).tobytes()
    return ds


def per_store_ms(ae: AE, port: int, ds: pydicom.Dataset, sends: int) -> float:
    ae.add_requested_context(str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
    if not assoc.is_established:
        raise RuntimeError("Orthanc refused the association")
    times = []
    try:
        for _ in range(sends):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            start = time.perf_counter()
            status = assoc.send_c_store(ds)
            times.append((time.perf_counter() - start) * 1e3)
            if int(status.Status) != 0:
                raise RuntimeError(f"C-STORE status 0x{int(status.Status):04X}")
    finally:
        assoc.release()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=50)
    args = parser.parse_args()
    ds = small_dataset()
    print(f"# small C-STORE ({len(ds.PixelData)} pixel bytes) to Orthanc; {machine()}")
    print("| sender | median ms per C-STORE |")
    print("|---|---|")
    with (
        tempfile.TemporaryDirectory(prefix="radlight-bench-delivery-") as tmp,
        run_orthanc(Path(tmp) / "orthanc") as orthanc,
    ):
        plain = per_store_ms(AE(ae_title="RADLIGHT"), orthanc.dicom_port, ds, args.sends)
        nodelay = per_store_ms(NoDelayAE(ae_title="RADLIGHT"), orthanc.dicom_port, ds, args.sends)
    print(f"| pynetdicom AE (Nagle on) | {plain:.1f} |")
    print(f"| RadLight NoDelayAE (TCP_NODELAY) | {nodelay:.1f} |")
    print(f"# ratio plain / TCP_NODELAY: {plain / nodelay:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
