// Validates rendered Kubernetes objects (the output of `helm template` and `kubectl kustomize`)
// against the upstream API schemas, strictly:
//   - built-in kinds against kubernetes-models (generated from the upstream Kubernetes OpenAPI
//     document), prometheus-operator kinds against @kubernetes-models/prometheus-operator
//     (generated from the upstream CRDs): types, required fields, enums and formats;
//   - unknown fields are errors, as with `kubectl apply --validate=strict`: a field is unknown
//     when the schema of its object declares properties and not this one. The generated
//     validators read every declared property of an object and enumerate the keys of a map, so
//     each object is wrapped in a Proxy that records what the validator read; an object with
//     declared properties (something was read) whose key was never read holds an unknown field.
//     Free-form objects (nothing read) and maps (keys enumerated) are not judged. The generated
//     validators leave out OpenAPI annotation-like properties (`description` and `x-kubernetes-*`
//     of JSONSchemaProps, for example) that the models' type declarations (.d.ts) still declare:
//     for an object whose read keys are exactly the checked properties of such a model, the
//     properties that model declares without checking are known too.
//
//   node validate-k8s.mjs --modules DIR [--skip-kind KIND]... FILE...
//
// DIR is the node_modules folder that scripts/packaging/install-tools.sh fills. Each FILE is a
// multi-document YAML file. Prints a "FAIL:" line for each object that fails (with the paths that
// are wrong) and ends with "N passed, N failed"; exits 1 when an object fails or has no schema
// (kinds named with --skip-kind are validated elsewhere, e.g. the project's own CRD kinds).
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
let modules = "";
const skipKinds = new Set();
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--modules") modules = args[++i];
  else if (args[i] === "--skip-kind") skipKinds.add(args[++i]);
  else files.push(args[i]);
}
if (!modules || files.length === 0) {
  console.error("usage: validate-k8s.mjs --modules NODE_MODULES [--skip-kind KIND]... FILE...");
  process.exit(2);
}
const { parseAllDocuments } = await import(
  pathToFileURL(join(modules, "yaml/dist/index.js")).href);

// apiVersion "apps/v1" -> <models>/apps/v1/<Kind>.js; the core group "v1" -> <models>/v1/.
const packagesByGroup = [
  [/^monitoring\.coreos\.com$/, "@kubernetes-models/prometheus-operator"],
  [/.*/, "kubernetes-models"],
];

const validators = new Map();
async function validatorFor(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (validators.has(key)) return validators.get(key);
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const pkg = packagesByGroup.find(([re]) => re.test(group))[1];
  const model = join(modules, pkg, group, version, `${kind}.js`);
  let validate = null;
  try {
    // The model module imports its generated validator from ../../_schemas/<Name>.js.
    const schema = /_schemas\/([A-Za-z0-9]+)\.js/.exec(readFileSync(model, "utf8"));
    if (schema) {
      const url = pathToFileURL(join(modules, pkg, "_schemas", `${schema[1]}.js`)).href;
      validate = (await import(url)).validate;
    }
  } catch {
    validate = null;
  }
  validators.set(key, validate);
  return validate;
}

// Models whose type declaration declares properties that their generated validator never reads:
// [sorted checked properties joined by NUL, properties declared but not checked].
function uncheckedProperties() {
  const found = new Map();
  const scan = (pkgDir, dir) => {
    for (const f of readdirSync(dir)) {
      const path = join(dir, f);
      if (statSync(path).isDirectory()) {
        if (!f.startsWith("_") && f !== "node_modules") scan(pkgDir, path);
        continue;
      }
      if (!f.endsWith(".d.ts") || f === "index.d.ts") continue;
      const dts = readFileSync(path, "utf8");
      const body = /export interface I\w+ \{([\s\S]*?)\n\}/.exec(dts);
      let js;
      try {
        js = readFileSync(path.replace(/\.d\.ts$/, ".js"), "utf8");
      } catch {
        continue;
      }
      const schema = /_schemas\/([A-Za-z0-9]+)\.js/.exec(js);
      if (!body || !schema) continue;
      const code = readFileSync(join(pkgDir, "_schemas", `${schema[1]}.js`), "utf8");
      const declared = [...body[1].matchAll(/^\s+"([^"]+)"\??:/gm)].map((m) => m[1]);
      const read = (k) => code.includes(`data.${k}`) || code.includes(`data[${JSON.stringify(k)}]`);
      const unchecked = declared.filter((k) => !read(k));
      if (unchecked.length) {
        // Models with the same checked properties (v1 and v1beta1 JSONSchemaProps) share an entry.
        const key = declared.filter(read).sort().join("\0");
        found.set(key, new Set([...(found.get(key) ?? []), ...unchecked]));
      }
    }
  };
  for (const pkg of ["kubernetes-models", "@kubernetes-models/prometheus-operator"]) {
    scan(join(modules, pkg), join(modules, pkg));
  }
  return found;
}
const unchecked = uncheckedProperties();

