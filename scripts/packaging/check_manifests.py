#!/usr/bin/python3
"""Checks deploy/, the Helm chart, the alerts, the dashboards and the Dockerfile with the real
tools: `kubectl kustomize`, `helm lint --strict`, `helm template` (every values file under
helm/vfio-user/ci/ and the defaults), the upstream Kubernetes schemas (validate-k8s.mjs) and
promtool; then the project's own assertions on what they print (RBAC least privilege, chart vs
deploy/ parity, alerts on documented metrics, ...).

  check_manifests.py [--repo DIR] [--server PATH]

The tools come from scripts/packaging/install-tools.sh, named in the environment (HELM,
KUBECTL, PROMTOOL, NODE_MODULES) as scripts/check-packaging.sh sets it.
--server: a vfio-user-server binary; the standalone server configuration of deploy/ and of
every chart values file is then also checked with `vfio-user-server --check`.
"""

import argparse
import copy
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import jsonschema
import yaml

import k8s_tools
from k8s_tools import ToolError, format_key, load_yaml_docs, object_key
from report import Report

NAMESPACE = "vfio-user"
IMAGE_REPOSITORY = "ghcr.io/vfio-user/vfio-user-stack"
BINARIES = {"vfio-user-server", "vfio-user-ctl", "vfio-user-device-plugin",
            "vfio-user-kubevirt-hook", "vfio-user-operator"}
NODE_HOST_PATHS = {"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources",
                   "/var/run/vfio-user"}
# Labels only Helm adds; everything else must be equal between the chart and deploy/.
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}
REQUIRED_ALERTS = {"VfioUserDeviceUnhealthy", "VfioUserPluginNotRegistered", "VfioUserServerDown",
                   "VfioUserDeviceIOErrors", "VfioUserPollThreadSaturated"}
PROMETHEUS_BUILTIN_METRICS = {"up"}
# RBAC the project's roles must never hold (checked on the rendered roles).
RISKY_RESOURCES = {"secrets", "pods/exec", "pods/attach", "pods/portforward", "nodes/proxy",
                   "serviceaccounts/token", "certificatesigningrequests/approval"}
RISKY_VERBS = {"escalate", "bind", "impersonate"}
READ_ONLY_RESOURCES = {"nodes", "virtualmachineinstances"}  # looked at, never changed
METRIC_TOKEN = re.compile(r"\b(vfio_user_[a-z0-9_]*[a-z0-9])\b")


# ---- helpers ----------------------------------------------------------------------------------

def documented_metrics(repo):
    """Metric names in docs/metrics.md (and docs/operator.md for the operator's), by file."""
    found = {}
    for rel in ("docs/metrics.md", "docs/operator.md"):
        path = os.path.join(repo, rel)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for name in METRIC_TOKEN.findall(f.read()):
                    found.setdefault(name, rel)
    # A histogram's series (_bucket, _sum, _count) in example queries are not names of their own.
    for name in list(found):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in found:
                del found[name]
    return found


def metric_is_documented(name, documented):
    if name in documented or name in PROMETHEUS_BUILTIN_METRICS:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in documented:
            return True
    return False


def metric_names_in_promql(expr):
    return set(METRIC_TOKEN.findall(expr)) | ({"up"} if re.search(r"\bup\{", expr) else set())


def strip_helm_labels(o):
    o = copy.deepcopy(o)
    for holder in (o.get("metadata", {}),
                   o.get("spec", {}).get("template", {}).get("metadata", {})
                   if isinstance(o.get("spec"), dict) else {}):
        labels = holder.get("labels")
        if isinstance(labels, dict):
            for k in HELM_ONLY_LABELS:
                labels.pop(k, None)
    return o


