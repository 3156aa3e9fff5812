"""The ``radlight`` command: one entry point that starts each process and administers the node.

The CLI is the composition root, so it alone imports the other packages, lazily, inside the command
that needs them (``radlight`` itself stays free of internal imports at module level).
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from radlight.cli_common import Command, db_transaction, out
from radlight.cli_models import BUNDLED_MODELS, _install_built, add_model_commands
from radlight.cli_users import add_user_commands
from radlight.errors import ConfigurationError, RadLightError
from radlight.logs import configure_logging
from radlight.settings import Settings, load_settings

if TYPE_CHECKING:
    pass


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from db.migrate import upgrade

    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    out("database schema is up to date")
    return 0


def cmd_dicom_node(args: argparse.Namespace, settings: Settings) -> int:
    from dicom_node.node import DicomNode, die_with_parent

    if args.extra_listener:
        die_with_parent(args.extra_listener)
    # With RADLIGHT_DICOM_LISTENERS=N the node starts N-1 more SCP-only processes on its port.
    node = DicomNode(
        settings,
        run_assembler=not (args.no_assembler or args.extra_listener),
        extra_listeners=0 if args.extra_listener else settings.dicom_listeners - 1,
        wake_node_pid=args.extra_listener or None,
    )

    def _stop(signum: int, frame: FrameType | None) -> None:
        node.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.start()
    node.wait()
    return 0


def cmd_dispatcher(args: argparse.Namespace, settings: Settings) -> int:
    """The assembler loop alone, for deployments that run the node in several replicas."""
    from dicom_node.node import Dispatcher

    dispatcher = Dispatcher(settings, heartbeat=args.heartbeat)

    def _stop(signum: int, frame: FrameType | None) -> None:
        dispatcher.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    dispatcher.run()
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from radlight.contracts import QUEUE_DELIVERY, QUEUE_INFERENCE

    queues = args.queues or f"{QUEUE_INFERENCE},{QUEUE_DELIVERY}"
    concurrency = args.concurrency or settings.worker_concurrency
    pool = args.pool or settings.worker_pool
    # The pool's processes read their settings afresh: tell them how many of them share the
    # cores, from which each sizes its inference threads, and whether they batch across jobs.
    os.environ["RADLIGHT_WORKER_CONCURRENCY"] = str(concurrency)
    os.environ["RADLIGHT_WORKER_POOL"] = pool
    from workers.tasks import app  # after the environment: the app reads its settings on import

    argv = [
        "worker",
        f"--loglevel={settings.log_level}",
        f"--queues={queues}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        "--without-gossip",
        "--without-mingle",
    ]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv=argv)
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from services.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
    )
    return 0


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """Migrate, install a bundled model if none, and add a default route if none."""
    from db.config import upsert_route
    from db.migrate import upgrade
    from db.models import Route
    from models.registry import ModelRegistry

    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    registry = ModelRegistry(settings.models_dir)
    if not registry.list():
        kind = getattr(args, "model", None) or "densenet121-untrained"
        try:
            installed = _install_built(settings, kind)
        except ImportError:  # torch (export extra) not installed: the tiny graph needs none
            installed = _install_built(settings, "tiny")
        out(f"installed model {installed} (UNTRAINED: scores are meaningless)")
    model = registry.list()[0]
    with db_transaction(settings) as session:
        if session.query(Route).count() == 0:
            upsert_route(
                session=session, name="chest-xray", model_name=model.name, modalities=["CR", "DX"]
            )
            out(f"added route chest-xray (CR, DX) -> {model.name}")
    out(f"data folder: {settings.resolved_data_dir}")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Start node, worker and API on this machine and stop them together."""
    status = cmd_init(args, settings)
    if status:
        return status
    env = dict(os.environ, RADLIGHT_DATA_DIR=str(settings.resolved_data_dir))
    children = [
        subprocess.Popen([sys.executable, "-m", "radlight", name], env=env)
        for name in ("dicom-node", "worker", "api")
    ]
    out(
        f"RadLight running: DICOM {settings.ae_title}@{settings.dicom_host}:{settings.dicom_port}, "
        f"API http://{settings.api_host}:{settings.api_port}/api/v1/studies (Ctrl-C stops)"
    )
    stopping = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.5)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    exit_code = 0
    for child in children:
        try:
            exit_code = max(exit_code, abs(child.wait(timeout=20)))
        except subprocess.TimeoutExpired:
            child.kill()
            exit_code = 1
    return 0 if stopping else max(exit_code, 1)


def cmd_destination_add(args: argparse.Namespace, settings: Settings) -> int:
    from db.config import upsert_destination

    with db_transaction(settings) as session:
        upsert_destination(
            session=session,
            name=args.name,
            host=args.host,
            port=args.port,
            ae_title=args.ae_title,
            sc_encoding=args.sc_encoding,
            tls=(args.tls_ca_file, args.tls_cert_file, args.tls_key_file) if args.tls else None,
        )
    tls = " over TLS" if args.tls else ""
    out(f"destination {args.name} -> {args.ae_title}@{args.host}:{args.port}{tls}")
    return 0


