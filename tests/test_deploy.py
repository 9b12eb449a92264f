"""Deployment artefacts: the Dockerfile (hadolint, and its gateway entrypoint run here as the
image would run it), the Kubernetes manifests (rendered by ``kubectl kustomize``, validated
offline against the Kubernetes JSON schemas and the prometheus-operator CRD schemas, and
checked for what operating them relies on), the prometheus-adapter rule behind the HPA against
a live gateway's ``/metrics``, and the Prometheus scrape config run by a real Prometheus.

No container engine or registry is reachable here, so the images themselves are not built.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from vrs_client.videos import video_ref

from models.registry import builtin_models
from service.config import Settings
from tests import videos
from tests.conftest import RunningServer, free_port
from tests.deploy_tools import debian_kubectl, validate_prometheus_operator
from tests.prometheus_server import PrometheusServer

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "k8s"
TARGETS = ("overlays/cpu-dev", "overlays/gpu", "opt-in/url-egress")
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """{stage name: [(INSTRUCTION, arguments)]}, line continuations joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            stages[current] = []
        stages[current].append((instruction, args.strip()))
    return stages


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for instruction, args in stage:
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def stage_requirements(name: str) -> list[str]:
    """What stage ``name`` installs before its sources are copied: its own command that lists them
    from pyproject.toml, run here on this checkout's pyproject.toml."""
    (run,) = [a for i, a in dockerfile_stages()[name] if i == "RUN" and "tomllib" in a]
    python, flag, code = shlex.split(run.split(" > ")[0])
    assert python in ("python", "python3") and flag == "-c", run
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_hadolint_passes():
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_has_pinned_bases_non_root_users_and_healthchecks():
    stages = dockerfile_stages()
    args = dict(a.split("=", 1) for i, a in stages[""] if i == "ARG")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", args["TRITON_IMAGE"]), args["TRITON_IMAGE"]
    assert {"gateway-build", "gateway", "triton"} <= set(stages)
    for name in ("gateway", "triton"):
        instructions = dict(stages[name])
        user = instructions["USER"]
        assert user.isdigit() and int(user) >= 1000, (name, user)  # numeric, not root
        assert "HEALTHCHECK" in instructions and "ENTRYPOINT" in instructions, name
    assert stage_env(stages["gateway"])["VRS_HOST"] == "0.0.0.0"  # the service binds 127.0.0.1 by default
    assert any(i == "COPY" and a.startswith("--from=gateway-build") for i, a in stages["gateway"])
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored) and "README.md" not in ignored  # pyproject's readme


@pytest.mark.parametrize("name, extras", [("gateway-build", ["models"]), ("triton", ["models", "compile"])])
def test_images_install_dependencies_before_copying_the_sources(name: str, extras: list[str]):
    """A source change must not reinstall torch and the rest: each stage copies pyproject.toml and
    constraints.txt, installs the project's dependencies (and extras') from them, and only then
    copies the sources and installs the package itself, without dependencies."""
    stage = dockerfile_stages()[name]
    steps = [(i, a) for i, a in stage if i in ("COPY", "RUN") and "venv" not in a]
    assert steps[0] == ("COPY", "pyproject.toml constraints.txt ./"), steps
    assert steps[1][0] == "RUN" and "tomllib" in steps[1][1] and "-c constraints.txt" in steps[1][1], steps
    assert "-r /tmp/requirements.txt" in steps[1][1]
    assert steps[2] == ("COPY", ". ."), steps
    assert steps[3][0] == "RUN" and steps[3][1].endswith("pip install --no-cache-dir --no-deps ."), steps
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    assert stage_requirements(name) == wanted