def diff(a, b, path=""):
    """Paths where a and b differ; strings holding YAML documents (key *.yaml) compare parsed."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}"
            if k not in a:
                out.append(f"{p}: only in deploy/")
            elif k not in b:
                out.append(f"{p}: only in the chart")
            elif str(k).endswith(".yaml") and isinstance(a[k], str) and isinstance(b[k], str):
                out.extend(diff(yaml.safe_load(a[k]), yaml.safe_load(b[k]), p + "(parsed)"))
            else:
                out.extend(diff(a[k], b[k], p))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items in the chart, {len(b)} in deploy/"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out.extend(diff(x, y, f"{path}[{i}]"))
        return out
    return [] if a == b else [f"{path}: chart {a!r} != deploy/ {b!r}"]


def pod_spec(o):
    return o.get("spec", {}).get("template", {}).get("spec", {})


def workloads(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "DaemonSet", "Job")]


def project_version(repo):
    path = os.path.join(repo, "server/version.h")
    if os.path.isfile(path):
        m = re.search(r'kVersion\s*=\s*"([^"]+)"', open(path, encoding="utf-8").read())
        if m:
            return m.group(1)
    with open(os.path.join(repo, "CMakeLists.txt"), encoding="utf-8") as f:
        m = re.search(r"project\([^)]*VERSION\s+([0-9.]+)", f.read())
    return m.group(1) if m else None


# ---- checks -----------------------------------------------------------------------------------

def check_yaml_files(r, repo):
    r.section("YAML files are well-formed")
    files = [f for f in glob.glob(os.path.join(repo, "deploy/**/*.y*ml"), recursive=True)]
    files += [f for f in glob.glob(os.path.join(repo, "helm/vfio-user/**/*.y*ml"), recursive=True)
              if "/templates/" not in f]
    bad = []
    for f in sorted(files):
        try:
            load_yaml_docs(f)
        except yaml.YAMLError as e:
            bad.append(f"{os.path.relpath(f, repo)}: {e}")
    r.check(not bad, f"{len(files)} YAML files in deploy/ and helm/ parse", "; ".join(bad))


def check_kustomize(r, repo, out_dir):
    """`kubectl kustomize` of deploy/ and its two parts; each output is also saved in out_dir
    for the schema validation."""
    r.section("deploy/ renders (kubectl kustomize)")
    rendered = {}
    for d in ("deploy", "deploy/base", "deploy/monitoring"):
        try:
            text, rendered[d] = k8s_tools.kustomize(os.path.join(repo, d))
        except ToolError as e:
            r.fail(f"{d}: {e}")
            continue
        if d == "deploy":  # the other two are parts of it
            with open(os.path.join(out_dir, "deploy.yaml"), "w", encoding="utf-8") as f:
                f.write(text)
        r.ok(f"kubectl kustomize {d} renders {len(rendered[d])} objects")
    return rendered


def check_deploy_objects(r, repo, objects, version):
    r.section("deploy/ objects: key settings")
    by_key = {object_key(o): o for o in objects}
    image = f"{IMAGE_REPOSITORY}:{version}"

    ns = [o for o in objects if o["kind"] == "Namespace"]
    r.check(len(ns) == 1 and ns[0]["metadata"]["name"] == NAMESPACE and
            ns[0]["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") ==
            "privileged",
            f"Namespace {NAMESPACE} allows the node pods' host paths (pod-security privileged)")
    cluster_kinds = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    wrong_ns = [format_key(k) for k, o in by_key.items()
                if o["kind"] not in cluster_kinds and k[1] != NAMESPACE]
    r.check(not wrong_ns, f"every namespaced object is in {NAMESPACE}", ", ".join(wrong_ns))

    for o in workloads(objects):
        name = format_key(object_key(o))
        for c in pod_spec(o).get("containers", []):
            r.check(c.get("image") == image, f"{name} container {c['name']} uses {image}",
                    f"it uses {c.get('image')}")
            cmd = (c.get("command") or [""])[0]
            r.check(cmd in BINARIES,
                    f"{name} container {c['name']} runs a binary of the image ({cmd})")

    dss = [o for o in objects if o["kind"] == "DaemonSet"]
    r.check(bool(dss), "deploy/ has a node DaemonSet")
    for ds in dss:
        name = format_key(object_key(ds))
        spec = pod_spec(ds)
        r.check(spec.get("priorityClassName") == "system-node-critical",
                f"{name}: priorityClassName system-node-critical")
        us = ds["spec"].get("updateStrategy", {})
        r.check(us.get("type") == "RollingUpdate" and
                us.get("rollingUpdate", {}).get("maxSurge") == 0,
                f"{name}: RollingUpdate with maxSurge 0", json.dumps(us))
        host = {v["hostPath"]["path"]: v for v in spec.get("volumes", []) if "hostPath" in v}
        r.check(NODE_HOST_PATHS <= set(host), f"{name}: hostPaths {sorted(NODE_HOST_PATHS)}",
                f"missing {sorted(NODE_HOST_PATHS - set(host))}")
        pr = host.get("/var/lib/kubelet/pod-resources", {})
        r.check(pr.get("hostPath", {}).get("type") == "Directory",
                f"{name}: pod-resources is mounted as a directory (a socket mount goes stale)")
        mounted = {m["name"] for c in spec.get("containers", []) for m in c.get("volumeMounts", [])}
        unused = [v["name"] for v in spec.get("volumes", []) if v["name"] not in mounted]
        r.check(not unused, f"{name}: every volume is mounted", f"unused: {unused}")
        sa = by_key.get(("ServiceAccount", NAMESPACE, spec.get("serviceAccountName", "default")))
        r.check(spec.get("automountServiceAccountToken") is False and
                (sa is None or sa.get("automountServiceAccountToken") is False),
                f"{name}: no API token in the node pods")

    # RBAC: no wildcards; bindings refer to existing roles and ServiceAccounts; nothing binds
    # the node ServiceAccount.
    for o in objects:
        if o["kind"] in ("ClusterRole", "Role"):
            wild = [rule for rule in o.get("rules", [])
                    if "*" in (rule.get("verbs", []) + rule.get("resources", []) +
                               rule.get("apiGroups", []))]
            r.check(not wild, f"{format_key(object_key(o))}: no wildcard rules", json.dumps(wild))
            # What no component of this project needs, and what would let a compromised
            # operator read credentials, run code in pods or grant itself more.
            risky = [f"{v} {res}" for rule in o.get("rules", [])
                     for res in rule.get("resources", []) for v in rule.get("verbs", [])
                     if res in RISKY_RESOURCES or v in RISKY_VERBS or
                     (res in READ_ONLY_RESOURCES and v not in ("get", "list", "watch"))]
            r.check(not risky, f"{format_key(object_key(o))}: no access to secrets, pod exec/"
                    "attach, node proxy, and no escalate/bind/impersonate", ", ".join(risky))
        if o["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            ref = o["roleRef"]
            role_ns = "" if ref["kind"] == "ClusterRole" else o["metadata"].get("namespace", "")
            r.check((ref["kind"], role_ns, ref["name"]) in by_key,
                    f"{format_key(object_key(o))} refers to an existing "
                    f"{ref['kind']} {ref['name']}")
            for s in o.get("subjects", []):
                if s["kind"] == "ServiceAccount":
                    r.check(("ServiceAccount", s.get("namespace", ""), s["name"]) in by_key,
                            f"{format_key(object_key(o))} subject "
                            f"{s['namespace']}/{s['name']} exists")
                    r.check(s["name"] != "vfio-user-node",
                            f"{format_key(object_key(o))} does not grant the node pods API access")

    # Services select pods; ServiceMonitors select Services and name their ports.
    pods = [(format_key(object_key(o)), o["spec"]["template"]["metadata"].get("labels", {}))
            for o in workloads(objects)]
    for svc in (o for o in objects if o["kind"] == "Service"):
        sel = svc["spec"].get("selector", {})
        hits = [n for n, labels in pods if all(labels.get(k) == v for k, v in sel.items())]
        r.check(bool(hits), f"{format_key(object_key(svc))} selects pods ({', '.join(hits)})")
    for sm in (o for o in objects if o["kind"] == "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        svcs = [s for s in objects if s["kind"] == "Service" and
                all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        ports = {p.get("name") for s in svcs for p in s["spec"].get("ports", [])}
        want = {e["port"] for e in sm["spec"]["endpoints"]}
        r.check(len(svcs) == 1 and want <= ports,
                f"{format_key(object_key(sm))} selects one Service with port(s) {sorted(want)}",
                f"selects {[s['metadata']['name'] for s in svcs]} with ports {sorted(ports)}")

    op = next((o for o in objects if o["kind"] == "Deployment" and
               o["metadata"]["name"] == "vfio-user-operator"), None)
    if r.check(op is not None, "deploy/ has the operator Deployment"):
        c = pod_spec(op)["containers"][0]
        r.check(f"--image={c['image']}" in c.get("args", []),
                "the operator's --image (node DaemonSets) is its own image")


def check_examples(r, repo, version):
    """Examples are other components' files; they must use the one project image."""
    r.section("deploy/examples")
    image = f"{IMAGE_REPOSITORY}:{version}"
    for f in sorted(glob.glob(os.path.join(repo, "deploy/examples/*.yaml"))):
        rel = os.path.relpath(f, repo)
        for doc in load_yaml_docs(f):
            ann = (doc.get("spec", {}).get("template", {}).get("metadata", {})
                   .get("annotations", {}) if doc.get("kind") == "VirtualMachine" else
                   doc.get("metadata", {}).get("annotations", {}))
            sidecars = ann.get("hooks.kubevirt.io/hookSidecars")
            if sidecars:
                images = [s.get("image") for s in json.loads(sidecars)]
                r.check(all(i == image for i in images),
                        f"{rel}: the hook sidecar uses the project image {image}",
                        f"it uses {images}")


