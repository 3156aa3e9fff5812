"""helm/radlight rendered with Helm itself (helm-python-sdk, Helm v4 as a library, no cluster) for
the defaults and every example values file, and every manifest validated against the Kubernetes
JSON schemas offline (kubernetes-validate, strict: unknown fields fail).

KEDA's ScaledObject and TriggerAuthentication and the Prometheus Operator's PrometheusRule are custom
resources whose schemas kubernetes-validate does not ship; they are checked structurally here
instead (each field KEDA's Redis scaler reads and that what they name exists in the same render;
every alert expression parsed as PromQL and naming only metrics that exist).
"""

import functools
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints
import promql_parser
import pytest
import yaml
from kubernetes_validate.utils import (  # type: ignore[import-untyped]
    SchemaNotFoundError,
    ValidationError,
)

from radlight import cli
from radlight.contracts import QUEUE_DELIVERY, QUEUE_INFERENCE, TASK_QUEUES
from radlight.settings import Settings
from tests.conftest import REPO_ROOT

CHART = REPO_ROOT / "helm" / "radlight"
EXAMPLES = {path.stem: path for path in sorted((REPO_ROOT / "helm" / "examples").glob("*.yaml"))}
CASES = ["defaults", *EXAMPLES]
KUBE_VERSION = "1.30.0"  # the oldest release still widely supported by managed clusters
RELEASE, NAMESPACE = "pacs-ai", "radlight"
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# Test-only values for the Secret the chart makes when no existingSecret is named.
CHART_SECRETS = {
    "secretKey": "test-signing-key",
    "databaseUrl": "postgresql://radlight:test@postgres.db:5432/radlight",
    "brokerUrl": "redis://:test@redis.cache:6379/0",
    "redisPassword": "test",
}
SETTING_NAMES = {f"RADLIGHT_{name.upper()}" for name in Settings.model_fields}


def values_for(case: str) -> dict[str, Any]:
    values: dict[str, Any] = (
        {} if case == "defaults" else yaml.safe_load(EXAMPLES[case].read_text())
    )
    if not values.get("secrets", {}).get("existingSecret"):
        values["secrets"] = {**values.get("secrets", {}), **CHART_SECRETS}
    return values


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@functools.cache
def _rendered(case: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(values_for(case)))


def rendered(case: str) -> list[dict[str, Any]]:
    return list(_rendered(case))


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner name, pod template) of every Deployment and Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]


def deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return of_kind(docs, "Deployment")[f"{RELEASE}-radlight-{component}"]


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_there_are_cpu_gpu_and_autoscaling_examples() -> None:
    assert set(EXAMPLES) == {"cpu-only", "gpu-pool", "autoscaling"}


@pytest.mark.parametrize("case", CASES)
def test_every_manifest_is_valid_kubernetes(case: str) -> None:
    docs = rendered(case)
    custom = []
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            custom.append(doc["kind"])  # checked in test_keda_objects_point_at_real_things
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            pytest.fail(
                f"no Kubernetes schema for {doc['apiVersion']} {doc['kind']}: {exc.message}"
            )
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "Job", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    assert ("ScaledObject" in custom) == (case == "autoscaling")


