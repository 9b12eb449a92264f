"""Tools the deploy tests need, fetched on first use and cached under ~/.cache/vrs-tests.

- ``kubectl`` from Debian's ``kubernetes-client`` (1.20, embedding kustomize 2.0.3): fetched with
  ``apt-get download`` and unpacked with ``dpkg-deb -x`` (nothing installed system-wide), as
  tests/prometheus_server.py does for Prometheus.
- ``chromium`` from Debian: it needs its shared libraries, so it is installed with
  ``apt-get install`` when missing (CI runs as root on Debian).
- The prometheus-operator CRD validators: npm's ``@kubernetes-models/prometheus-operator``
  (JSON-schema validators compiled from the operator's CRDs), installed into the cache with npm
  and run with node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path.home() / ".cache" / "vrs-tests"
PROMETHEUS_OPERATOR_MODELS = "@kubernetes-models/prometheus-operator@6.0.0"


def debian_kubectl() -> Path:
    binary = CACHE / "kubernetes-client" / "usr" / "bin" / "kubectl"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        fetched = subprocess.run(["apt-get", "download", "kubernetes-client"], cwd=tmp, capture_output=True, text=True)
        if fetched.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            fetched = subprocess.run(
                ["apt-get", "download", "kubernetes-client"], cwd=tmp, capture_output=True, text=True
            )
        debs = list(Path(tmp).glob("kubernetes-client_*.deb"))
        if not debs:
            raise RuntimeError(f"could not fetch Debian's kubernetes-client package: {fetched.stderr.strip()}")
        binary.parents[2].mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(binary.parents[2])], check=True)
    return binary


def chromium() -> Path:
    found = shutil.which("chromium")
    if found:
        return Path(found)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
        env=env,
        capture_output=True,
        text=True,
    )
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError(f"could not install Debian's chromium: {done.stderr.strip()[-2000:]}")
    return Path(found)


_VALIDATE_JS = """
import { readFileSync } from "node:fs";
const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
const errors = [];
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  try {
    const module = await import(`@kubernetes-models/prometheus-operator/${group}/${version}/${obj.kind}`);
    new module[obj.kind](obj).validate();
  } catch (e) {
    errors.push(`${obj.kind}/${obj.metadata?.name}: ${e.message}`);
  }
}
console.log(JSON.stringify(errors));
"""


def validate_prometheus_operator(objects: list[dict]) -> list[str]:
    """Errors of ``objects`` (monitoring.coreos.com kinds) against the operator's CRD schemas."""
    root = CACHE / "prometheus-operator-models"
    if not (root / "node_modules" / "@kubernetes-models" / "prometheus-operator").exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(root), PROMETHEUS_OPERATOR_MODELS],
            check=True, capture_output=True,
        )  # fmt: skip
    script = root / "validate.mjs"
    script.write_text(_VALIDATE_JS)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(objects, f)
        f.flush()
        out = subprocess.run(["node", str(script), f.name], cwd=root, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)
