"""Runs the real Helm and kubectl for the packaging checks and parses what they print.

scripts/packaging/install-tools.sh installs the tools; scripts/check-packaging.sh passes their
paths in the environment (HELM, KUBECTL, PROMTOOL, NODE_MODULES). Nothing here renders a
template or a kustomization itself: it only calls `helm template`, `helm lint` and
`kubectl kustomize` and loads their YAML output.
"""

import os
import subprocess

import yaml

RELEASE = "vfio-user"
NAMESPACE = "vfio-user"


class ToolError(Exception):
    """A tool failed; the message holds its command line and the end of its output."""


def tool(name):
    path = os.environ.get(name.upper())
    if not path or not os.access(path, os.X_OK):
        raise ToolError(f"{name}: not installed (run scripts/packaging/install-tools.sh and "
                        f"set {name.upper()}, as scripts/check-packaging.sh does)")
    return path


def run(argv):
    """Runs argv; returns stdout, or raises ToolError with the command and its stderr."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    except subprocess.TimeoutExpired:
        raise ToolError(f"`{' '.join([os.path.basename(argv[0])] + argv[1:])}` did not finish "
                        "within 300 s") from None
    if p.returncode != 0:
        lines = (p.stdout + "\n" + p.stderr).strip().splitlines()
        # helm lint prints its findings ("[ERROR] ...") on stdout and a summary on stderr.
        detail = [l.strip() for l in lines if "error" in l.lower()] or lines
        command = " ".join([os.path.basename(argv[0])] + argv[1:])
        raise ToolError(f"`{command}` exits {p.returncode}: {' | '.join(detail[-4:])}")
    return p.stdout


def load_yaml_text(text):
    return [d for d in yaml.safe_load_all(text) if d is not None]


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return load_yaml_text(f.read())


def object_key(o):
    """(kind, namespace, name): how the checks name an object."""
    return (o.get("kind"), o.get("metadata", {}).get("namespace", ""),
            o.get("metadata", {}).get("name"))


def format_key(key):
    kind, ns, name = key
    return f"{kind} {ns + '/' if ns else ''}{name}"


def kustomize(directory):
    """`kubectl kustomize DIRECTORY`: (the YAML text, the objects)."""
    text = run([tool("kubectl"), "kustomize", directory])
    return text, load_yaml_text(text)


def helm_template(chart, values_files=(), include_crds=True, extra=()):
    """`helm template vfio-user CHART -n vfio-user -f ...`: (the YAML text, the objects)."""
    argv = [tool("helm"), "template", RELEASE, chart, "--namespace", NAMESPACE]
    if include_crds:
        argv.append("--include-crds")
    for f in values_files:
        argv += ["--values", f]
    text = run(argv + list(extra))
    return text, load_yaml_text(text)


def helm_notes(chart, values_files=()):
    """NOTES.txt as `helm install --dry-run=client` prints it (no cluster is contacted)."""
    argv = [tool("helm"), "install", RELEASE, chart, "--namespace", NAMESPACE,
            "--dry-run=client"]
    for f in values_files:
        argv += ["--values", f]
    out = run(argv)
    return out.split("NOTES:", 1)[1] if "NOTES:" in out else ""


def helm_lint(chart, values_files=()):
    argv = [tool("helm"), "lint", "--strict", chart, "--namespace", NAMESPACE]
    for f in values_files:
        argv += ["--values", f]
    return run(argv)
