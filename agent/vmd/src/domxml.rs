//! Domain XML from a template, per virtualization kind, and our ownership mark in `<metadata>`.
//!
//! Pure: paths and names come in, a string goes out. Written with quick-xml's writer so every
//! value is escaped (a template name or path with `<` or `'` cannot change the document).

use std::io::Cursor;
use std::path::PathBuf;

use betaas_proto::{PortMap, VirtKind};
use betaas_templates::Arch;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use thiserror::Error;

/// Our metadata namespace: a domain whose `<metadata>` has an element in it (with our owner) was
/// created by this daemon; any other domain is foreign and never touched.
pub const NS: &str = "urn:betaas:vmd:1";
/// libvirt's namespace for QEMU command-line passthrough.
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// The prefix libvirt stores our element under.
pub const NS_PREFIX: &str = "betaas";

/// What we record in the domain itself: survives daemon restarts with nothing else on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Which daemon made it (config `owner`): two daemons on one libvirt never adopt each other's.
    pub owner: String,
    pub template: String,
    pub arch: Arch,
    pub kind: VirtKind,
    pub created_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSpec {
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    Disk,
    /// A container: libvirt lxc `<init>` inside a root directory.
    Container {
        rootfs: PathBuf,
        init: String,
    },
}

/// Everything the XML depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    pub mark: Mark,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot: BootSpec,
    /// The VM's own qcow2 overlay (never the template's base image); none for containers.
    pub disk: Option<PathBuf>,
    /// Serial console output, appended (a resumed guest keeps writing after its earlier lines).
    pub serial_log: PathBuf,
    /// A logical gateway's seed (its identity as a raw tar archive): attached read-only as `vdb`.
    pub seed: Option<PathBuf>,
    /// A virtio NIC on QEMU's user-mode network (guest 10.0.2.15, the host at 10.0.2.2).
    pub user_net: bool,
    /// With `user_net`: host ports forwarded to guest ports (`hostfwd`, on all host addresses).
    pub forwards: Vec<PortMap>,
    /// A container's `/srv/betaas`: this host directory (the VM's service share).
    pub share: Option<PathBuf>,
    /// A container's init environment (libvirt `<initenv>`); ignored for VMs.
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Error)]
pub enum XmlError {
    #[error("domain {name}: {what}")]
    Spec { name: String, what: String },
    #[error("writing domain XML: {0}")]
    Write(#[from] std::io::Error),
    #[error("reading domain metadata: {0}")]
    Read(String),
}

fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The libvirt domain XML for `spec`.
pub fn domain_xml(spec: &DomainSpec) -> Result<String, XmlError> {
    let err = |what: &str| XmlError::Spec {
        name: spec.name.clone(),
        what: what.to_owned(),
    };
    let container = matches!(spec.boot, BootSpec::Container { .. });
    if container != (spec.mark.kind == VirtKind::Lxc) {
        return Err(err(
            "lxc needs a container boot and a container boot needs lxc",
        ));
    }
    if !container && spec.disk.is_none() {
        return Err(err("a VM needs its overlay disk"));
    }
    if !container && spec.share.is_some() {
        return Err(err(
            "a shared directory is for containers (a VM gets a seed disk)",
        ));
    }
    if !spec.forwards.is_empty() && !spec.user_net {
        return Err(err("port forwards need user-mode networking"));
    }
    if container && (spec.seed.is_some() || spec.user_net) {
        return Err(err(
            "a container takes neither a seed disk nor user-mode networking",
        ));
    }
    let mut w = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    let dom_type = spec.mark.kind.as_str();
    let mut domain = BytesStart::new("domain").with_attributes([("type", dom_type)]);
    if !spec.forwards.is_empty() {
        // libvirt 9's user-mode <interface> has no port forwards (only with passt): the NIC is
        // given to QEMU directly.
        domain.push_attribute(("xmlns:qemu", QEMU_NS));
    }
    w.write_event(Event::Start(domain))?;
    text_el(&mut w, "name", &spec.name)?;
    write_mark(&mut w, &spec.mark)?;
    w.write_event(Event::Start(
        BytesStart::new("memory").with_attributes([("unit", "MiB")]),
    ))?;
    w.write_event(Event::Text(BytesText::new(&spec.memory_mib.to_string())))?;
    w.write_event(Event::End(BytesEnd::new("memory")))?;
    text_el(&mut w, "vcpu", &spec.vcpus.to_string())?;

    // <os>
    w.write_event(Event::Start(BytesStart::new("os")))?;
    match &spec.boot {
        BootSpec::Container { init, .. } => {
            text_el(&mut w, "type", "exe")?;
            text_el(&mut w, "init", init)?;
            for (k, v) in &spec.env {
                w.write_event(Event::Start(
                    BytesStart::new("initenv").with_attributes([("name", k.as_str())]),
                ))?;
                w.write_event(Event::Text(BytesText::new(v)))?;
                w.write_event(Event::End(BytesEnd::new("initenv")))?;
            }
        }
        boot => {
            let (arch, machine) = match spec.mark.arch {
                Arch::X86_64 => ("x86_64", "pc"),
                Arch::Armhf => ("armv7l", "virt"),
                Arch::Aarch64 => ("aarch64", "virt"),
            };
            w.write_event(Event::Start(
                BytesStart::new("type").with_attributes([("arch", arch), ("machine", machine)]),
            ))?;
            w.write_event(Event::Text(BytesText::new("hvm")))?;
            w.write_event(Event::End(BytesEnd::new("type")))?;
            match boot {
                BootSpec::Kernel {
                    kernel,
                    initrd,
                    cmdline,
                } => {
                    text_el(&mut w, "kernel", &path_str(kernel))?;
                    if let Some(i) = initrd {
                        text_el(&mut w, "initrd", &path_str(i))?;
                    }
                    text_el(&mut w, "cmdline", cmdline)?;
                }
                _ => {
                    w.write_event(Event::Empty(
                        BytesStart::new("boot").with_attributes([("dev", "hd")]),
                    ))?;
                }
            }
        }
    }
    w.write_event(Event::End(BytesEnd::new("os")))?;

    if !container {
        // ACPI on x86 is what makes the fallback shutdown (the power button) reach the guest;
        // ARM virt signals it through its GPIO power key instead. The armhf (non-LPAE) guest needs
        // GICv2 (GICv3 needs LPAE).
        w.write_event(Event::Start(BytesStart::new("features")))?;
        match spec.mark.arch {
            Arch::X86_64 => w.write_event(Event::Empty(BytesStart::new("acpi")))?,
            Arch::Armhf => w.write_event(Event::Empty(
                BytesStart::new("gic").with_attributes([("version", "2")]),
            ))?,
            Arch::Aarch64 => w.write_event(Event::Empty(BytesStart::new("acpi")))?,
        }
        w.write_event(Event::End(BytesEnd::new("features")))?;
        if spec.mark.kind == VirtKind::Qemu && spec.mark.arch != Arch::X86_64 {
            // TCG: name the CPU (there is no host CPU to pass through).
            let model = match spec.mark.arch {
                Arch::Armhf => "cortex-a15",
                _ => "cortex-a57",
            };
            w.write_event(Event::Start(
                BytesStart::new("cpu").with_attributes([("mode", "custom"), ("match", "exact")]),
            ))?;
            text_el(&mut w, "model", model)?;
            w.write_event(Event::End(BytesEnd::new("cpu")))?;
        }
    }
    // Power-off ends the domain; the manager decides what happens next (never libvirt on its own).
    text_el(&mut w, "on_poweroff", "destroy")?;
    text_el(&mut w, "on_reboot", "restart")?;
    text_el(&mut w, "on_crash", "destroy")?;

    w.write_event(Event::Start(BytesStart::new("devices")))?;
    match &spec.boot {
        BootSpec::Container { rootfs, .. } => {
            w.write_event(Event::Start(
                BytesStart::new("filesystem").with_attributes([("type", "mount")]),
            ))?;
            w.write_event(Event::Empty(
                BytesStart::new("source").with_attributes([("dir", path_str(rootfs).as_str())]),
            ))?;
            w.write_event(Event::Empty(
                BytesStart::new("target").with_attributes([("dir", "/")]),
            ))?;
            w.write_event(Event::End(BytesEnd::new("filesystem")))?;
            if let Some(share) = &spec.share {
                w.write_event(Event::Start(
                    BytesStart::new("filesystem").with_attributes([("type", "mount")]),
                ))?;
                w.write_event(Event::Empty(
                    BytesStart::new("source").with_attributes([("dir", path_str(share).as_str())]),
                ))?;
                w.write_event(Event::Empty(
                    BytesStart::new("target").with_attributes([("dir", "/srv/betaas")]),
                ))?;
                w.write_event(Event::End(BytesEnd::new("filesystem")))?;
            }
        }
        _ => {
            // The armhf guest (Debian's non-LPAE armmp kernel) cannot use QEMU virt's PCI host
            // with its high memory window (libvirt has no highmem=off): its virtio devices go on
            // virtio-mmio, which that kernel drives with the virtio_mmio module.
            let mmio = spec.mark.arch == Arch::Armhf;
            let address = |w: &mut Writer<Cursor<Vec<u8>>>| -> std::io::Result<()> {
                if mmio {
                    w.write_event(Event::Empty(
                        BytesStart::new("address").with_attributes([("type", "virtio-mmio")]),
                    ))?;
                }
                Ok(())
            };
            if let Some(disk) = &spec.disk {
                w.write_event(Event::Start(
                    BytesStart::new("disk").with_attributes([("type", "file"), ("device", "disk")]),
                ))?;
                w.write_event(Event::Empty(
                    BytesStart::new("driver")
                        .with_attributes([("name", "qemu"), ("type", "qcow2")]),
                ))?;
                w.write_event(Event::Empty(
                    BytesStart::new("source").with_attributes([("file", path_str(disk).as_str())]),
                ))?;
                w.write_event(Event::Empty(
                    BytesStart::new("target").with_attributes([("dev", "vda"), ("bus", "virtio")]),
                ))?;
                address(&mut w)?;
                w.write_event(Event::End(BytesEnd::new("disk")))?;
            }
            if let Some(seed) = &spec.seed {
                w.write_event(Event::Start(
                    BytesStart::new("disk").with_attributes([("type", "file"), ("device", "disk")]),
                ))?;
                w.write_event(Event::Empty(
                    BytesStart::new("driver").with_attributes([("name", "qemu"), ("type", "raw")]),
                ))?;
                w.write_event(Event::Empty(
                    BytesStart::new("source").with_attributes([("file", path_str(seed).as_str())]),
                ))?;
                w.write_event(Event::Empty(
                    BytesStart::new("target").with_attributes([("dev", "vdb"), ("bus", "virtio")]),
                ))?;
                w.write_event(Event::Empty(BytesStart::new("readonly")))?;
                address(&mut w)?;
                w.write_event(Event::End(BytesEnd::new("disk")))?;
            }
            if spec.user_net && spec.forwards.is_empty() {
                w.write_event(Event::Start(
                    BytesStart::new("interface").with_attributes([("type", "user")]),
                ))?;
                w.write_event(Event::Empty(
                    BytesStart::new("model").with_attributes([("type", "virtio")]),
                ))?;
                address(&mut w)?;
                w.write_event(Event::End(BytesEnd::new("interface")))?;
            }
        }
    }
    let log = path_str(&spec.serial_log);
    if container {
        // lxc has no serial port and only PTY consoles: vmd copies the console into the same
        // log file (console.rs).
        w.write_event(Event::Start(
            BytesStart::new("console").with_attributes([("type", "pty")]),
        ))?;
        w.write_event(Event::Empty(
            BytesStart::new("target").with_attributes([("type", "lxc"), ("port", "0")]),
        ))?;
        w.write_event(Event::End(BytesEnd::new("console")))?;
    } else {
        w.write_event(Event::Start(
            BytesStart::new("serial").with_attributes([("type", "file")]),
        ))?;
        // append='on': a start from a managed save reopens the file; truncating it would erase
        // the proof that the guest continued.
        w.write_event(Event::Empty(
            BytesStart::new("source").with_attributes([("path", log.as_str()), ("append", "on")]),
        ))?;
        w.write_event(Event::Empty(
            BytesStart::new("target").with_attributes([("port", "0")]),
        ))?;
        w.write_event(Event::End(BytesEnd::new("serial")))?;
        if spec.mark.arch != Arch::X86_64 {
            // ARM virt: no USB controller or balloon (no PCI devices the tiny kernel lacks drivers for).
            w.write_event(Event::Empty(
                BytesStart::new("controller").with_attributes([("type", "usb"), ("model", "none")]),
            ))?;
        }
        w.write_event(Event::Empty(
            BytesStart::new("memballoon").with_attributes([("model", "none")]),
        ))?;
    }
    w.write_event(Event::End(BytesEnd::new("devices")))?;
    if !spec.forwards.is_empty() {
        let fwd: String = spec
            .forwards
            .iter()
            .map(|p| format!(",hostfwd=tcp::{}-:{}", p.host, p.guest))
            .collect();
        // armhf: on virtio-mmio like the other devices (see above). x86: a PCI slot of its own,
        // far above the ones libvirt hands out from 2 up (it does not know this device).
        let nic = match spec.mark.arch {
            Arch::Armhf => "virtio-net-device,netdev=betaas0",
            _ => "virtio-net-pci,netdev=betaas0,addr=0x1e",
        };
        w.write_event(Event::Start(BytesStart::new("qemu:commandline")))?;
        for arg in ["-netdev", &format!("user,id=betaas0{fwd}"), "-device", nic] {
            w.write_event(Event::Empty(
                BytesStart::new("qemu:arg").with_attributes([("value", arg)]),
            ))?;
        }
        w.write_event(Event::End(BytesEnd::new("qemu:commandline")))?;
    }
    w.write_event(Event::End(BytesEnd::new("domain")))?;
    String::from_utf8(w.into_inner().into_inner())
        .map_err(|e| XmlError::Read(format!("writer produced non-UTF-8: {e}")))
}

fn text_el<W: std::io::Write>(w: &mut Writer<W>, name: &str, text: &str) -> std::io::Result<()> {
    w.write_event(Event::Start(BytesStart::new(name)))?;
    w.write_event(Event::Text(BytesText::new(text)))?;
    w.write_event(Event::End(BytesEnd::new(name)))
}

fn write_mark<W: std::io::Write>(w: &mut Writer<W>, m: &Mark) -> std::io::Result<()> {
    w.write_event(Event::Start(BytesStart::new("metadata")))?;
    let root = format!("{NS_PREFIX}:vm");
    let xmlns = format!("xmlns:{NS_PREFIX}");
    w.write_event(Event::Start(
        BytesStart::new(root.as_str()).with_attributes([(xmlns.as_str(), NS)]),
    ))?;
    for (k, v) in mark_fields(m) {
        text_el(w, &format!("{NS_PREFIX}:{k}"), &v)?;
    }
    w.write_event(Event::End(BytesEnd::new(root.as_str())))?;
    w.write_event(Event::End(BytesEnd::new("metadata")))
}

fn mark_fields(m: &Mark) -> [(&'static str, String); 5] {
    [
        ("owner", m.owner.clone()),
        ("template", m.template.clone()),
        ("arch", m.arch.as_str().to_owned()),
        ("kind", m.kind.as_str().to_owned()),
        ("created", m.created_s.to_string()),
    ]
}

fn parse_arch(s: &str) -> Option<Arch> {
    [Arch::X86_64, Arch::Armhf, Arch::Aarch64]
        .into_iter()
        .find(|a| a.as_str() == s)
}

/// Reads our mark from what libvirt returns for `virDomainGetMetadata(ELEMENT, NS)` (the element
/// alone, its prefix possibly rewritten) or from a whole domain XML. Matching is by local name
/// inside an element whose local name is `vm`: `Ok(None)` when there is none or it is incomplete
/// (then the domain is not ours), an error only for XML that does not parse.
pub fn parse_mark(xml: &str) -> Result<Option<Mark>, XmlError> {
    let mut r = Reader::from_str(xml);
    let mut in_vm = false;
    let mut field: Option<String> = None;
    let mut vals: Vec<(String, String)> = Vec::new();
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) => {
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if local == "vm" {
                    in_vm = true;
                } else if in_vm {
                    field = Some(local);
                }
            }
            Ok(Event::Text(t)) => {
                if let Some(f) = &field {
                    let v = t.unescape().map_err(|e| XmlError::Read(e.to_string()))?;
                    vals.push((f.clone(), v.into_owned()));
                }
            }
            Ok(Event::End(e)) => {
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if local == "vm" && in_vm {
                    break;
                }
                field = None;
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(XmlError::Read(e.to_string())),
        }
    }
    let get = |k: &str| vals.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let mark = (|| {
        Some(Mark {
            owner: get("owner")?.to_owned(),
            template: get("template")?.to_owned(),
            arch: parse_arch(get("arch")?)?,
            kind: VirtKind::parse(get("kind")?)?,
            created_s: get("created")?.parse().ok()?,
        })
    })();
    Ok(mark)
}