def test_gateway_image_command_serves_and_its_healthcheck_passes():
    """Run the gateway stage's ENTRYPOINT + CMD with its ENV, as `docker run -p 8000:8000` would,
    but from this environment's ``vrs`` and on a free port instead of 8000."""
    stage = dockerfile_stages()["gateway"]
    instructions = dict(stage)
    command = json.loads(instructions["ENTRYPOINT"]) + json.loads(instructions["CMD"])
    assert command == ["vrs", "serve"]
    env = stage_env(stage)
    port = free_port("0.0.0.0")
    environ = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # the image's PATH starts with its venv
        "HOME": os.environ.get("HOME", "/tmp"),
        **{k: v for k, v in env.items() if k.startswith(("VRS_", "PYTHON"))},
        "VRS_PORT": str(port),
    }
    process = subprocess.Popen(command, env=environ, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the image command did not start"
            time.sleep(0.2)
        scored = httpx.post(
            f"{base}/v1/score", json={"items": [{"video": video_ref(videos.unique_clip(), fps=16)}]}, timeout=60
        )
        assert scored.status_code == 200, scored.text
        assert scored.json()["models"][0]["name"] == "signal"  # the embedded default model

        healthcheck = json.loads(instructions["HEALTHCHECK"].split(" CMD ", 1)[1])
        assert subprocess.run(healthcheck, env=environ).returncode == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def run_init_step(tmp_path: Path, bin_dir: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """The Triton init container's script (k8s/overlays/gpu/triton-deployment.yaml) as written,
    run here with its volumes (/models, /engine-cache) and scratch (/tmp/onnx) under ``tmp_path``,
    and ``vrs`` from ``bin_dir`` (default: this environment's)."""
    manifest = yaml.safe_load((K8S / "overlays/gpu/triton-deployment.yaml").read_text())
    (init,) = manifest["spec"]["template"]["spec"]["initContainers"]
    script = init["args"][0]
    for path in ("/models", "/engine-cache", "/tmp/onnx"):
        script = script.replace(path, str(tmp_path / path.strip("/").replace("/", "-")))
    bin_dir = str(bin_dir or Path(sys.executable).parent)  # `vrs` on PATH, as in the image
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VRS_")}
    environ |= {"PATH": f"{bin_dir}:{environ['PATH']}", "VRS_MODELS": '["signal"]', **env}
    assert init["command"] == ["/bin/sh", "-c"]
    return subprocess.run([*init["command"], script], env=environ, capture_output=True, text=True, timeout=600)


def test_triton_init_step_writes_the_python_repository_by_default(tmp_path: Path):
    done = run_init_step(tmp_path)
    assert done.returncode == 0, done.stderr
    config = (tmp_path / "models" / "signal" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "dynamic_batching" in config
    assert (tmp_path / "models" / "signal" / "1" / "model.py").exists()
    assert not (tmp_path / "tmp-onnx").exists()  # nothing exported for eager forwards


def test_triton_init_step_with_tensorrt_exports_then_needs_tensorrt_to_build(tmp_path: Path):
    """VRS_COMPILE=tensorrt: the parts are exported, then the engine build stops the init container
    (status 2, naming TensorRT) since this machine cannot have TensorRT: the pod fails visibly
    instead of serving something else than configured."""
    done = run_init_step(tmp_path, VRS_COMPILE="tensorrt")
    assert (tmp_path / "tmp-onnx" / "signal.onnx").is_file(), done.stderr
    assert done.returncode == 2 and "TensorRT's Python API is not installed" in done.stderr, done.stderr
    assert not (tmp_path / "models").exists()


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions installed here that ``requirements`` bring, with their dependencies (normalised names)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, str]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        for extra in ("", *requirement.extras):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            try:
                requires = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                continue  # not installed here (another platform's): nothing to link
            todo += [r for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate({"extra": extra})]
    return {name for name, _ in seen}


def confined_python(tmp_path: Path, requirements: list[str]) -> tuple[Path, dict[str, str]]:
    """A ``vrs`` (in the returned bin dir) whose interpreter sees only this checkout and the installed
    distributions ``requirements`` bring: a site-packages of links to just those, no other site."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    wanted = installed_closure(requirements)
    site = tmp_path / "site-packages"
    site.mkdir()
    for dist in metadata.distributions():
        if canonicalize_name(dist.metadata["Name"]) in wanted:
            for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:  # not its scripts in bin/
                if Path(dist.locate_file(top)).exists() and not (site / top).exists():
                    (site / top).symlink_to(dist.locate_file(top))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vrs = bin_dir / "vrs"
    vrs.write_text(
        f"#!/bin/sh\nexec {sys.executable} -S -c 'import sys; from service.cli import main; sys.exit(main())' \"$@\"\n"
    )
    vrs.chmod(0o755)
    return bin_dir, {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "clients/python"), str(site)])}


def test_triton_image_has_what_the_engine_build_step_imports(tmp_path: Path):
    """The init container's VRS_COMPILE=tensorrt step, run by an interpreter that sees only what the
    triton stage installs (its requirements and their dependencies): the export finds all it imports
    (torch.onnx's exporter needs onnx and onnxscript), and the step stops only at TensorRT, which the
    NGC base image brings and this machine cannot have. With the models extra alone the export failed."""
    bin_dir, env = confined_python(tmp_path, stage_requirements("triton"))
    confined = {**os.environ, **env}
    # Confined indeed: the test extra's pytest is out of its reach.
    assert subprocess.run([sys.executable, "-S", "-c", "import pytest"], env=confined, capture_output=True).returncode
    done = run_init_step(tmp_path, bin_dir, VRS_COMPILE="tensorrt", **env)
    assert (tmp_path / "tmp-onnx" / "signal.onnx").is_file(), done.stderr
    assert done.returncode == 2 and "TensorRT's Python API is not installed" in done.stderr, done.stderr


# --- Kubernetes -----------------------------------------------------------------------------


def kustomize(kubectl: Path | str, target: str) -> list[dict]:
    done = subprocess.run([str(kubectl), "kustomize", str(K8S / target)], capture_output=True, text=True)
    assert done.returncode == 0, f"{kubectl} kustomize {target}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Each target rendered by Debian's kubectl 1.20 (kustomize 2.0); when a newer kubectl is on
    PATH, it must render the very same objects."""
    kubectl = debian_kubectl()
    out = {target: kustomize(kubectl, target) for target in TARGETS}
    newer = shutil.which("kubectl")
    if newer:
        for target in TARGETS:
            assert comparable(kustomize(newer, target)) == comparable(out[target]), (
                f"{newer} renders {target} differently"
            )
    return out


def comparable(objects: list[dict]) -> str:
    """Objects sorted, without what kustomize versions legitimately differ in: the order of
    resources, generated names' hash suffixes, and an empty ``annotations``."""
    text = json.dumps(sorted(objects, key=lambda o: (o["kind"], o["metadata"]["name"])), sort_keys=True)
    return re.sub(r'"annotations": \{\}, |(vrs-config)-[a-z0-9]{10}', r"\1", text)


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_object_validates_against_its_schema(rendered):
    operator_objects = []
    for target, objects in rendered.items():
        assert objects, target
        for obj in objects:
            if obj["apiVersion"].startswith("monitoring.coreos.com/"):
                operator_objects.append(obj)
                continue
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(
                        f"{target}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {exc.message}"
                    )
    assert {o["metadata"]["name"] for o in operator_objects} == {"vrs-gateway", "vrs-triton"}
    assert validate_prometheus_operator(operator_objects) == []


def test_schema_validation_rejects_broken_objects(rendered):
    """The validators are not vacuous: a typo'd field and a wrong type are caught."""
    deployment = json.loads(json.dumps(find(rendered["overlays/gpu"], "Deployment", "vrs-gateway")))
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    monitor = json.loads(json.dumps(find(rendered["overlays/gpu"], "PodMonitor", "vrs-gateway")))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "soon"
    assert validate_prometheus_operator([monitor])


def _gateway_pod(objects: list[dict]) -> tuple[dict, dict]:
    deployment = find(objects, "Deployment", "vrs-gateway")
    return deployment, deployment["spec"]["template"]


@pytest.mark.parametrize("target", ["overlays/cpu-dev", "overlays/gpu"])
def test_gateway_deployment_probes_resources_and_drain(rendered, target, monkeypatch):
    objects = rendered[target]
    _, pod = _gateway_pod(objects)
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    # envFrom names the rendered ConfigMap (hash suffix included) and the API-key Secret.
    sources = container["envFrom"]
    config = find(objects, "ConfigMap", "vrs-config")
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in sources
    assert {"secretRef": {"name": find(objects, "Secret", "vrs-api-keys")["metadata"]["name"]}} in sources
    for key, value in config["data"].items():  # every key is a real setting, and together they parse
        assert key.startswith("VRS_") and key[4:].lower() in Settings.model_fields, key
        monkeypatch.setenv(key, value)
    settings = Settings()  # as the pod reads them: from its environment
    assert settings.redis_url == "redis://vrs-redis:6379/0" and settings.models == ["signal"]

    # Drain: preStop sleep + the drain grace fit in the termination grace period, with a small margin.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = int(pre_stop[1]) + settings.shutdown_grace_s
    assert budget < pod["spec"]["terminationGracePeriodSeconds"] <= budget + 15

    # The Service, PDB and PodMonitor all select these pods, by ports that exist.
    labels = pod["metadata"]["labels"]
    service = find(objects, "Service", "vrs-gateway")
    assert selects(service["spec"]["selector"], labels) and service["spec"]["ports"][0]["targetPort"] in ports
    pdb = find(objects, "PodDisruptionBudget", "vrs-gateway")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels) and pdb["spec"]["maxUnavailable"] == 1
    monitor = find(objects, "PodMonitor", "vrs-gateway")
    assert selects(monitor["spec"]["selector"]["matchLabels"], labels)
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    dashboard_jobs = {
        v["name"]: v["query"]
        for v in json.loads((ROOT / "deploy/grafana/vrs-dashboard.json").read_text())["templating"]["list"]
    }
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": dashboard_jobs["job"]}]

    # Redis is in the namespace and the gateway's URL names its Service.
    redis = find(objects, "StatefulSet", "vrs-redis")
    assert selects(
        find(objects, "Service", "vrs-redis")["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"]
    )


# The gateway process itself (torch, PyAV, the app): about 525 MiB RSS after scoring, measured with
# `vrs serve` on the development machine.
PROCESS_BYTES = 640 * 1024**2


def quantity(text: str) -> int:
    """A Kubernetes byte quantity ("1Gi", "512Mi", "1000")."""
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    return int(text[:-2]) * units[text[-2:]] if text[-2:] in units else int(text)


@pytest.mark.parametrize("target", ["overlays/cpu-dev", "overlays/gpu"])
def test_gateway_pod_has_room_for_what_it_admits(rendered, target, monkeypatch):
    """Overload must be a 429, not an eviction or an OOM kill: the /tmp emptyDir (where multipart
    parts over 1 MiB and URL downloads spool) is larger than the body bytes the gateway admits, and
    the memory limit holds those bodies as JSON (3x: raw, text, decoded), the decode-ahead window of
    the configured models' largest clips, and the process."""
    objects = rendered[target]
    _, pod = _gateway_pod(objects)
    (container,) = pod["spec"]["containers"]
    for key, value in find(objects, "ConfigMap", "vrs-config")["data"].items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    bodies = max(settings.max_inflight_body_bytes, settings.max_request_bytes)  # a request alone may pass the budget
    (tmp,) = [v for v in pod["spec"]["volumes"] if v["name"] == "tmp"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert quantity(tmp["emptyDir"]["sizeLimit"]) > bodies, (tmp, bodies)

    specs = [builtin_models()[name].spec for name in settings.models]
    clip = sum(s.sampling.max_frames * s.resolution.max_pixels * 3 for s in specs)  # one video's decoded frames
    held = 3 * bodies + settings.decode_ahead * clip + PROCESS_BYTES
    limit = quantity(container["resources"]["limits"]["memory"])
    assert held <= limit, f"{held / 1024**3:.2f} GiB held > {limit / 1024**3:.2f} GiB limit"


def test_hpa_scales_the_gateway_on_a_metric_the_gateway_exports(rendered, gateway: RunningServer):
    objects = rendered["overlays/gpu"]
    hpa = find(objects, "HorizontalPodAutoscaler", "vrs-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        find(objects, "Deployment", "vrs-gateway")["metadata"]["name"],
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]

    rules = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    series = rule["seriesQuery"].split("{")[0]
    assert re.fullmatch(rule["name"]["matches"], series)
    endpoints = re.search(r'endpoint=~"([^"]+)"', rule["metricsQuery"]).group(1)

    # The live gateway exports that series, with the endpoint values the adapter's query keeps.
    httpx.post(
        f"{gateway.url}/v1/score", json={"items": [{"video": video_ref(videos.unique_clip(), fps=16)}]}, timeout=60
    )
    exported = httpx.get(f"{gateway.url}/metrics").text
    values = re.findall(rf'^{series}{{endpoint="([^"]+)"}}', exported, flags=re.M)
    assert "/v1/score" in values
    assert {v for v in values if re.fullmatch(endpoints, v)} == {
        v for v in values if v.startswith("/v1/") and v != "/v1/models"
    }


def test_triton_runs_on_a_gpu_node_after_building_engines(rendered):
    objects = rendered["overlays/gpu"]
    deployment = find(objects, "Deployment", "vrs-triton")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    (init,) = pod["initContainers"]
    (triton,) = pod["containers"]
    for container in (init, triton):
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, container["name"]
        assert container["image"] == "registry.example.com/vrs-triton:0.1.0"
        assert {"/models", "/engine-cache"} <= {m["mountPath"] for m in container["volumeMounts"]}
    script = init["args"][0]  # run as written by test_triton_init_step_* above
    assert "vrs triton --write-only --repo /models" in script and "--cache /engine-cache" in script
    assert "--model-repository=/models" in triton["args"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}

    # The gateway scores through the Triton Service's gRPC port.
    config = find(objects, "ConfigMap", "vrs-config")["data"]
    assert config["VRS_BACKEND"] == "triton"
    host, port = config["VRS_TRITON_URL"].split(":")
    service = find(objects, "Service", host)
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert {"name": "grpc", "port": int(port), "targetPort": "grpc"} in service["spec"]["ports"]
    monitor = find(objects, "PodMonitor", "vrs-triton")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in triton["ports"]}
    # cpu-dev has no Triton and scores in-process.
    assert not [o for o in rendered["overlays/cpu-dev"] if o["metadata"]["name"].startswith("vrs-triton")]
    assert find(rendered["overlays/cpu-dev"], "ConfigMap", "vrs-config")["data"]["VRS_BACKEND"] == "inprocess"


def test_triton_rollout_needs_no_spare_gpu(rendered):
    """One Triton pod per GPU: a rollout must not wait for a GPU that no pod frees. A surge pod
    would stay Pending on a full GPU pool (the default RollingUpdate: maxSurge 1, maxUnavailable 0)."""
    deployment = find(rendered["overlays/gpu"], "Deployment", "vrs-triton")
    assert deployment["spec"].get("strategy") == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},  # the new pod takes the old one's GPU
    }


