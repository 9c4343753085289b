#!/usr/bin/python3
"""Tests of the kustomize and Helm subset renderers (manifests.py), against the behaviour of
Go's text/template and Helm as documented (trim markers eat all adjacent whitespace, toYaml
drops the trailing newline, nindent starts with a newline, `default` replaces empty values),
so that the chart checks mean the same as `helm template` would."""

import os
import tempfile
import textwrap
import unittest

from manifests import Chart, RenderError, render_kustomization


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))


class ChartTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        write(self.dir.name, "Chart.yaml", "name: c\nversion: 1.2.3\nappVersion: '9.9'\n")
        write(self.dir.name, "values.yaml", """\
            image: {repository: r, tag: ""}
            enabled: true
            disabled: false
            sel: {a: "1", b: x}
            list: [{k: v}]
            """)

    def tearDown(self):
        self.dir.cleanup()

    def render(self, template, overrides=None):
        write(self.dir.name, "templates/t.yaml", template)
        return Chart(self.dir.name).render(overrides)["templates/t.yaml"]

    def test_trim_markers_remove_all_adjacent_whitespace(self):
        self.assertEqual(self.render("a:\n  {{- \"b\" }}  \n{{ \"c\" -}}\n  d"), "a:b  \ncd")

    def test_if_else_chooses_by_go_truthiness(self):
        t = "{{ if .Values.disabled }}x{{ else if .Values.image.tag }}y{{ else }}z{{ end }}"
        self.assertEqual(self.render(t), "z")  # "" and false are false
        self.assertEqual(self.render(t, [{"image": {"tag": "1"}}]), "y")

    def test_default_replaces_an_empty_tag_with_the_app_version(self):
        t = "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
        self.assertEqual(self.render(t), "r:9.9")
        self.assertEqual(self.render(t, [{"image": {"tag": "1"}}]), "r:1")

    def test_to_yaml_nindent_yields_indented_block_without_trailing_newline(self):
        out = self.render("s:\n  {{- toYaml .Values.sel | nindent 2 }}\nend: 1")
        self.assertEqual(out, "s:\n  a: '1'\n  b: x\nend: 1")

    def test_include_renders_a_define_with_the_given_dot(self):
        write(self.dir.name, "templates/_h.tpl",
              '{{- define "n" -}}\nname-{{ .Chart.Version }}\n{{- end }}')
        self.assertEqual(self.render('v: {{ include "n" . | quote }}'), 'v: "name-1.2.3"')

    def test_raw_strings_pass_prometheus_templates_through(self):
        self.assertEqual(self.render("s: {{`{{ $value }}`}} x"), "s: {{ $value }} x")

    def test_and_not_combine_conditions(self):
        t = ("{{ if and .Values.enabled .Values.sel }}x{{ end }}"
             "{{ if not .Values.disabled }}y{{ end }}")
        self.assertEqual(self.render(t), "xy")

    def test_missing_value_is_an_error_not_an_empty_string(self):
        with self.assertRaisesRegex(RenderError, r"Values\.imge is not defined"):
            self.render("{{ .Values.imge.tag }}")

    def test_constructs_outside_the_subset_are_rejected(self):
        with self.assertRaisesRegex(RenderError, "range"):
            self.render("{{ range .Values.list }}{{ end }}")
        with self.assertRaisesRegex(RenderError, "outside the supported subset"):
            self.render("{{ upper .Values.image.repository }}")

    def test_printing_a_map_without_to_yaml_is_an_error(self):
        with self.assertRaisesRegex(RenderError, "without toYaml"):
            self.render("{{ .Values.sel }}")

    def test_unclosed_if_is_an_error(self):
        with self.assertRaisesRegex(RenderError, "unclosed"):
            self.render("{{ if .Values.enabled }}x")


class KustomizeTest(unittest.TestCase):
    def test_resources_from_files_and_nested_folders_in_order(self):
        with tempfile.TemporaryDirectory() as d:
            write(d, "kustomization.yaml", "resources: [a.yaml, sub]\n")
            write(d, "a.yaml", "kind: A\nmetadata: {name: a}\n---\nkind: B\nmetadata: {name: b}\n")
            write(d, "sub/kustomization.yaml", "resources: [c.yaml]\n")
            write(d, "sub/c.yaml", "kind: C\nmetadata: {name: c, namespace: n}\n")
            self.assertEqual([o["kind"] for o in render_kustomization(d)], ["A", "B", "C"])

    def test_fields_beyond_resources_are_rejected(self):
        with tempfile.TemporaryDirectory() as d:
            write(d, "kustomization.yaml", "resources: []\nnamespace: x\n")
            with self.assertRaisesRegex(RenderError, "namespace"):
                render_kustomization(d)

    def test_duplicate_objects_are_rejected(self):
        with tempfile.TemporaryDirectory() as d:
            write(d, "kustomization.yaml", "resources: [a.yaml, b.yaml]\n")
            write(d, "a.yaml", "kind: A\nmetadata: {name: a}\n")
            write(d, "b.yaml", "kind: A\nmetadata: {name: a}\n")
            with self.assertRaisesRegex(RenderError, "twice"):
                render_kustomization(d)


if __name__ == "__main__":
    unittest.main()
