// Tests of scripts/packaging/validate-k8s.mjs: what the strict schema validation accepts and
// refuses. Run by scripts/check-packaging.sh as
//   NODE_MODULES=<install-tools.sh's node_modules> node --test tests/packaging/
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "../..");
const modules = process.env.NODE_MODULES;
const work = mkdtempSync(join(tmpdir(), "validate-k8s-test-"));
after(() => rmSync(work, { recursive: true, force: true }));

function validate(yamlText) {
  const file = join(work, `doc-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, yamlText);
  const p = spawnSync("node", [join(repo, "scripts/packaging/validate-k8s.mjs"), "--modules",
    modules, file], { encoding: "utf8" });
  return { code: p.status, out: p.stdout + p.stderr };
}

const daemonSet = (podSpecExtra = "", portExtra = "") => `
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node, namespace: ns, labels: {any-label: x}}
spec:
  selector: {matchLabels: {app: node}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: "10%"}}
  template:
    metadata: {labels: {app: node}}
    spec:
      ${podSpecExtra}
      containers:
        - name: c
          image: i
          resources: {limits: {memory: 64Mi, cpu: 1}}
          ports: [{containerPort: 9478${portExtra}}]
`;

test("accepts a valid DaemonSet with maps, int-or-string and quantities", { skip: !modules }, () => {
  const r = validate(daemonSet());
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /1 passed, 0 failed/);
});

test("refuses an unknown field deep in the pod spec, naming its path", { skip: !modules }, () => {
  const r = validate(daemonSet("hostNetwrk: true"));
  assert.equal(r.code, 1);
  assert.match(r.out, /\/spec\/template\/spec\/hostNetwrk: unknown field/);
});

test("refuses a wrong type", { skip: !modules }, () => {
  const r = validate(daemonSet("", ", hostPort: nine"));
  assert.equal(r.code, 1);
  assert.match(r.out, /ports\/0\/hostPort: must be integer/);
});

test("accepts description and x-kubernetes-* in a CRD schema, refuses a misspelt keyword",
  { skip: !modules }, () => {
    const crd = (extra) => `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: pools.example.io}
spec:
  group: example.io
  scope: Cluster
  names: {kind: Pool, plural: pools}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          description: a pool
          x-kubernetes-validations: [{rule: "true", message: m}]
          properties:
            size: {x-kubernetes-int-or-string: true, description: bytes${extra}}
`;
    assert.equal(validate(crd("")).code, 0);
    const r = validate(crd(", descriptoin: typo"));
    assert.equal(r.code, 1);
    assert.match(r.out, /properties\/size\/descriptoin: unknown field/);
  });

test("checks prometheus-operator kinds against their CRDs", { skip: !modules }, () => {
  const sm = (extra) => `
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: m}
spec:
  selector: {matchLabels: {app: x}}
  endpoints: [{port: metrics${extra}}]
`;
  assert.equal(validate(sm("")).code, 0);
  assert.match(validate(sm(", intervall: 30s")).out, /endpoints\/0\/intervall: unknown field/);
});

test("fails a kind it has no schema for instead of passing it", { skip: !modules }, () => {
  const r = validate("apiVersion: example.io/v1\nkind: Pool\nmetadata: {name: p}\n");
  assert.equal(r.code, 1);
  assert.match(r.out, /no schema for apiVersion example.io\/v1, kind Pool/);
});
