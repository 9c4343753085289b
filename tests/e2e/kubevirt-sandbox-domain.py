#!/usr/bin/env python3
"""kubevirt-sandbox-domain.py - fit a KubeVirt domain (as the hook returned it) to the e2e sandbox.

Usage: kubevirt-sandbox-domain.py IN.xml OUT.xml --emulator PATH --kernel PATH --initrd PATH
                                  --cmdline TEXT --serial-log PATH
       kubevirt-sandbox-domain.py --compare-kept HOOK.xml DEFINED.xml

The kubevirt-libvirt scenario of run-scenarios.sh hands the result to libvirt (virsh define,
virsh start). Only what this sandbox cannot provide is changed; each change is printed on
stderr ("sandbox: ..."):

  - <domain type="kvm"> becomes "qemu": no /dev/kvm here, QEMU runs under TCG;
  - <os><type machine="pc-q35-rhel9.4.0">: RHEL's machine types exist only in RHEL's QEMU;
    upstream QEMU 11.1 gets "q35" (libvirt expands it to the newest pc-q35-*);
  - <os> gets <kernel>, <initrd> and <cmdline>: direct kernel boot of the e2e kernel and a
    busybox initramfs (there is no bootable disk image);
  - <emulator>/usr/libexec/qemu-kvm (RHEL's path) becomes the root's QEMU;
  - KubeVirt's own disk (the containerdisk qcow2 and its backing file in the pod's volumes) and
    its interface (a tap device that virt-launcher creates in the pod's network namespace) are
    removed: neither exists here;
  - the serial port (kept: a unix socket in /var/run/kubevirt-private/<uid>/, which the scenario
    creates as virt-launcher does) gets a <log file=...>: that is where the guest's console
    output, which the test reads, goes.

Everything else stays as the hook produced it, in particular <memoryBacking> and the
vfio-user-pci arguments in <qemu:commandline>. --compare-kept checks that those two arrived
in the domain libvirt defined (`virsh dumpxml`) as the hook produced them (compared as XML:
attribute order and whitespace aside); it prints both versions and exits 1 when they differ.
"""
import argparse
import sys
import xml.etree.ElementTree as ET

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def note(text):
    print("sandbox: " + text, file=sys.stderr)


def fail(text):
    print("kubevirt-sandbox-domain.py: " + text, file=sys.stderr)
    sys.exit(1)


def canonical(e):
    """An element as a comparable value: tag, sorted attributes, stripped text, children."""
    return (e.tag, tuple(sorted(e.attrib.items())), (e.text or "").strip(),
            tuple(canonical(c) for c in e))


def kept_parts(path):
    dom = ET.parse(path).getroot()
    return {
        "memoryBacking": [canonical(e) for e in dom.findall("memoryBacking")],
        "qemu:commandline": [canonical(e) for e in dom.findall("{%s}commandline" % QEMU_NS)],
    }


def compare_kept(hook_xml, defined_xml):
    hook, defined = kept_parts(hook_xml), kept_parts(defined_xml)
    bad = False
    for part in hook:
        if not hook[part]:
            print("%s: the hook's domain has no <%s>" % (hook_xml, part), file=sys.stderr)
            bad = True
        elif hook[part] != defined[part]:
            print("<%s> differs:\n  hook:    %s\n  defined: %s" % (part, hook[part], defined[part]),
                  file=sys.stderr)
            bad = True
    if not bad:
        print("sandbox: libvirt's defined domain keeps the hook's <memoryBacking> and "
              "<qemu:commandline>", file=sys.stderr)
    return 1 if bad else 0


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--compare-kept":
        sys.exit(compare_kept(sys.argv[2], sys.argv[3]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--emulator", required=True)
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--cmdline", required=True)
    p.add_argument("--serial-log", required=True)
    a = p.parse_args()

    ET.register_namespace("qemu", QEMU_NS)
    ET.register_namespace("kubevirt", "http://kubevirt.io")
    tree = ET.parse(a.input)
    dom = tree.getroot()
    # What must come through untouched, as text, to compare at the end.
    kept = {
        "memoryBacking": [ET.tostring(e) for e in dom.findall("memoryBacking")],
        "qemu:commandline": [ET.tostring(e) for e in dom.findall("{%s}commandline" % QEMU_NS)],
    }
    if not kept["memoryBacking"] or not kept["qemu:commandline"]:
        fail("the domain has no <memoryBacking> or no <qemu:commandline> (did the hook run?)")

    if dom.get("type") != "qemu":
        note('domain type "%s" -> "qemu" (no /dev/kvm: TCG)' % dom.get("type"))
        dom.set("type", "qemu")

    os_el = dom.find("os")
    type_el = os_el.find("type") if os_el is not None else None
    if type_el is None:
        fail("the domain has no <os><type>")
    machine = type_el.get("machine", "")
    if machine != "q35":
        note('machine "%s" -> "q35" (upstream QEMU has no RHEL machine types)' % machine)
        type_el.set("machine", "q35")
    for tag in ("kernel", "initrd", "cmdline"):
        if os_el.find(tag) is not None:
            fail("the domain already has <os><%s>" % tag)
    at = list(os_el).index(type_el) + 1
    for tag, text in (("kernel", a.kernel), ("initrd", a.initrd), ("cmdline", a.cmdline)):
        el = ET.Element(tag)
        el.text = text
        os_el.insert(at, el)
        at += 1
    note("direct kernel boot: kernel %s, initrd %s" % (a.kernel, a.initrd))

    devices = dom.find("devices")
    emulator = devices.find("emulator")
    if emulator is None:
        fail("the domain has no <emulator>")
    note("emulator %s -> %s" % (emulator.text, a.emulator))
    emulator.text = a.emulator

    for tag in ("disk", "interface"):
        for el in devices.findall(tag):
            source = el.find("source")
            where = ""
            if source is not None:
                where = source.get("file") or source.get("dev") or ""
            target = el.find("target")
            if not where and target is not None:
                where = target.get("dev", "")
            note("removed KubeVirt's <%s type=\"%s\"> (%s): not available here" % (tag, el.get("type"), where))
            devices.remove(el)

    serials = devices.findall("serial")
    if not serials:
        fail("the domain has no <serial>")
    if serials[0].find("log") is not None:
        fail("the serial port already has a <log>")
    log = ET.SubElement(serials[0], "log")
    log.set("file", a.serial_log)
    log.set("append", "off")
    note("serial port 0 also logs to %s" % a.serial_log)

    now = {
        "memoryBacking": [ET.tostring(e) for e in dom.findall("memoryBacking")],
        "qemu:commandline": [ET.tostring(e) for e in dom.findall("{%s}commandline" % QEMU_NS)],
    }
    if now != kept:
        fail("<memoryBacking> or <qemu:commandline> changed")
    tree.write(a.output, encoding="unicode", xml_declaration=False)
    with open(a.output, "a", encoding="utf-8") as f:
        f.write("\n")


if __name__ == "__main__":
    main()