def cmd_route_add(args: argparse.Namespace, settings: Settings) -> int:
    from db.config import upsert_route

    with db_transaction(settings) as session:
        try:
            upsert_route(
                session=session,
                name=args.name,
                model_name=args.model,
                model_version=args.model_version,
                called_ae=args.called_ae,
                calling_ae=args.calling_ae,
                modalities=args.modality or None,
                destination_names=args.destination or (),
                produce_seg=args.seg,
                produce_gsps=args.gsps,
                expected_instances=args.expected_instances,
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
    out(f"route {args.name} -> model {args.model}")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """A short account of what the node holds: studies, jobs, results and deliveries."""
    from sqlalchemy import func, select

    from db.models import Delivery, IngestFailure, Job, Result, Study
    from db.session import make_engine, make_session_factory

    engine = make_engine(settings.effective_database_url)
    try:
        with make_session_factory(engine)() as session:
            for label, model, column in (
                ("studies", Study, Study.state),
                ("jobs", Job, Job.state),
                ("deliveries", Delivery, Delivery.state),
            ):
                rows = session.execute(select(column, func.count()).group_by(column)).all()
                counts = ", ".join(f"{state}: {count}" for state, count in rows) or "none"
                out(f"{label}: {counts}")
                del model
            failures = session.scalar(select(func.count()).select_from(IngestFailure))
            out(f"refused instances: {failures}")
            for result in session.scalars(select(Result).order_by(Result.id)):
                path = settings.store_dir / result.relative_path
                out(f"result {result.kind}: {path}")
    finally:
        engine.dispose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radlight", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        return p

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_cmd", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    node = add("dicom-node", cmd_dicom_node, "run the DICOM storage SCP and study assembler")
    node.add_argument(
        "--no-assembler",
        action="store_true",
        help="run the SCP only; a separate `radlight dispatcher` assembles and queues",
    )
    node.add_argument("--extra-listener", type=int, metavar="PARENT_PID", help=argparse.SUPPRESS)
    dispatcher = add(
        "dispatcher", cmd_dispatcher, "run only the study assembler and job dispatcher"
    )
    dispatcher.add_argument(
        "--heartbeat", type=Path, help="file touched after every tick (for liveness probes)"
    )
    worker = add("worker", cmd_worker, "run a Celery worker")
    worker.add_argument("--queues", help="comma-separated queue names (default: all)")
    worker.add_argument("--concurrency", type=int, help="jobs at once (processes or threads)")
    worker.add_argument(
        "--pool",
        choices=("prefork", "threads"),
        help="prefork: a process per job (default); threads: one process, a thread per job, "
        "which dynamic batching (RADLIGHT_INFERENCE_BATCH_MAX) needs",
    )
    worker.add_argument("--hostname", help="Celery node name")
    add("api", cmd_api, "run the REST API and dashboard")
    init = add("init", cmd_init, "migrate and install defaults (model, route)")
    init.add_argument("--model", choices=BUNDLED_MODELS, help="bundled model to install if none")
    add("run", cmd_run, "run node, worker and API together on this machine")
    add("status", cmd_status, "summarise studies, jobs, results and deliveries")

    add_model_commands(sub)
    add_user_commands(sub)

    dest = sub.add_parser("destinations", help="result destinations").add_subparsers(
        dest="dest_cmd", required=True
    )
    dest_add = dest.add_parser("add", help="add or update a destination")
    dest_add.set_defaults(func=cmd_destination_add)
    dest_add.add_argument("name")
    dest_add.add_argument("--host", required=True)
    dest_add.add_argument("--port", type=int, required=True)
    dest_add.add_argument("--ae-title", required=True)
    dest_add.add_argument(
        "--sc-encoding",
        choices=("lossless", "jpeg_baseline"),
        default="lossless",
        help="how this destination gets Secondary Capture images (JPEG baseline is lossy)",
    )
    dest_add.add_argument("--tls", action="store_true", help="send over DICOM TLS")
    dest_add.add_argument("--tls-ca-file", help="PEM CAs the peer's certificate must chain to")
    dest_add.add_argument("--tls-cert-file", help="PEM client certificate, if the peer wants one")
    dest_add.add_argument("--tls-key-file", help="PEM key of the client certificate")

    routes = sub.add_parser("routes", help="routing rules").add_subparsers(
        dest="route_cmd", required=True
    )
    route_add = routes.add_parser("add", help="add or update a route")
    route_add.set_defaults(func=cmd_route_add)
    route_add.add_argument("name")
    route_add.add_argument("--model", required=True)
    route_add.add_argument("--model-version")
    route_add.add_argument("--called-ae")
    route_add.add_argument("--calling-ae")
    route_add.add_argument("--modality", action="append")
    route_add.add_argument("--destination", action="append")
    route_add.add_argument("--seg", action="store_true", help="also send a probability SEG")
    route_add.add_argument(
        "--expected-instances",
        type=int,
        metavar="N",
        help="route a study as soon as N of the instances this route takes arrived (1 for "
        "single-image studies), without waiting for the quiet period",
    )
    route_add.add_argument(
        "--gsps", action="store_true", help="also send a presentation state with the regions"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ValueError as exc:
        sys.stderr.write(f"radlight: invalid settings: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_json, settings.log_dicom_level)
    func: Command = args.func
    try:
        return func(args, settings)
    except RadLightError as exc:
        sys.stderr.write(f"radlight: {exc}\n")
        return 1