// Wraps value (recursively) in Proxies that record, per object, the keys the validator read and
// whether it enumerated the keys.
function watch(value, path, objects) {
  if (value === null || typeof value !== "object") return value;
  const entry = { value, path, read: new Set(), enumerated: false };
  objects.push(entry);
  const copy = Array.isArray(value)
    ? value.map((v, i) => watch(v, `${path}/${i}`, objects))
    : Object.fromEntries(
        Object.entries(value).map(([k, v]) => [k, watch(v, `${path}/${k}`, objects)]));
  return new Proxy(copy, {
    get(target, k, receiver) {
      if (typeof k === "string") entry.read.add(k);
      return Reflect.get(target, k, receiver);
    },
    has(target, k) {
      if (typeof k === "string") entry.read.add(k);
      return Reflect.has(target, k);
    },
    ownKeys(target) {
      entry.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

// The generated validators carry no messages: say what the keyword means.
function describe(e) {
  if (e.message) return e.message;
  const p = e.params ?? {};
  switch (e.keyword) {
    case "type": return `must be ${p.type}`;
    case "required": return `missing required field ${p.missingProperty}`;
    case "enum": return `must be one of ${JSON.stringify(p.allowedValues)}`;
    case "format": return `must match format ${p.format}`;
    default: return `${e.keyword} ${JSON.stringify(p)}`;
  }
}

function problemsOf(validate, object) {
  const objects = [];
  const ok = validate(watch(object, "", objects));
  const problems = ok ? [] : validate.errors.map((e) => `${e.instancePath || "/"}: ${describe(e)}`);
  for (const o of objects) {
    if (Array.isArray(o.value) || o.enumerated || o.read.size === 0) continue;
    const alsoKnown = unchecked.get([...o.read].sort().join("\0")) ?? new Set();
    for (const k of Object.keys(o.value)) {
      if (!o.read.has(k) && !alsoKnown.has(k)) problems.push(`${o.path}/${k}: unknown field`);
    }
  }
  return problems;
}

let passed = 0;
let failed = 0;
for (const file of files) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const doc of docs) {
    if (doc.errors.length) {
      console.log(`  FAIL: ${file}: YAML: ${doc.errors[0].message}`);
      failed++;
      continue;
    }
    const o = doc.toJS();
    if (o === null || o === undefined) continue;
    const name = `${o.kind} ${o.metadata?.namespace ? o.metadata.namespace + "/" : ""}` +
      `${o.metadata?.name} (${file})`;
    if (skipKinds.has(o.kind)) continue;
    const validate = typeof o.apiVersion === "string" && typeof o.kind === "string"
      ? await validatorFor(o.apiVersion, o.kind) : null;
    if (!validate) {
      console.log(`  FAIL: ${name}: no schema for apiVersion ${o.apiVersion}, kind ${o.kind}`);
      failed++;
      continue;
    }
    const problems = problemsOf(validate, o);
    if (problems.length) {
      console.log(`  FAIL: ${name}: ${problems.slice(0, 8).join("; ")}`);
      failed++;
    } else {
      passed++;
    }
  }
}
console.log(`validate-k8s: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
