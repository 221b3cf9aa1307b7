use super::*;

const SUM_A: &str = "7794643cf4560de2a7e3b069e8ca8511ad2a568d652ea285f0fe051f79bc9e99";
const SUM_B: &str = "598a3fd92bdafc34cd81196b2952ad36e910e47a4ecf162f8ce5e8e262598e53";

/// Line numbers in the tests below refer to this text (line 1 is `name = …`).
fn good() -> String {
    format!(
        r#"name = "tiny"
role = "app-light"
description = "test template"
runs = ["busybox"]

[resources]
vcpus = 1
memory_mb = 128
disk_gb = 1

[virtualization]
kinds = ["kvm", "qemu"]
arch = ["x86_64"]

[image]
name = "tiny-x86_64"
file = "disk.qcow2"
format = "qcow2"
sha256 = "{SUM_A}"
min_vcpus = 1
min_memory_mb = 64
min_disk_gb = 1

[boot]
method = "kernel"
kernel = "vmlinuz"
kernel_sha256 = "{SUM_B}"
initrd = "initrd.img"
initrd_sha256 = "{SUM_A}"
cmdline = "panic=-1"

[console]
booted = "BETAAS-TINY-BOOTED"
"#
    )
}

fn parse(text: &str) -> Result<Template, DescriptorError> {
    Template::parse(Path::new("out/templates/tiny-x86_64/template.toml"), text)
}

fn err(text: &str) -> DescriptorError {
    parse(text).unwrap_err()
}

fn edit(from: &str, to: &str) -> String {
    let g = good();
    assert!(g.contains(from), "{from}");
    g.replacen(from, to, 1)
}

#[test]
fn good_descriptor_parses() {
    let t = parse(&good()).unwrap();
    assert_eq!(t.name, "tiny");
    assert_eq!(t.dir, Path::new("out/templates/tiny-x86_64"));
    assert_eq!(t.role, Role::AppLight);
    assert_eq!(
        t.resources,
        Resources {
            vcpus: 1,
            memory_mb: 128,
            disk_gb: 1
        }
    );
    assert_eq!(
        t.image.min,
        Resources {
            vcpus: 1,
            memory_mb: 64,
            disk_gb: 1
        }
    );
    assert_eq!(t.image.file.sha256.as_hex(), SUM_A);
    assert_eq!(t.image.format, ImageFormat::Qcow2);
    assert!(t.supports(VirtKind::Qemu, Arch::X86_64));
    assert!(!t.supports(VirtKind::Lxc, Arch::X86_64));
    assert!(!t.supports(VirtKind::Qemu, Arch::Armhf));
    assert_eq!(t.cmdline(Arch::X86_64).unwrap(), "panic=-1 console=ttyS0");
    assert_eq!(t.cmdline(Arch::Armhf).unwrap(), "panic=-1 console=ttyAMA0");
    assert_eq!(t.booted_marker, "BETAAS-TINY-BOOTED");
    let files: Vec<_> = t
        .files()
        .iter()
        .map(|(f, r)| (*f, r.path.clone()))
        .collect();
    assert_eq!(
        files,
        [
            ("image.file", PathBuf::from("disk.qcow2")),
            ("boot.kernel", PathBuf::from("vmlinuz")),
            ("boot.initrd", PathBuf::from("initrd.img")),
        ]
    );
    assert_eq!(
        t.path_of(&t.image.file),
        Path::new("out/templates/tiny-x86_64/disk.qcow2")
    );
}

#[test]
fn unknown_role_names_line_field_and_accepted_values() {
    let e = err(&edit("role = \"app-light\"", "role = \"database\""));
    assert_eq!((e.line, e.field.as_str()), (2, "role"));
    assert!(e.message.contains("database"), "{e}");
    for r in ["storage", "compute", "app-light", "app-heavy", "gateway"] {
        assert!(e.message.contains(r), "{e}");
    }
    let shown = e.to_string();
    assert!(
        shown.starts_with("out/templates/tiny-x86_64/template.toml:2: field `role`: "),
        "{shown}"
    );
}