/// The inner element alone, as `virDomainSetMetadata` wants it (for re-marking a domain).
pub fn mark_element(m: &Mark) -> Result<String, XmlError> {
    let mut w = Writer::new(Cursor::new(Vec::new()));
    w.write_event(Event::Start(BytesStart::new("vm")))?;
    for (k, v) in mark_fields(m) {
        text_el(&mut w, k, &v)?;
    }
    w.write_event(Event::End(BytesEnd::new("vm")))?;
    String::from_utf8(w.into_inner().into_inner()).map_err(|e| XmlError::Read(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: VirtKind, arch: Arch) -> DomainSpec {
        DomainSpec {
            name: "betaas-tiny-1".into(),
            mark: Mark {
                owner: "gw1".into(),
                template: "tiny".into(),
                arch,
                kind,
                created_s: 1_764_086_400,
            },
            vcpus: 1,
            memory_mib: 64,
            boot: BootSpec::Kernel {
                kernel: "/t/vmlinuz".into(),
                initrd: Some("/t/initrd.img".into()),
                cmdline: "panic=-1 console=ttyS0".into(),
            },
            disk: Some("/var/lib/betaas/vms/betaas-tiny-1/disk.qcow2".into()),
            serial_log: "/var/lib/betaas/vms/betaas-tiny-1/serial.log".into(),
            seed: None,
            user_net: false,
            forwards: vec![],
            share: None,
            env: Vec::new(),
        }
    }

    #[test]
    fn a_logical_gateway_gets_its_seed_read_only_and_a_user_mode_virtio_nic() {
        let plain = domain_xml(&spec(VirtKind::Qemu, Arch::X86_64)).expect("xml");
        assert!(
            !plain.contains("<interface") && !plain.contains("vdb"),
            "{plain}"
        );
        let mut s = spec(VirtKind::Qemu, Arch::X86_64);
        s.seed = Some("/v/betaas-lgw-1/seed.tar".into());
        s.user_net = true;
        let x = domain_xml(&s).expect("xml");
        let compact: String = x.split_whitespace().collect::<Vec<_>>().join(" ");
        for want in [
            "<disk type=\"file\" device=\"disk\"> <driver name=\"qemu\" type=\"raw\"/> \
             <source file=\"/v/betaas-lgw-1/seed.tar\"/> <target dev=\"vdb\" bus=\"virtio\"/> \
             <readonly/> </disk>",
            "<interface type=\"user\"> <model type=\"virtio\"/> </interface>",
        ] {
            assert!(compact.contains(want), "missing {want} in\n{x}");
        }
        // The overlay stays vda, writable.
        assert!(
            compact.contains("<target dev=\"vda\" bus=\"virtio\"/> </disk>"),
            "{x}"
        );
        let mut c = spec(VirtKind::Lxc, Arch::X86_64);
        c.boot = BootSpec::Container {
            rootfs: "/r".into(),
            init: "/sbin/init".into(),
        };
        c.disk = None;
        c.user_net = true;
        assert!(domain_xml(&c).is_err());
    }

    #[test]
    fn qemu_x86_has_type_kernel_overlay_appended_serial_and_our_mark() {
        let x = domain_xml(&spec(VirtKind::Qemu, Arch::X86_64)).expect("xml");
        for want in [
            "<domain type=\"qemu\">",
            "<type arch=\"x86_64\" machine=\"pc\">hvm</type>",
            "<kernel>/t/vmlinuz</kernel>",
            "<initrd>/t/initrd.img</initrd>",
            "<cmdline>panic=-1 console=ttyS0</cmdline>",
            "<memory unit=\"MiB\">64</memory>",
            "<vcpu>1</vcpu>",
            "<acpi/>",
            "<source file=\"/var/lib/betaas/vms/betaas-tiny-1/disk.qcow2\"/>",
            "<driver name=\"qemu\" type=\"qcow2\"/>",
            "<source path=\"/var/lib/betaas/vms/betaas-tiny-1/serial.log\" append=\"on\"/>",
            "<betaas:vm xmlns:betaas=\"urn:betaas:vmd:1\">",
            "<betaas:owner>gw1</betaas:owner>",
        ] {
            assert!(x.contains(want), "missing {want} in\n{x}");
        }
        assert!(!x.contains("<cpu"), "x86 TCG takes QEMU's default CPU");
    }

    #[test]
    fn kvm_differs_only_in_domain_type() {
        let q = domain_xml(&spec(VirtKind::Qemu, Arch::X86_64)).expect("xml");
        let k = domain_xml(&spec(VirtKind::Kvm, Arch::X86_64)).expect("xml");
        let k = k.replacen("<domain type=\"kvm\">", "<domain type=\"qemu\">", 1);
        let k = k.replace("<betaas:kind>kvm<", "<betaas:kind>qemu<");
        assert_eq!(q, k);
    }

    #[test]
    fn armhf_tcg_gets_virt_gicv2_cortex_a15_and_no_usb() {
        let x = domain_xml(&spec(VirtKind::Qemu, Arch::Armhf)).expect("xml");
        for want in [
            "<type arch=\"armv7l\" machine=\"virt\">hvm</type>",
            "<gic version=\"2\"/>",
            "<model>cortex-a15</model>",
            "<controller type=\"usb\" model=\"none\"/>",
            "<memballoon model=\"none\"/>",
            // No PCI for the non-LPAE kernel: the disk is on virtio-mmio.
            "<address type=\"virtio-mmio\"/>",
        ] {
            assert!(x.contains(want), "missing {want} in\n{x}");
        }
        assert!(!x.contains("<acpi/>"));
        let mut lgw = spec(VirtKind::Qemu, Arch::Armhf);
        lgw.seed = Some("/v/seed.tar".into());
        lgw.user_net = true;
        let x = domain_xml(&lgw).expect("xml");
        assert_eq!(
            x.matches("<address type=\"virtio-mmio\"/>").count(),
            3,
            "{x}"
        );
        let x86 = domain_xml(&spec(VirtKind::Qemu, Arch::X86_64)).expect("xml");
        assert!(!x86.contains("virtio-mmio"), "{x86}");
    }

    #[test]
    fn lxc_is_a_container_with_rootfs_and_init() {
        let mut s = spec(VirtKind::Lxc, Arch::X86_64);
        s.boot = BootSpec::Container {
            rootfs: "/var/lib/betaas/vms/c/rootfs".into(),
            init: "/sbin/init".into(),
        };
        s.disk = None;
        let x = domain_xml(&s).expect("xml");
        for want in [
            "<domain type=\"lxc\">",
            "<type>exe</type>",
            "<init>/sbin/init</init>",
            "<filesystem type=\"mount\">",
            "<source dir=\"/var/lib/betaas/vms/c/rootfs\"/>",
            "<console type=\"pty\">",
            "<target type=\"lxc\" port=\"0\"/>",
        ] {
            assert!(x.contains(want), "missing {want} in\n{x}");
        }
        assert!(!x.contains("<kernel>") && !x.contains("<disk"));
    }

    #[test]
    fn a_service_container_mounts_its_share_a_service_vm_forwards_its_ports() {
        let mut s = spec(VirtKind::Lxc, Arch::X86_64);
        s.boot = BootSpec::Container {
            rootfs: "/v/c/rootfs".into(),
            init: "/init".into(),
        };
        s.disk = None;
        s.share = Some("/v/c/share".into());
        let x = domain_xml(&s).expect("xml");
        assert!(
            x.contains("<source dir=\"/v/c/share\"/>\n      <target dir=\"/srv/betaas\"/>"),
            "{x}"
        );
        assert!(
            !x.contains("<interface"),
            "a container shares the host's network: {x}"
        );

        for (arch, nic) in [
            (Arch::X86_64, "virtio-net-pci,netdev=betaas0"),
            (Arch::Armhf, "virtio-net-device,netdev=betaas0"),
        ] {
            let mut v = spec(VirtKind::Qemu, arch);
            v.user_net = true;
            v.forwards = vec![PortMap {
                guest: 8080,
                host: 41234,
            }];
            let x = domain_xml(&v).expect("xml");
            for want in [
                "xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\"",
                "<qemu:arg value=\"user,id=betaas0,hostfwd=tcp::41234-:8080\"/>",
                nic,
            ] {
                assert!(x.contains(want), "missing {want} in\n{x}");
            }
            assert!(!x.contains("<interface"), "one NIC, QEMU's: {x}");
            v.share = Some("/x".into());
            assert!(domain_xml(&v).is_err(), "a VM takes a seed, not a share");
        }
    }

    #[test]
    fn kind_and_boot_must_agree() {
        let mut s = spec(VirtKind::Lxc, Arch::X86_64);
        assert!(domain_xml(&s).is_err(), "lxc with a kernel boot");
        s.mark.kind = VirtKind::Qemu;
        s.disk = None;
        assert!(domain_xml(&s).is_err(), "a VM without its overlay");
    }

    #[test]
    fn hostile_values_are_escaped() {
        let mut s = spec(VirtKind::Qemu, Arch::X86_64);
        s.mark.template = "x</betaas:template><evil/>".into();
        s.boot = BootSpec::Kernel {
            kernel: "/a'b\"<c>".into(),
            initrd: None,
            cmdline: "a&b".into(),
        };
        let x = domain_xml(&s).expect("xml");
        assert!(!x.contains("<evil/>"));
        assert!(x.contains("a&amp;b"));
        // And the mark still reads back exactly.
        assert_eq!(parse_mark(&x).expect("parses"), Some(s.mark.clone()));
    }

    #[test]
    fn mark_round_trips_through_full_xml_and_libvirts_element_form() {
        let s = spec(VirtKind::Qemu, Arch::Armhf);
        let x = domain_xml(&s).expect("xml");
        assert_eq!(parse_mark(&x).expect("parses"), Some(s.mark.clone()));
        // What virDomainGetMetadata returns: the element with the namespace as default.
        let libvirt_form = "<vm xmlns=\"urn:betaas:vmd:1\">\n  <owner>gw1</owner>\n  <template>tiny</template>\n  <arch>armhf</arch>\n  <kind>qemu</kind>\n  <created>1764086400</created>\n</vm>";
        assert_eq!(
            parse_mark(libvirt_form).expect("parses"),
            Some(s.mark.clone())
        );
        let el = mark_element(&s.mark).expect("el");
        assert_eq!(parse_mark(&el).expect("parses"), Some(s.mark));
    }

    #[test]
    fn foreign_or_incomplete_metadata_is_not_a_mark() {
        assert_eq!(
            parse_mark("<domain><name>x</name></domain>").expect("ok"),
            None
        );
        assert_eq!(
            parse_mark("<vm><owner>gw1</owner><template>t</template></vm>").expect("ok"),
            None
        );
        assert_eq!(
            parse_mark("<vm><owner>a</owner><template>t</template><arch>sparc</arch><kind>qemu</kind><created>1</created></vm>")
                .expect("ok"),
            None
        );
        assert!(parse_mark("<vm><owner>a</ownr></vm>").is_err());
    }
}