def test_the_validator_rejects_a_broken_manifest() -> None:
    broken = yaml.safe_load(yaml.safe_dump(deployment(rendered("defaults"), "api")))
    container(broken)["ports"][0]["containerPort"] = "http"
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)
    container(broken)["ports"][0]["containerPort"] = 8000
    container(broken)["livenessprobe"] = {}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_is_clean(case: str) -> None:
    report = helm.lint(CHART, values_for(case), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert (report["errors"], problems) == ([], [])


@pytest.mark.parametrize("case", CASES)
def test_containers_run_radlight_commands_with_radlight_settings(case: str) -> None:
    parser = cli.build_parser()
    docs = rendered(case)
    commands: dict[str, Any] = {}
    for owner, template in pod_specs(docs):
        for one in template["spec"]["containers"]:
            commands[owner] = parser.parse_args(one["args"])  # exits on an unknown command
            names = {env["name"] for env in one["env"]}
            assert names <= SETTING_NAMES, f"{owner}: unknown {names - SETTING_NAMES}"
            assert {"RADLIGHT_DATABASE_URL", "RADLIGHT_BROKER_URL", "RADLIGHT_SECRET_KEY"} <= names
    prefix = f"{RELEASE}-radlight-"
    by_name = {name.removeprefix(prefix): args for name, args in commands.items()}
    assert {name: args.func for name, args in by_name.items()} == {
        "migrations": cli.cmd_db_upgrade,
        "dicom-node": cli.cmd_dicom_node,
        "dispatcher": cli.cmd_dispatcher,
        "worker-inference": cli.cmd_worker,
        "worker-delivery": cli.cmd_worker,
        "api": cli.cmd_api,
    }
    assert by_name["dicom-node"].no_assembler
    assert by_name["worker-inference"].queues == QUEUE_INFERENCE
    assert by_name["worker-delivery"].queues == QUEUE_DELIVERY
    assert {QUEUE_INFERENCE, QUEUE_DELIVERY} == set(TASK_QUEUES.values())
    dispatcher = deployment(docs, "dispatcher")
    assert dispatcher["spec"]["replicas"] == 1
    assert dispatcher["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("case", CASES)
def test_pods_are_non_root_with_probes_resources_and_the_store(case: str) -> None:
    docs = rendered(case)
    for owner, template in pod_specs(docs):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for one in spec["containers"]:
            assert one["securityContext"]["readOnlyRootFilesystem"] is True
            assert one["securityContext"]["allowPrivilegeEscalation"] is False
            assert one["resources"]["requests"], owner
            mounts = {m["mountPath"] for m in one["volumeMounts"]}
            assert {"/data", "/tmp"} <= mounts, owner
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                command = one.get(probe, {}).get("exec", {}).get("command")
                if command:
                    # The image's health check, told which process it checks.
                    assert command[:2] == ["python", "/opt/radlight/healthcheck.py"]
                    assert command[2:4] == ["radlight", one["args"][0]]
        if template["metadata"]["labels"]["app.kubernetes.io/component"] != "migrations":
            claims = [
                v["persistentVolumeClaim"]["claimName"]
                for v in spec["volumes"]
                if "persistentVolumeClaim" in v
            ]
            assert claims == [f"{RELEASE}-radlight-store"], owner
    api = container(deployment(docs, "api"))
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert "tcpSocket" in container(deployment(docs, "dicom-node"))["readinessProbe"]
    for component in ("dicom-node", "dispatcher", "worker-inference", "worker-delivery"):
        assert "exec" in container(deployment(docs, component))["livenessProbe"], component


def test_gpu_pool_asks_for_gpus_on_gpu_nodes_and_cpu_only_does_not() -> None:
    gpu = rendered("gpu-pool")
    inference, delivery = deployment(gpu, "worker-inference"), deployment(gpu, "worker-delivery")
    assert container(inference)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container(inference)["image"].endswith("-gpu")
    pod = inference["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nvidia.com/gpu" not in container(delivery)["resources"].get("limits", {})
    assert not container(delivery)["image"].endswith("-gpu")
    for case in ("defaults", "cpu-only"):
        assert "nvidia.com/gpu" not in yaml.safe_dump(rendered(case))


def _worker_setup(case: str) -> tuple[Any, dict[str, str]]:
    worker = container(deployment(rendered(case), "worker-inference"))
    env = {e["name"]: e.get("value") for e in worker["env"]}
    return cli.build_parser().parse_args(worker["args"]), env


def test_the_gpu_pool_batches_across_jobs_and_the_default_does_not() -> None:
    args, env = _worker_setup("gpu-pool")
    assert (args.pool, args.concurrency) == ("threads", 8)
    assert env["RADLIGHT_INFERENCE_BATCH_MAX"] == "8"
    settings = Settings(
        worker_pool=args.pool,
        worker_concurrency=args.concurrency,
        inference_batch_max=int(env["RADLIGHT_INFERENCE_BATCH_MAX"]),
        inference_batch_wait_ms=float(env["RADLIGHT_INFERENCE_BATCH_WAIT_MS"]),
    )
    assert settings.batches_inference
    assert (
        Settings(inference_precision=env["RADLIGHT_INFERENCE_PRECISION"]).inference_precision
        == "fp16"
    )
    args, env = _worker_setup("defaults")
    assert (args.pool, args.concurrency) == ("prefork", 1)
    assert env["RADLIGHT_INFERENCE_BATCH_MAX"] == "1"
    assert env["RADLIGHT_INFERENCE_PRECISION"] == "fp32"


def test_keda_objects_point_at_real_things() -> None:
    docs = rendered("autoscaling")
    deployments = of_kind(docs, "Deployment")
    auths = of_kind(docs, "TriggerAuthentication")
    secret = next(iter(of_kind(docs, "Secret").values()))
    scaled = of_kind(docs, "ScaledObject")
    assert len(scaled) == 2
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "KEDA owns the replica count"
        spec = obj["spec"]
        assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        metadata = trigger["metadata"]
        # The list KEDA measures is the queue the target's workers consume.
        args = container(target)["args"]
        assert metadata["listName"] == args[args.index("--queues") + 1], name
        assert metadata["address"] == "10.30.0.20:6379"
        assert all(isinstance(value, str) for value in metadata.values())  # KEDA wants strings
        assert int(metadata["listLength"]) > 0
        auth = auths[trigger["authenticationRef"]["name"]]
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ref == {
            "parameter": "password",
            "name": secret["metadata"]["name"],
            "key": "redis-password",
        }
        assert ref["key"] in secret["stringData"]
    assert "HorizontalPodAutoscaler" in {doc["kind"] for doc in docs}


def test_migrations_run_as_a_hook_after_the_secret() -> None:
    docs = rendered("defaults")
    (job,) = of_kind(docs, "Job").values()
    (secret,) = of_kind(docs, "Secret").values()
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    weight = "helm.sh/hook-weight"
    assert int(secret["metadata"]["annotations"][weight]) < int(hooks[weight])
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    (claim,) = of_kind(docs, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_an_existing_secret_is_used_and_none_is_made() -> None:
    docs = rendered("gpu-pool")
    assert of_kind(docs, "Secret") == {}
    refs = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for _, template in pod_specs(docs)
        for env in template["spec"]["containers"][0]["env"]
        if "valueFrom" in env
    }
    assert refs == {"radlight-secrets"}


@pytest.mark.parametrize("case", CASES)
def test_selectors_select_the_pods_they_mean(case: str) -> None:
    docs = rendered(case)
    pods = {
        template["metadata"]["labels"]["app.kubernetes.io/component"]: template["metadata"][
            "labels"
        ]
        for _, template in pod_specs(docs)
    }

    def components(selector: dict[str, str]) -> set[str]:
        return {name for name, labels in pods.items() if selects(selector, labels)}

    for service in of_kind(docs, "Service").values():
        assert len(components(service["spec"]["selector"])) == 1, service["metadata"]["name"]
    for pdb in of_kind(docs, "PodDisruptionBudget").values():
        assert len(components(pdb["spec"]["selector"]["matchLabels"])) == 1
    policies = of_kind(docs, "NetworkPolicy")
    dicom = policies[f"{RELEASE}-radlight-dicom"]
    assert components(dicom["spec"]["podSelector"]["matchLabels"]) == {"dicom-node"}
    api = policies[f"{RELEASE}-radlight-api"]
    assert components(api["spec"]["podSelector"]["matchLabels"]) == {"api"}
    # Each policy opens the port the process listens on, which is the port its settings name.
    for policy, component, setting in ((dicom, "dicom-node", "DICOM"), (api, "api", "API")):
        listener = container(deployment(docs, component))
        (port,) = (p["containerPort"] for p in listener["ports"])
        env = {e["name"]: e.get("value") for e in listener["env"]}
        assert env[f"RADLIGHT_{setting}_PORT"] == str(port)
        assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": port}]
    default = policies[f"{RELEASE}-radlight-default"]
    assert components(default["spec"]["podSelector"]["matchLabels"]) == set(pods)
    assert "ingress" not in default["spec"]  # deny by default
    for deploy in of_kind(docs, "Deployment").values():
        assert selects(
            deploy["spec"]["selector"]["matchLabels"],
            deploy["spec"]["template"]["metadata"]["labels"],
        )
    for ingress in of_kind(docs, "Ingress").values():
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] in of_kind(docs, "Service")


def test_dicom_service_type_follows_values() -> None:
    def dicom_service(case: str) -> dict[str, Any]:
        spec: dict[str, Any] = of_kind(rendered(case), "Service")[f"{RELEASE}-radlight-dicom"][
            "spec"
        ]
        return spec

    assert dicom_service("defaults")["type"] == "LoadBalancer"
    node_port = dicom_service("cpu-only")
    assert node_port["type"] == "NodePort"
    assert node_port["ports"][0]["nodePort"] == 31112
    assert dicom_service("gpu-pool")["loadBalancerSourceRanges"] == ["10.20.0.0/16"]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"dicomNode": {"service": {"type": "ClusterIP"}}}, "/dicomNode/service/type"),
        ({"dicomnode": {"replicas": 2}}, "dicomnode"),
        ({"workers": {"inference": {"concurrency": 0}}}, "/workers/inference/concurrency"),
        ({"workers": {"inference": {"pool": "gevent"}}}, "/workers/inference/pool"),
        ({"workers": {"inference": {"precision": "int8"}}}, "/workers/inference/precision"),
        (
            {"workers": {"inference": {"batching": {"maxImages": 0}}}},
            "/workers/inference/batching/maxImages",
        ),
        ({"settings": {"aeTitle": "A_TITLE_LONGER_THAN_16"}}, "/settings/aeTitle"),
        ({"secrets": {"databaseUrl": "mysql://x"}}, "/secrets/databaseUrl"),
    ],
)
def test_schema_refuses_bad_values(change: dict[str, Any], complaint: str) -> None:
    values = values_for("defaults")
    for key, value in change.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(helm.HelmValuesError, match=complaint):
        render(values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({}, "secrets.secretKey is required"),
        (
            {
                "secrets": CHART_SECRETS,
                "workers": {"inference": {"autoscaling": {"enabled": True}}},
            },
            "redis.address",
        ),
    ],
)
def test_missing_required_values_fail_the_render(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=complaint):
        render(values)


def test_chart_files_are_where_helm_expects_them() -> None:
    assert (CHART / "values.schema.json").is_file()
    with helm.Chart.load(CHART) as chart:
        assert chart.schema is not None
        app_version = chart.metadata["appVersion"]
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert app_version == project["version"]  # the image tag the chart runs by default


def test_alert_rules_parse_and_use_metrics_that_exist() -> None:
    (rule,) = of_kind(rendered("autoscaling"), "PrometheusRule").values()
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    exported = set(
        re.findall(r'"(radlight_[a-z_]+)"', (REPO_ROOT / "services" / "metrics.py").read_text())
    )
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len(alerts) >= 8
    for alert in alerts:
        expr = alert["expr"]
        promql_parser.parse(expr)  # raises ValueError on invalid PromQL
        for metric in re.findall(r"\b(radlight_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|sum|count|total)$", "", metric)
            assert base in exported, f"{alert['alert']}: {metric} is not exported by /metrics"
        assert alert["labels"]["severity"] in ("warning", "critical")
    assert "PrometheusRule" not in {doc["kind"] for doc in rendered("defaults")}