#[test]
fn every_role_parses() {
    for (s, r) in [
        ("storage", Role::Storage),
        ("compute", Role::Compute),
        ("app-light", Role::AppLight),
        ("app-heavy", Role::AppHeavy),
        ("gateway", Role::Gateway),
    ] {
        let t = parse(&edit("role = \"app-light\"", &format!("role = \"{s}\""))).unwrap();
        assert_eq!(t.role, r);
        assert_eq!(r.as_str(), s);
    }
}

#[test]
fn missing_image_table_is_named() {
    let g = good();
    let start = g.find("[image]").unwrap();
    let end = g.find("[boot]").unwrap();
    let text = format!("{}{}", &g[..start], &g[end..]);
    let e = err(&text);
    assert!(e.message.contains("missing field `image`"), "{e}");
    assert_eq!(e.file, Path::new("out/templates/tiny-x86_64/template.toml"));
}

#[test]
fn missing_image_sha256_is_named_with_its_table_line() {
    let e = err(&edit(&format!("sha256 = \"{SUM_A}\"\n"), ""));
    assert_eq!((e.line, e.field.as_str()), (15, "image.sha256"));
    assert!(e.message.contains("missing"), "{e}");
}

#[test]
fn missing_image_file_field_is_named() {
    let e = err(&edit("file = \"disk.qcow2\"\n", ""));
    assert!(e.message.contains("missing field `file`"), "{e}");
    assert_eq!(e.field, "image");
}

