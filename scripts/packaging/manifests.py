"""Renders the project's Kubernetes manifests without kubectl or helm.

Two renderers, each implementing exactly the subset the project uses (anything else is an
error, so a template or kustomization that grows beyond it fails the checks loudly):

- render_kustomization(dir): a kustomization.yaml with only `resources:` (files and folders
  holding their own kustomization.yaml); no patches, generators or transformers.
- Chart(dir).render(values_overrides, release_name, namespace): Go-template subset of Helm:
  {{ pipeline }}, {{- / -}} whitespace trimming, {{/* comments */}}, if / else if / else / end,
  define / include, and the functions toYaml, nindent, indent, default, quote, not, and, or,
  eq, required. Values are .Values, .Release (Name, Namespace, Service), .Chart (Name,
  Version, AppVersion), $ and "." . A missing key is an error (Helm would print nothing), so
  a typo in a template never renders silently.
"""

import copy
import json
import os
import re

import yaml


class RenderError(Exception):
    pass


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise RenderError(f"{path}: not well-formed YAML: {e}") from e


# ---- kustomize ------------------------------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources"}


def render_kustomization(directory):
    """The objects `kubectl kustomize directory` prints, for the resources-only subset."""
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(path):
        raise RenderError(f"{directory}: no kustomization.yaml")
    docs = load_yaml_docs(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RenderError(f"{path}: must hold one mapping")
    k = docs[0]
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{path}: fields beyond the supported subset: {sorted(unknown)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{path}: kind must be Kustomization")
    objects = []
    for entry in k.get("resources", []):
        target = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(target):
            objects.extend(render_kustomization(target))
        elif os.path.isfile(target):
            objects.extend(load_yaml_docs(target))
        else:
            raise RenderError(f"{path}: resource {entry} does not exist")
    seen = set()
    for o in objects:
        key = object_key(o)
        if key in seen:
            raise RenderError(f"{directory}: {key} defined twice")
        seen.add(key)
    return objects


def object_key(o):
    md = o.get("metadata", {})
    return (o.get("kind"), md.get("namespace", ""), md.get("name"))


def format_key(key):
    kind, ns, name = key
    return f"{kind} {ns + '/' if ns else ''}{name}"


# ---- Helm-lite ------------------------------------------------------------------------------

class _Text:
    def __init__(self, text):
        self.text = text


class _Action:
    def __init__(self, expr, where):
        self.expr, self.where = expr, where


class _If:
    def __init__(self):
        self.branches = []  # (expr or None, [nodes])


def _find_action_end(source, pos, name):
    """Index of the "}}" closing the action whose body starts at pos (quotes respected)."""
    quote = None
    i = pos
    while i < len(source):
        ch = source[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"`":
            quote = ch
        elif source.startswith("}}", i):
            return i
        i += 1
    raise RenderError(f"{name}: unterminated action")


def _tokenize(source, name):
    """Text and action tokens, with the trim markers applied to neighbouring text."""
    tokens = []
    pos = 0
    trim_next = False
    while True:
        start = source.find("{{", pos)
        text = source[pos:] if start < 0 else source[pos:start]
        if trim_next:
            text = text.lstrip()
        if start < 0:
            if text:
                tokens.append(("text", text, None))
            return tokens
        lead = source[start + 2:start + 6].lstrip("- ")
        if lead.startswith("/*"):  # a comment may hold quotes: it ends at the first */
            close = source.find("*/", start)
            if close < 0:
                raise RenderError(f"{name}: unterminated comment")
            end = source.find("}}", close)
        else:
            end = _find_action_end(source, start + 2, name)
        body = source[start + 2:end]
        trim_left = body.startswith("- ") or body.startswith("-\n")
        trim_right = body.endswith(" -") or body.endswith("\n-")
        if trim_left:
            text = text.rstrip()
            body = body[1:]
        if trim_right:
            body = body[:-1]
        if text:
            tokens.append(("text", text, None))
        body = body.strip()
        line = source.count("\n", 0, start) + 1
        if not (body.startswith("/*") and body.endswith("*/")):
            tokens.append(("action", body, f"{name}:{line}"))
        trim_next = trim_right
        pos = end + 2


def _parse(tokens, defines, name):
    """A node list; `define` blocks go to `defines`."""
    root = []
    stack = [("root", root, None)]
    for kind, value, where in tokens:
        nodes = stack[-1][1]
        if kind == "text":
            nodes.append(_Text(value))
            continue
        word = value.split(None, 1)[0] if value else ""
        rest = value[len(word):].strip()
        if word == "if":
            node = _If()
            node.branches.append((rest, []))
            nodes.append(node)
            stack.append(("if", node.branches[-1][1], node))
        elif word == "else":
            if stack[-1][0] != "if":
                raise RenderError(f"{where}: else outside if")
            node = stack[-1][2]
            cond = rest[3:].strip() if rest.startswith("if ") else None
            if rest and cond is None:
                raise RenderError(f"{where}: unsupported else form: {value}")
            node.branches.append((cond, []))
            stack[-1] = ("if", node.branches[-1][1], node)
        elif word == "define":
            m = re.fullmatch(r'"([^"]+)"', rest)
            if not m or len(stack) != 1:
                raise RenderError(f"{where}: bad define")
            body = []
            defines[m.group(1)] = body
            stack.append(("define", body, None))
        elif word == "end":
            if len(stack) == 1:
                raise RenderError(f"{where}: end without block")
            stack.pop()
        elif word in ("range", "with", "template", "block", "break", "continue"):
            raise RenderError(f"{where}: '{word}' is outside the supported template subset")
        else:
            nodes.append(_Action(value, where))
    if len(stack) != 1:
        raise RenderError(f"{name}: unclosed {stack[-1][0]}")
    return root


def _split_outside_quotes(text, sep):
    parts, cur, quote = [], "", None
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
        elif ch in "\"`":
            quote = ch
            cur += ch
        elif (sep is None and ch.isspace()) or ch == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()] if sep is None else [p.strip() for p in parts]


def _truthy(v):
    return not (v is None or v is False or v == 0 and not isinstance(v, bool) or v == "" or
                v == [] or v == {})


def _to_text(v, where):
    if v is None:
        raise RenderError(f"{where}: renders <no value>")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        raise RenderError(f"{where}: prints a map or list without toYaml")
    return str(v)


class Chart:
    def __init__(self, directory):
        self.dir = directory
        meta = load_yaml_docs(os.path.join(directory, "Chart.yaml"))[0]
        self.meta = meta
        self.default_values = load_yaml_docs(os.path.join(directory, "values.yaml"))[0]
        self.defines = {}
        self.templates = {}
        tdir = os.path.join(directory, "templates")
        for base, _, files in os.walk(tdir):
            for f in sorted(files):
                path = os.path.join(base, f)
                rel = os.path.relpath(path, directory)
                with open(path, encoding="utf-8") as fh:
                    nodes = _parse(_tokenize(fh.read(), rel), self.defines, rel)
                if not f.startswith("_"):
                    self.templates[rel] = nodes
        self.value_refs = set()  # every .Values path a render looked up

    # -- evaluation --
    def _lookup(self, dot, root, token, where):
        if token == ".":
            return dot
        if token == "$":
            return root
        base = dot
        if token.startswith("$."):
            base, token = root, token[1:]
        if not token.startswith("."):
            raise RenderError(f"{where}: unsupported value {token}")
        v = base
        parts = token[1:].split(".")
        for i, part in enumerate(parts):
            if not isinstance(v, dict) or part not in v:
                raise RenderError(f"{where}: {token}: {'.'.join(parts[:i + 1])} is not defined")
            v = v[part]
        if parts[0] == "Values":
            self.value_refs.add(".".join(parts[1:]))
        return v

    def _arg(self, token, dot, root, where):
        if token.startswith('"'):
            return json.loads(token)
        if token.startswith("`"):
            return token[1:-1]
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if token in ("true", "false"):
            return token == "true"
        if token == "nil":
            return None
        return self._lookup(dot, root, token, where)

    def _call(self, fn, args, where, dot, root):
        if fn == "include":
            name, arg = args
            if name not in self.defines:
                raise RenderError(f"{where}: no define {name}")
            return self._render_nodes(self.defines[name], arg, root)
        if fn == "toYaml":
            (v,) = args
            return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")
        if fn in ("nindent", "indent"):
            n, s = args
            pad = " " * n
            out = "\n".join(pad + line if line else line for line in str(s).split("\n"))
            return "\n" + out if fn == "nindent" else out
        if fn == "default":
            d, v = args
            return v if _truthy(v) else d
        if fn == "quote":
            (v,) = args
            return json.dumps(_to_text(v, where))
        if fn == "not":
            (v,) = args
            return not _truthy(v)
        if fn == "and":
            r = True
            for a in args:
                r = a
                if not _truthy(a):
                    return a
            return r
        if fn == "or":
            for a in args:
                if _truthy(a):
                    return a
            return args[-1]
        if fn == "eq":
            a, b = args
            return a == b
        if fn == "required":
            msg, v = args
            if not _truthy(v):
                raise RenderError(f"{where}: required: {msg}")
            return v
        raise RenderError(f"{where}: function {fn} is outside the supported subset")

    FUNCTIONS = {"include", "toYaml", "nindent", "indent", "default", "quote", "not", "and",
                 "or", "eq", "required"}

    def _eval(self, expr, dot, root, where):
        value = None
        first = True
        for command in _split_outside_quotes(expr, "|"):
            words = _split_outside_quotes(command, None)
            if not words:
                raise RenderError(f"{where}: empty command in {expr!r}")
            if words[0] in self.FUNCTIONS:
                args = [self._arg(w, dot, root, where) for w in words[1:]]
                if not first:
                    args.append(value)
                value = self._call(words[0], args, where, dot, root)
            elif first and len(words) == 1:
                value = self._arg(words[0], dot, root, where)
            elif re.fullmatch(r"[A-Za-z_]\w*", words[0]):
                raise RenderError(f"{where}: function {words[0]} is outside the supported subset")
            else:
                raise RenderError(f"{where}: cannot evaluate {command!r}")
            first = False
        return value

    def _render_nodes(self, nodes, dot, root):
        out = []
        for n in nodes:
            if isinstance(n, _Text):
                out.append(n.text)
            elif isinstance(n, _Action):
                out.append(_to_text(self._eval(n.expr, dot, root, n.where), n.where))
            else:
                for cond, body in n.branches:
                    if cond is None or _truthy(self._eval(cond, dot, root, "if " + cond)):
                        out.append(self._render_nodes(body, dot, root))
                        break
        return "".join(out)

    def context(self, values_overrides=None, release_name="vfio-user", namespace="vfio-user"):
        values = copy.deepcopy(self.default_values)
        for override in values_overrides or []:
            deep_merge(values, override)
        return {
            "Values": values,
            "Release": {"Name": release_name, "Namespace": namespace, "Service": "Helm"},
            "Chart": {"Name": self.meta["name"], "Version": self.meta["version"],
                      "AppVersion": self.meta.get("appVersion", "")},
        }

    def render(self, values_overrides=None, release_name="vfio-user", namespace="vfio-user"):
        """{template path: rendered text}; NOTES.txt included."""
        ctx = self.context(values_overrides, release_name, namespace)
        return {rel: self._render_nodes(nodes, ctx, ctx) for rel, nodes in self.templates.items()}

    def render_objects(self, values_overrides=None, release_name="vfio-user",
                       namespace="vfio-user"):
        objects = []
        for rel, text in self.render(values_overrides, release_name, namespace).items():
            if not rel.endswith((".yaml", ".yml")):
                continue
            try:
                docs = [d for d in yaml.safe_load_all(text) if d is not None]
            except yaml.YAMLError as e:
                raise RenderError(f"{rel}: renders YAML that does not parse: {e}") from e
            for d in docs:
                if not isinstance(d, dict) or "kind" not in d:
                    raise RenderError(f"{rel}: renders a document that is not an object")
                d.setdefault("metadata", {})
                objects.append(d)
        return objects

    def crds(self):
        objects = []
        cdir = os.path.join(self.dir, "crds")
        if os.path.isdir(cdir):
            for f in sorted(os.listdir(cdir)):
                objects.extend(load_yaml_docs(os.path.join(cdir, f)))
        return objects


def deep_merge(base, override):
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base