def test_triton_container_has_a_read_only_root(rendered):
    """Triton writes only to volumes (tritonserver with the python backend served a model here under a
    read-only root with a writable /tmp and /dev/shm; the NGC image itself was not tried)."""
    pod = find(rendered["overlays/gpu"], "Deployment", "vrs-triton")["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    assert triton["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in triton["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"] and mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in mounts["/models"]


@pytest.mark.parametrize("target", ["overlays/cpu-dev", "overlays/gpu"])
def test_gateway_torch_threads_follow_the_cpu_limit(rendered, target):
    """OMP_NUM_THREADS comes from the container's CPU limit (Kubernetes rounds it up to whole CPUs),
    and torch takes its thread count from it (here fewer than this machine's cores, which it
    would use otherwise; it ignores counts above them)."""
    _, pod = _gateway_pod(rendered[target])
    (container,) = pod["spec"]["containers"]
    (threads,) = [e for e in container.get("env", []) if e["name"] == "OMP_NUM_THREADS"]
    assert threads["valueFrom"]["resourceFieldRef"] == {"resource": "limits.cpu", "divisor": "1"}
    assert "cpu" in container["resources"]["limits"]
    wanted = max(1, (os.cpu_count() or 2) - 1)
    done = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env={**os.environ, "OMP_NUM_THREADS": str(wanted)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert int(done.stdout) == wanted


def _egress_peers(policy: dict) -> list[tuple[dict, set[int]]]:
    return [
        (peer, {p["port"] for p in rule.get("ports", [])})
        for rule in policy["spec"].get("egress", [])
        for peer in rule["to"]
    ]


def test_network_policies_confine_the_gateway(rendered):
    objects = rendered["overlays/gpu"]
    policy = find(objects, "NetworkPolicy", "vrs-gateway")
    _, gateway_pod = _gateway_pod(objects)
    assert selects(policy["spec"]["podSelector"]["matchLabels"], gateway_pod["metadata"]["labels"])
    peers = _egress_peers(policy)
    assert not [p for p, _ in peers if "ipBlock" in p]  # no internet by default
    for name, port in (("vrs-redis", 6379), ("vrs-triton", 8001)):
        kind = "StatefulSet" if name == "vrs-redis" else "Deployment"
        labels = find(objects, kind, name)["spec"]["template"]["metadata"]["labels"]
        assert any(
            "podSelector" in p and selects(p["podSelector"]["matchLabels"], labels) and port in ports
            for p, ports in peers
        ), name
    for name in ("vrs-redis", "vrs-triton"):  # they accept the gateway
        ingress = find(objects, "NetworkPolicy", name)["spec"]["ingress"][0]
        assert selects(ingress["from"][0]["podSelector"]["matchLabels"], gateway_pod["metadata"]["labels"])
    (opt_in,) = rendered["opt-in/url-egress"]
    assert selects(opt_in["spec"]["podSelector"]["matchLabels"], gateway_pod["metadata"]["labels"])
    assert {p["ipBlock"]["cidr"] for p, _ in _egress_peers(opt_in)} == {"0.0.0.0/0", "::/0"}


def test_grafana_dashboard_ships_as_a_configmap(rendered):
    for target in ("overlays/cpu-dev", "overlays/gpu"):
        config = find(rendered[target], "ConfigMap", "vrs-grafana-dashboard")
        assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
        shipped = json.loads(config["data"]["vrs-dashboard.json"])
        assert shipped == json.loads((ROOT / "deploy/grafana/vrs-dashboard.json").read_text())


# --- Prometheus scrape config ---------------------------------------------------------------


def test_prometheus_config_reads_overridable_target_files(tmp_path: Path, gateway: RunningServer):
    """The shipped prometheus.yml, unmodified, with its targets/*.yml overridden to point at a
    live gateway: a real Prometheus scrapes it."""
    shutil.copytree(ROOT / "deploy" / "prometheus", tmp_path / "prometheus")
    host_port = gateway.url.removeprefix("http://")
    (tmp_path / "prometheus" / "targets" / "vrs-gateway.yml").write_text(yaml.safe_dump([{"targets": [host_port]}]))
    config = tmp_path / "prometheus" / "prometheus.yml"
    assert "127.0.0.1:8000" not in config.read_text()  # no hard-coded port in the config itself

    prometheus = PrometheusServer(config, {})
    # keep the file_sd_configs, resolved against the copied folder; only the scrape interval changes
    text = config.read_text().replace("scrape_interval: 15s", "scrape_interval: 1s")
    (prometheus.dir / "prometheus.yml").write_text(text.replace('"targets/', f'"{tmp_path}/prometheus/targets/'))
    prometheus.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            result = prometheus.query('up{job="vrs-gateway"}')["data"]["result"]
            if result and result[0]["value"][1] == "1":
                break
            time.sleep(0.5)
        assert result and result[0]["metric"]["instance"] == host_port and result[0]["value"][1] == "1"
    finally:
        prometheus.stop()