#[test]
fn missing_image_file_on_disk_is_named_by_load() {
    let dir = std::env::temp_dir().join(format!("betaas-templates-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("template.toml"), good()).unwrap();
    std::fs::write(dir.join("vmlinuz"), b"k").unwrap();
    std::fs::write(dir.join("initrd.img"), b"i").unwrap();
    let e = Template::load(&dir).unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (17, "image.file"), "{e}");
    assert!(e.message.contains("disk.qcow2 does not exist"), "{e}");
    std::fs::write(dir.join("disk.qcow2"), b"d").unwrap();
    let t = Template::load(&dir).unwrap();
    assert_eq!(t.dir, dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn memory_below_the_image_minimum_is_refused() {
    let e = err(&edit("memory_mb = 128", "memory_mb = 32"));
    assert_eq!((e.line, e.field.as_str()), (8, "resources.memory_mb"));
    assert!(e.message.contains("32 is below the image's minimum"), "{e}");
    assert!(e.message.contains("min_memory_mb = 64"), "{e}");
}

#[test]
fn vcpus_and_disk_below_the_image_minimum_are_refused() {
    let e = err(&edit("min_vcpus = 1", "min_vcpus = 2"));
    assert_eq!((e.line, e.field.as_str()), (7, "resources.vcpus"));
    let e = err(&edit("min_disk_gb = 1", "min_disk_gb = 4"));
    assert_eq!((e.line, e.field.as_str()), (9, "resources.disk_gb"));
    assert!(e.message.contains("min_disk_gb = 4"), "{e}");
}

#[test]
fn zero_resources_are_refused() {
    let e = err(&edit("vcpus = 1", "vcpus = 0"));
    assert_eq!((e.line, e.field.as_str()), (7, "resources.vcpus"));
    let e = err(&edit("vcpus = 1", "vcpus = -1"));
    assert_eq!((e.line, e.field.as_str()), (7, "resources.vcpus"));
}

#[test]
fn bad_sha256_is_refused_with_its_place() {
    let short = &SUM_A[..63];
    let e = err(&edit(SUM_A, short));
    assert_eq!((e.line, e.field.as_str()), (19, "image.sha256"));
    assert!(e.message.contains("64 hexadecimal digits"), "{e}");
    assert!(e.message.contains("63 characters"), "{e}");

    let not_hex = format!("{}g", &SUM_B[..63]);
    let e = err(&edit(SUM_B, &not_hex));
    assert_eq!((e.line, e.field.as_str()), (27, "boot.kernel_sha256"));
    assert!(e.message.contains("'g' is not one"), "{e}");
}

#[test]
fn uppercase_sha256_is_accepted_and_lowered() {
    let t = parse(&edit(SUM_A, &SUM_A.to_uppercase())).unwrap();
    assert_eq!(t.image.file.sha256.as_hex(), SUM_A);
}

#[test]
fn unknown_kind_arch_and_field_are_refused() {
    let e = err(&edit(
        "kinds = [\"kvm\", \"qemu\"]",
        "kinds = [\"kvm\", \"xen\"]",
    ));
    assert_eq!((e.line, e.field.as_str()), (12, "virtualization.kinds"));
    assert!(e.message.contains("`lxc`"), "{e}");
    let e = err(&edit("arch = [\"x86_64\"]", "arch = [\"mips\"]"));
    assert_eq!((e.line, e.field.as_str()), (13, "virtualization.arch"));
    let e = err(&edit("disk_gb = 1", "disk_gb = 1\nswap_gb = 1"));
    assert_eq!((e.line, e.field.as_str()), (10, "resources.swap_gb"));
}

#[test]
fn empty_or_duplicate_kinds_are_refused() {
    let e = err(&edit("kinds = [\"kvm\", \"qemu\"]", "kinds = []"));
    assert_eq!((e.line, e.field.as_str()), (12, "virtualization.kinds"));
    let e = err(&edit(
        "kinds = [\"kvm\", \"qemu\"]",
        "kinds = [\"qemu\", \"qemu\"]",
    ));
    assert!(e.message.contains("qemu is listed twice"), "{e}");
    let e = err(&edit(
        "arch = [\"x86_64\"]",
        "arch = [\"x86_64\", \"armhf\", \"x86_64\"]",
    ));
    assert_eq!((e.line, e.field.as_str()), (13, "virtualization.arch"));
}

#[test]
fn lxc_needs_its_table_and_the_table_needs_lxc() {
    let e = err(&edit(
        "kinds = [\"kvm\", \"qemu\"]",
        "kinds = [\"kvm\", \"lxc\"]",
    ));
    assert_eq!((e.line, e.field.as_str()), (12, "virtualization.kinds"));
    let with_table = format!(
        "{}\n[lxc]\nrootfs = \"rootfs.tar.gz\"\nrootfs_sha256 = \"{SUM_B}\"\ninit = \"/sbin/init\"\n",
        good()
    );
    let e = err(&with_table);
    assert_eq!(e.field, "lxc");
    let both = with_table.replacen(
        "kinds = [\"kvm\", \"qemu\"]",
        "kinds = [\"kvm\", \"lxc\"]",
        1,
    );
    let t = parse(&both).unwrap();
    assert!(t.supports(VirtKind::Lxc, Arch::X86_64));
    assert_eq!(t.lxc.as_ref().unwrap().init, "/sbin/init");
    assert_eq!(t.files().last().unwrap().0, "lxc.rootfs");
    let e = err(&both.replacen("\"/sbin/init\"", "\"sbin/init\"", 1));
    assert_eq!(e.field, "lxc.init");
    // A container only: its rootfs is the one file it needs (the VM files may be left out).
    let only = both.replacen("kinds = [\"kvm\", \"lxc\"]", "kinds = [\"lxc\"]", 1);
    let names: Vec<_> = parse(&only).unwrap().files().iter().map(|f| f.0).collect();
    assert_eq!(names, ["lxc.rootfs"]);
}

#[test]
fn paths_must_stay_in_the_template_directory() {
    for bad in ["/boot/vmlinuz", "../vmlinuz", "a/../../b", ""] {
        let e = err(&edit(
            "kernel = \"vmlinuz\"",
            &format!("kernel = \"{bad}\""),
        ));
        assert_eq!(
            (e.line, e.field.as_str()),
            (26, "boot.kernel"),
            "{bad}: {e}"
        );
    }
    let t = parse(&edit("kernel = \"vmlinuz\"", "kernel = \"boot/vmlinuz\"")).unwrap();
    assert_eq!(t.files()[1].1.path, Path::new("boot/vmlinuz"));
}

#[test]
fn kernel_boot_rules() {
    let e = err(&edit("kernel = \"vmlinuz\"\n", ""));
    assert_eq!((e.line, e.field.as_str()), (24, "boot.kernel"));
    let e = err(&edit(
        "cmdline = \"panic=-1\"",
        "cmdline = \"console=ttyS0 panic=-1\"",
    ));
    assert_eq!((e.line, e.field.as_str()), (30, "boot.cmdline"));
    let e = err(&edit("initrd = \"initrd.img\"\n", ""));
    assert_eq!(e.field, "boot.initrd_sha256");
    let no_initrd = edit("initrd = \"initrd.img\"\n", "").replacen(
        &format!("initrd_sha256 = \"{SUM_A}\"\n"),
        "",
        1,
    );
    let t = parse(&no_initrd).unwrap();
    assert!(matches!(t.boot, Boot::Kernel { initrd: None, .. }));
    let e = err(&edit("method = \"kernel\"", "method = \"pxe\""));
    assert_eq!((e.line, e.field.as_str()), (25, "boot.method"));
}

#[test]
fn disk_boot_takes_no_kernel() {
    let e = err(&edit("method = \"kernel\"", "method = \"disk\""));
    assert_eq!((e.line, e.field.as_str()), (26, "boot.kernel"));
    let g = good();
    let start = g.find("method = \"kernel\"").unwrap();
    let end = g.find("[console]").unwrap();
    let disk = format!("{}method = \"disk\"\n\n{}", &g[..start], &g[end..]);
    let t = parse(&disk).unwrap();
    assert_eq!(t.boot, Boot::Disk);
    assert_eq!(t.cmdline(Arch::X86_64), None);
    assert_eq!(t.files().len(), 1);
}

#[test]
fn bad_names_and_empty_marker_are_refused() {
    let e = err(&edit("name = \"tiny\"", "name = \"tiny vm\""));
    assert_eq!((e.line, e.field.as_str()), (1, "name"));
    let e = err(&edit("name = \"tiny-x86_64\"", "name = \"-x\""));
    assert_eq!((e.line, e.field.as_str()), (16, "image.name"));
    let e = err(&edit("booted = \"BETAAS-TINY-BOOTED\"", "booted = \" \""));
    assert_eq!((e.line, e.field.as_str()), (33, "console.booted"));
}

#[test]
fn syntax_error_has_a_line() {
    let e = err(&edit("disk_gb = 1", "disk_gb = = 1"));
    assert_eq!(e.line, 9);
}

#[test]
fn source_descriptors_may_omit_checksums_but_nothing_else() {
    let g = good()
        .replacen(&format!("sha256 = \"{SUM_A}\"\n"), "", 1)
        .replacen(&format!("kernel_sha256 = \"{SUM_B}\"\n"), "", 1)
        .replacen(&format!("initrd_sha256 = \"{SUM_A}\"\n"), "", 1);
    let p = Path::new("templates/tiny/template.toml");
    check_source(p, &g).unwrap();
    assert_eq!(Template::parse(p, &g).unwrap_err().field, "image.sha256");
    let e = check_source(p, &g.replacen("memory_mb = 128", "memory_mb = 32", 1)).unwrap_err();
    assert_eq!(e.field, "resources.memory_mb");
}

#[test]
fn network_is_optional_user_mode_only_and_not_for_containers() {
    assert_eq!(parse(&good()).unwrap().network, None);
    let with = format!("{}\n[network]\nmode = \"user\"\n", good());
    assert_eq!(
        parse(&with).unwrap().network,
        Some(Network {
            mode: NetworkMode::User,
            ports: vec![]
        })
    );
    // Line 36 is `mode = …` in the appended table.
    let e = err(&with.replacen("mode = \"user\"", "mode = \"bridge\"", 1));
    assert_eq!((e.line, e.field.as_str()), (36, "network.mode"), "{e}");
    assert!(e.message.contains("`user`"), "{e}");
    let e = err(&format!("{}\n[network]\n", good()));
    assert_eq!(e.field, "network", "{e}");
    assert!(e.message.contains("mode"), "{e}");
    let e = err(&format!(
        "{}\n[network]\nmode = \"user\"\nmac = \"x\"\n",
        good()
    ));
    assert_eq!(e.field, "network.mac", "{e}");
    let lxc = format!(
        "{}\n[lxc]\nrootfs = \"rootfs.tar.gz\"\nrootfs_sha256 = \"{SUM_B}\"\ninit = \"/sbin/init\"\n",
        with
    )
    .replacen("kinds = [\"kvm\", \"qemu\"]", "kinds = [\"qemu\", \"lxc\"]", 1);
    let e = err(&lxc);
    assert_eq!((e.line, e.field.as_str()), (36, "network.mode"), "{e}");
    assert!(e.message.contains("lxc"), "{e}");
}

#[test]
fn service_ports_and_ready_marker() {
    let with = format!(
        "{}\n[network]\nmode = \"user\"\nports = [8080, 8443]\n",
        good()
    );
    let t = parse(&with).unwrap();
    assert_eq!(t.network.unwrap().ports, vec![8080, 8443]);
    assert_eq!(t.ready_marker, None);
    // A container with service ports shares the host's network: allowed.
    let lxc = format!(
        "{}\n[lxc]\nrootfs = \"rootfs.tar.gz\"\nrootfs_sha256 = \"{SUM_B}\"\ninit = \"/sbin/init\"\n",
        with
    )
    .replacen("kinds = [\"kvm\", \"qemu\"]", "kinds = [\"qemu\", \"lxc\"]", 1);
    assert_eq!(
        parse(&lxc).unwrap().network.unwrap().ports,
        vec![8080, 8443]
    );
    let e = err(&with.replacen("[8080, 8443]", "[8080, 8080]", 1));
    assert_eq!(e.field, "network.ports", "{e}");
    let e = err(&with.replacen("[8080, 8443]", "[0]", 1));
    assert_eq!(e.field, "network.ports", "{e}");
    let ready = good().replacen("[console]\n", "[console]\nready = \"TINY-READY\"\n", 1);
    assert_eq!(
        parse(&ready).unwrap().ready_marker.as_deref(),
        Some("TINY-READY")
    );
    let e = err(&good().replacen("[console]\n", "[console]\nready = \" \"\n", 1));
    assert_eq!(e.field, "console.ready", "{e}");
}

mod cluster {
    use super::*;

    const WORKER: &str = r#"
name = "bigdata-compute"
role = "compute"
[resources]
vcpus = 1
memory_mb = 1024
disk_gb = 2
[virtualization]
kinds = ["lxc"]
arch = ["x86_64"]
[image]
name = "bigdata"
file = "disk.qcow2"
format = "qcow2"
min_vcpus = 1
min_memory_mb = 512
min_disk_gb = 1
[boot]
method = "disk"
[console]
booted = "REGISTERED"
[lxc]
rootfs = "rootfs.tar"
init = "/usr/libexec/betaas/bigdata-worker"
[cluster]
role = "worker"
master = "bigdata-master"
master_env = "SPARK_MASTER"
"#;

    #[test]
    fn a_worker_names_its_master_and_the_variable() {
        let t = Template::build(Path::new("t/template.toml"), WORKER, Sums::Optional).unwrap();
        let c = t.cluster.unwrap();
        assert_eq!(c.role, ClusterRole::Worker);
        assert_eq!(c.master.as_deref(), Some("bigdata-master"));
        assert_eq!(c.master_env.as_deref(), Some("SPARK_MASTER"));
    }

    #[test]
    fn a_master_serves_a_url_at_the_gateways_address() {
        let text = WORKER.replace(
            "role = \"worker\"\nmaster = \"bigdata-master\"\nmaster_env = \"SPARK_MASTER\"",
            "role = \"master\"\nurl = \"spark://{address}:7077\"",
        );
        let t = Template::build(Path::new("t/template.toml"), &text, Sums::Optional).unwrap();
        assert_eq!(
            t.cluster.unwrap().url_at("10.0.0.5").as_deref(),
            Some("spark://10.0.0.5:7077")
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (from, to, field) in [
            ("master_env = \"SPARK_MASTER\"", "", "cluster.master_env"),
            (
                "master_env = \"SPARK_MASTER\"",
                "master_env = \"SPARK-MASTER\"",
                "cluster.master_env",
            ),
            (
                "master_env = \"SPARK_MASTER\"",
                "master_env = \"X\"\nurl = \"u\"",
                "cluster.url",
            ),
            ("role = \"worker\"", "role = \"boss\"", "cluster.role"),
        ] {
            let text = WORKER.replace(from, to);
            let e =
                Template::build(Path::new("t/template.toml"), &text, Sums::Optional).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }
}