def check_schemas(r, repo, out_dir):
    """Every object that kubectl kustomize and helm template printed, against the upstream
    schemas (kubernetes-models and @kubernetes-models/prometheus-operator), unknown fields
    included (scripts/packaging/validate-k8s.mjs)."""
    r.section("rendered objects against the upstream Kubernetes schemas (strict)")
    files = sorted(glob.glob(os.path.join(out_dir, "*.yaml")))
    modules = os.environ.get("NODE_MODULES", "")
    if not r.check(bool(files) and os.path.isdir(modules),
                   "rendered output and the schema packages are there",
                   f"rendered files {len(files)}, NODE_MODULES={modules!r}"):
        return
    p = subprocess.run(["node", os.path.join(repo, "scripts/packaging/validate-k8s.mjs"),
                        "--modules", modules] + files, capture_output=True, text=True, check=False)
    lines = (p.stdout + p.stderr).strip().splitlines()
    for line in lines:
        if "FAIL:" in line:
            r.fail(line.split("FAIL:", 1)[1].strip().replace(out_dir + "/", ""))
    summary = lines[-1] if lines else "(no output)"
    r.check(p.returncode == 0, f"{len(files)} rendered outputs validate ({summary})", summary)


def strict_structural_schema(node):
    """A CRD's structural schema with unknown fields made errors (additionalProperties: false
    where properties are declared and unknown fields are not preserved): the API server prunes
    them silently, which hides a typo in an example."""
    if isinstance(node, dict):
        node = {k: strict_structural_schema(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node and
                not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict_structural_schema(v) for v in node]
    return node


def check_crd_examples(r, repo, objects):
    """The custom resources in deploy/examples/ against their CRD's own openAPIV3Schema."""
    r.section("deploy/examples custom resources against the CRD's schema")
    validators = {}
    for crd in (o for o in objects if o["kind"] == "CustomResourceDefinition"):
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = strict_structural_schema(v["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{v['name']}", kind)] = jsonschema.Draft4Validator(schema)
    seen = 0
    for f in sorted(glob.glob(os.path.join(repo, "deploy/examples/*.yaml"))):
        rel = os.path.relpath(f, repo)
        for doc in load_yaml_docs(f):
            validator = validators.get((doc.get("apiVersion"), doc.get("kind")))
            if validator is None:
                continue
            seen += 1
            errors = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                      for e in validator.iter_errors(doc)]
            r.check(not errors, f"{rel}: {doc['kind']} {doc['metadata']['name']} matches the CRD",
                    "; ".join(errors[:5]))
    r.check(seen > 0, f"{seen} example custom resources checked")


