"""docs/CONFORMANCE.md is exactly what scripts/conformance.py makes from the code, and it names
everything the node really negotiates and sends."""

import re
import subprocess
import sys
from pathlib import Path

from db.models import ResultKind
from dicom_node import status
from dicom_node.scp import make_ae
from radlight.settings import Settings
from tests.conftest import REPO_ROOT

COMMITTED = REPO_ROOT / "docs" / "CONFORMANCE.md"


def test_committed_statement_is_the_generated_one(tmp_path: Path) -> None:
    generated = tmp_path / "CONFORMANCE.md"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "conformance.py"), "--output", str(generated)],
        check=True,
        timeout=120,
    )
    assert generated.read_text() == COMMITTED.read_text(), (
        "docs/CONFORMANCE.md is stale: run `make conformance` and commit it"
    )


def test_statement_names_every_negotiated_class_status_and_result() -> None:
    text = COMMITTED.read_text()
    section_21 = text.split("### 2.1")[1].split("### 2.2")[0]
    listed = set(re.findall(r"^\| .+ \| `([0-9.]+)` \|$", section_21, flags=re.MULTILINE))
    negotiated = {str(cx.abstract_syntax) for cx in make_ae(Settings()).supported_contexts}
    assert listed == negotiated
    syntaxes = {
        str(ts) for cx in make_ae(Settings()).supported_contexts for ts in cx.transfer_syntax
    }
    section_22 = text.split("### 2.2")[1].split("### 2.3")[0]
    assert set(re.findall(r"`([0-9.]+)`", section_22)) == syntaxes
    for name, value in vars(status).items():
        if name.startswith("STATUS_"):
            assert f"| `0x{value:04X}` | " in text, name
            assert f"| `{name}` |" in text, name
    for kind in ResultKind:
        assert f"| `{kind.value}` |" in text, kind
