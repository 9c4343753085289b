#!/usr/bin/python3
"""Prints what `kubectl kustomize DIR` prints, for the resources-only subset deploy/ uses
(see manifests.py). --emit-server-config prints the standalone node ConfigMap's server.yaml
instead (scripts/packaging/check-runtime-root.sh feeds it to vfio-user-server --check)."""

import argparse
import sys

import yaml

from manifests import RenderError, render_kustomization


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory")
    parser.add_argument("--emit-server-config", action="store_true")
    args = parser.parse_args()
    try:
        objects = render_kustomization(args.directory)
    except RenderError as e:
        print(f"render_kustomize: {e}", file=sys.stderr)
        return 1
    if args.emit_server_config:
        for o in objects:
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "vfio-user-node-config":
                sys.stdout.write(o["data"]["server.yaml"])
                return 0
        print("render_kustomize: no ConfigMap vfio-user-node-config", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objects, sys.stdout, default_flow_style=False, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