def check_against_operator_render(r, repo, objects):
    """The standalone DaemonSet must match what the operator renders for a pool. The operator
    builds its DaemonSet in C++ (operator/pool/render.cc); compare the literals it uses."""
    r.section("standalone DaemonSet vs operator/pool/render.cc")
    sources = ""
    for rel in ("operator/pool/render.cc", "operator/pool/render.h", "operator/pool/pool_spec.h"):
        path = os.path.join(repo, rel)
        if os.path.isfile(path):
            sources += open(path, encoding="utf-8").read()
    if not sources:
        r.note("operator/pool/render.cc not found: skipped")
        return
    ds = next((o for o in objects if o["kind"] == "DaemonSet"), None)
    if ds is None:
        return
    spec = pod_spec(ds)
    literals = set(re.findall(r'"((?:[^"\\]|\\.)*)"', sources))
    # The config path is composed from kConfigDir + "/" + kConfigKey.
    if {"/etc/vfio-user", "server.yaml"} <= literals:
        literals.add("/etc/vfio-user/server.yaml")
    missing = []
    for c in spec["containers"]:
        for value in [c["name"]] + c.get("command", []) + c.get("args", []):
            if value not in literals:
                missing.append(f"container {c['name']}: {value!r}")
        for cap in c.get("securityContext", {}).get("capabilities", {}).get("add", []):
            if cap not in literals:
                missing.append(f"container {c['name']}: capability {cap}")
        for m in c.get("volumeMounts", []):
            if m["mountPath"] not in literals:
                missing.append(f"container {c['name']}: mount {m['mountPath']}")
    for v in spec.get("volumes", []):
        if "hostPath" in v:
            if v["hostPath"]["path"] not in literals or v["hostPath"].get("type") not in literals:
                missing.append(f"hostPath {v['hostPath']['path']} ({v['hostPath'].get('type')})")
    for key in ("priorityClassName", "terminationGracePeriodSeconds"):
        value = spec.get(key)
        if str(value) not in sources:
            missing.append(f"{key} {value}")
    r.check(not missing, "container names, commands, capabilities, mounts and hostPaths agree "
            "with the operator's pool DaemonSet", "; ".join(missing))


def check_chart(r, repo, deploy, base, server, out_dir):
    r.section("Helm chart (helm lint --strict, helm template)")
    cdir = os.path.join(repo, "helm/vfio-user")
    meta = load_yaml_docs(os.path.join(cdir, "Chart.yaml"))[0]
    defaults = load_yaml_docs(os.path.join(cdir, "values.yaml"))[0]
    schema = json.load(open(os.path.join(cdir, "values.schema.json"), encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)

    version = project_version(repo)
    r.check(meta.get("appVersion") == version,
            f"Chart appVersion {meta.get('appVersion')} is the project version {version}")

    # Strictness: every object in the schema closes its properties.
    loose = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "additionalProperties" not in node:
                loose.append(path or "(top)")
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")
    walk(schema, "")
    r.check(not loose, "values.schema.json: every object sets additionalProperties",
            ", ".join(loose))

    # helm lint --strict (values.schema.json included) for the defaults and every ci/ file.
    variants = {"values.yaml": []}
    for f in sorted(glob.glob(os.path.join(cdir, "ci/*.yaml"))):
        variants[os.path.relpath(f, cdir)] = [f]
    for name, files in variants.items():
        try:
            k8s_tools.helm_lint(cdir, files)
            r.ok(f"helm lint --strict with {name}")
        except ToolError as e:
            r.fail(f"helm lint --strict with {name}: {e}")

    # Helm itself must refuse values that break the schema.
    def settings(v):
        return v["standalone"]["serverConfig"]["settings"]

    mutations = {
        "an unknown top-level key": lambda v: v.update(unknown=1),
        "an unknown key under operator": lambda v: v["operator"].update(replica=1),
        "an unknown server setting": lambda v: settings(v).update(socketDir="/x"),
        "a string for operator.replicas": lambda v: v["operator"].update(replicas="one"),
        "another socketRoot": lambda v: settings(v).update(socketRoot="/run/x"),
        "a bad device class":
            lambda v: v["standalone"]["serverConfig"]["devices"][0].update({"class": "nvme0"}),
    }
    for what, mutate in mutations.items():
        v = copy.deepcopy(defaults)
        mutate(v)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", encoding="utf-8") as f:
            yaml.safe_dump(v, f)
            f.flush()
            try:
                k8s_tools.helm_template(cdir, [f.name])
                r.fail(f"helm template accepts values with {what}")
            except ToolError as e:
                r.check("schema" in str(e).lower(),
                        f"helm template refuses values with {what} (values.schema.json)", str(e))

    # Every .Values reference in the templates exists, every value is used.
    refs = set()
    for f in glob.glob(os.path.join(cdir, "templates/**/*"), recursive=True):
        if os.path.isfile(f):
            refs |= set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", open(f, encoding="utf-8").read()))

    def exists(path):
        v = defaults
        for part in path.split("."):
            if not isinstance(v, dict) or part not in v:
                return False
            v = v[part]
        return True

    def leaves(v, path=""):
        opaque = ("resources", "Resources", "serverConfig")  # passed whole to toYaml
        if isinstance(v, dict) and v and not path.endswith(opaque):
            for k, x in v.items():
                yield from leaves(x, f"{path}.{k}" if path else k)
        else:
            yield path
    r.check(all(exists(p) for p in refs),
            "every .Values reference in the templates is in values.yaml",
            ", ".join(sorted(p for p in refs if not exists(p))))
    unused = [p for p in leaves(defaults)
              if not any(ref == p or p.startswith(ref + ".") for ref in refs)]
    r.check(not unused, "every value in values.yaml is used by a template", ", ".join(unused))

    rendered = {}
    for name, files in variants.items():
        try:
            text, objs = k8s_tools.helm_template(cdir, files)
            notes = k8s_tools.helm_notes(cdir, files)
        except ToolError as e:
            r.fail(f"{name}: the chart does not render: {e}")
            continue
        with open(os.path.join(out_dir, "chart-" + name.replace("/", "-")), "w",
                  encoding="utf-8") as f:
            f.write(text)
        rendered[name] = objs
        bad = [format_key(object_key(o)) for o in objs
               if not (o.get("apiVersion") and o["metadata"].get("name"))]
        r.check(not bad, f"{name}: renders {len(objs)} objects, each with apiVersion and name",
                ", ".join(bad))
        r.check("vfio-user.io/virtio-blk" in notes and "Sidecar" in notes,
                f"{name}: NOTES.txt renders with the resource names and KubeVirt prerequisites")
        if server:
            cm = next((o for o in objs if o["kind"] == "ConfigMap"), None)
            if cm is not None:
                check_server_config(r, server, cm["data"]["server.yaml"],
                                    f"{name}: standalone server.yaml")

    hooks = [o for o in rendered.get("values.yaml", [])
             if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    r.check(len(hooks) >= 1 and all(o["kind"] == "Job" for o in hooks),
            f"chart tests: {len(hooks)} helm.sh/hook=test Job(s)")

    # Parity with deploy/: same objects, same settings (labels Helm adds aside).
    crd_chart = {object_key(o): o for o in rendered.get("values.yaml", [])
                 if o["kind"] == "CustomResourceDefinition"}
    crd_deploy = {object_key(o): o for o in deploy if o["kind"] == "CustomResourceDefinition"}
    r.check(crd_chart == crd_deploy, "chart crds/ equals deploy/crds/",
            "; ".join(diff(crd_chart, crd_deploy)[:5]) if crd_chart.keys() == crd_deploy.keys()
            else f"chart {sorted(crd_chart)} vs deploy {sorted(crd_deploy)}")
    for name, reference, label in (("ci/parity-values.yaml", deploy, "deploy/"),
                                   ("values.yaml", base, "deploy/base")):
        if name not in rendered or reference is None:
            continue
        ours = {object_key(o): strip_helm_labels(o) for o in rendered[name]
                if "helm.sh/hook" not in o["metadata"].get("annotations", {}) and
                o["kind"] != "CustomResourceDefinition"}
        theirs = {object_key(o): o for o in reference
                  if o["kind"] not in ("Namespace", "CustomResourceDefinition")}
        only_chart = sorted(format_key(k) for k in set(ours) - set(theirs))
        only_deploy = sorted(format_key(k) for k in set(theirs) - set(ours))
        r.check(not only_chart and not only_deploy,
                f"chart ({name}) and {label} hold the same objects (kind, namespace, name)",
                f"only in the chart: {only_chart}; only in {label}: {only_deploy}")
        for k in sorted(set(ours) & set(theirs), key=str):
            d = diff(ours[k], theirs[k])
            r.check(not d, f"chart ({name}) {format_key(k)} equals {label}'s", "; ".join(d[:6]))


def check_server_config(r, server, text, what):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        p = subprocess.run([server, "--config", f.name, "--check"], capture_output=True, text=True)
    r.check(p.returncode == 0, f"{what} passes vfio-user-server --check",
            (p.stdout + p.stderr).strip()[:300])


def check_alerts(r, repo, objects, documented):
    r.section("PrometheusRule")
    rules = [o for o in objects if o["kind"] == "PrometheusRule"]
    if not r.check(len(rules) == 1, "deploy/ has one PrometheusRule"):
        return
    promtool = os.environ.get("PROMTOOL", "")
    if r.check(bool(promtool) and os.access(promtool, os.X_OK), "promtool is installed"):
        with tempfile.NamedTemporaryFile("w", suffix=".rules.yaml", encoding="utf-8") as f:
            yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, f)
            f.flush()
            p = subprocess.run([promtool, "check", "rules", f.name], capture_output=True,
                               text=True, check=False)
        r.check(p.returncode == 0, "promtool check rules accepts the PrometheusRule's groups",
                (p.stdout + p.stderr).strip().replace("\n", " | ")[:400])
    alerts = [rule for g in rules[0]["spec"]["groups"] for rule in g["rules"] if "alert" in rule]
    names = {a["alert"] for a in alerts}
    r.check(REQUIRED_ALERTS <= names, f"alerts {sorted(REQUIRED_ALERTS)} exist",
            f"missing {sorted(REQUIRED_ALERTS - names)}")
    if not documented:
        r.fail("docs/metrics.md is missing or names no metric: alert expressions cannot be checked")
    for a in alerts:
        used = metric_names_in_promql(a["expr"])
        undocumented = sorted(m for m in used if not metric_is_documented(m, documented))
        r.check(used and not undocumented,
                f"alert {a['alert']} uses documented metrics {sorted(used)}",
                f"not in docs/metrics.md: {undocumented}")
        r.check(a.get("labels", {}).get("severity") in ("warning", "critical") and
                a.get("annotations", {}).get("summary") and a.get("for"),
                f"alert {a['alert']} has severity, summary and for")
    ops = os.path.join(repo, "docs/operations.md")
    text = open(ops, encoding="utf-8").read().lower() if os.path.isfile(ops) else ""
    missing = [a["alert"] for a in alerts if a["alert"].lower() not in text]
    r.check(not missing, "every alert has a runbook section in docs/operations.md",
            ", ".join(missing))


def check_dashboards(r, repo, documented):
    r.section("Grafana dashboards")
    files = sorted(glob.glob(os.path.join(repo, "dashboards/*.json")))
    if not r.check(bool(files), "dashboards/ holds dashboard JSON"):
        return
    for f in files:
        rel = os.path.relpath(f, repo)
        try:
            d = json.load(open(f, encoding="utf-8"))
        except json.JSONDecodeError as e:
            r.fail(f"{rel}: not JSON: {e}")
            continue
        panels = []

        def collect(ps):
            for p in ps:
                panels.append(p)
                collect(p.get("panels", []))
        collect(d.get("panels", []))
        ids = [p.get("id") for p in panels]
        r.check(len(ids) == len(set(ids)) and None not in ids, f"{rel}: panel ids are unique")
        r.check(bool(d.get("uid")) and bool(d.get("title")), f"{rel}: has uid and title")
        variables = {v["name"] for v in d.get("templating", {}).get("list", [])}
        r.check({"datasource", "node", "device"} <= variables,
                f"{rel}: has datasource, node and device variables", f"has {sorted(variables)}")
        used = set()
        for p in panels:
            for t in p.get("targets", []):
                used |= metric_names_in_promql(t.get("expr", ""))
        for v in d.get("templating", {}).get("list", []):
            q = v.get("query")
            used |= metric_names_in_promql(q if isinstance(q, str) else json.dumps(q))
        undocumented = sorted(m for m in used if not metric_is_documented(m, documented))
        r.check(used and not undocumented,
                f"{rel}: {len(used)} metrics used, all in docs/metrics.md",
                f"not documented: {undocumented}")
        titles = " ".join(p.get("title", "").lower() for p in panels)
        want = ["iops", "throughput", "latency", "health", "allocat"]
        r.check(all(w in titles for w in want), f"{rel}: panels for {', '.join(want)}",
                f"missing {[w for w in want if w not in titles]}")


def check_dockerfile(r, repo):
    r.section("Dockerfile")
    text = open(os.path.join(repo, "Dockerfile"), encoding="utf-8").read()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines()
             if l.strip() and not l.strip().startswith("#")]
    stages = [l for l in lines if l.upper().startswith("FROM ")]
    r.check(len(stages) == 3 and re.match(r"FROM debian:bookworm AS deps$", stages[0], re.I) and
            re.match(r"FROM deps AS build$", stages[1], re.I) and
            re.match(r"FROM debian:bookworm-slim AS runtime$", stages[2], re.I),
            "three stages: debian:bookworm (deps), deps (build), debian:bookworm-slim (runtime)",
            str(stages))
    build_runs = " ".join(l for l in lines[: lines.index(stages[-1])] if l.startswith("RUN"))
    run_runs = " ".join(l for l in lines[lines.index(stages[-1]):] if l.startswith("RUN"))
    r.check("scripts/docker-build-stage.sh deps" in build_runs and
            "scripts/docker-build-stage.sh build" in build_runs,
            "the build stage runs scripts/docker-build-stage.sh deps and build")
    r.check("docker-runtime-stage.sh" in run_runs and "runtime-packages.txt" in run_runs,
            "the runtime stage runs scripts/docker-runtime-stage.sh with runtime-packages.txt")
    copies = " ".join(l for l in lines if l.startswith("COPY"))
    r.check("scripts/docker-runtime-stage.sh" in copies and
            "scripts/packaging/runtime-packages.txt" in copies and "--from=build /out/" in copies,
            "the runtime stage copies its script, its package list and the build output")
    user = [l for l in lines if l.startswith("USER ")]
    r.check(user and not re.match(r"USER (0|root)\b", user[-1]),
            "the image runs as a non-root user",
            str(user))
    r.check(any(l.startswith("HEALTHCHECK") and "vfio-user-healthcheck" in l for l in lines),
            "the image has a HEALTHCHECK (vfio-user-healthcheck)")
    labels = " ".join(l for l in lines if l.startswith("LABEL"))
    r.check(all(k in labels for k in ("org.opencontainers.image.title",
                                      "org.opencontainers.image.version",
                                      "org.opencontainers.image.revision")),
            "the image has OCI labels (title, version, revision)")
    ignore = open(os.path.join(repo, ".dockerignore"), encoding="utf-8").read().split()
    r.check({".git", ".cache", "build", "build-*"} <= set(ignore),
            ".dockerignore keeps .git, .cache and build trees out of the context")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default=os.path.join(os.path.dirname(__file__), "../.."))
    parser.add_argument("--server", help="vfio-user-server binary for --check of server configs")
    args = parser.parse_args()
    repo = os.path.abspath(args.repo)
    r = Report("check-manifests")
    version = project_version(repo)
    documented = documented_metrics(repo)

    with tempfile.TemporaryDirectory(prefix="vfu-rendered-") as out_dir:
        check_yaml_files(r, repo)
        rendered = check_kustomize(r, repo, out_dir)
        deploy = rendered.get("deploy")
        if deploy is not None:
            check_deploy_objects(r, repo, deploy, version)
            check_against_operator_render(r, repo, deploy)
            check_examples(r, repo, version)
            check_crd_examples(r, repo, deploy)
            check_alerts(r, repo, deploy, documented)
            if args.server:
                cm = next(o for o in deploy if o["kind"] == "ConfigMap")
                check_server_config(r, args.server, cm["data"]["server.yaml"],
                                    "deploy/ standalone server.yaml")
        check_chart(r, repo, deploy or [], rendered.get("deploy/base"), args.server, out_dir)
        check_schemas(r, repo, out_dir)
    check_dashboards(r, repo, documented)
    check_dockerfile(r, repo)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
