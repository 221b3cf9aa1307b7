//! Every recipe's source descriptor (`templates/<name>/template.toml`) is valid apart from the
//! checksums its build adds, and the paper's templates are all there.

use std::path::PathBuf;
use std::process::Command;

use betaas_templates::{check_source, Template, DESCRIPTOR};

fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_source_descriptor_is_valid() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(templates_dir()).expect("templates/ is readable") {
        let dir = entry.expect("templates/ entry").path();
        let path = dir.join(DESCRIPTOR);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("descriptor is readable");
        if let Err(e) = check_source(&path, &text) {
            panic!("{e}");
        }
        let recipe = dir.join("build.sh");
        assert!(recipe.is_file(), "{} has no build.sh", dir.display());
        // The paper's Arch Linux ARM variant kept beside an offline recipe (app: build-alarm.sh).
        let alarm = dir.join("alarm.toml");
        if alarm.is_file() {
            let text = std::fs::read_to_string(&alarm).expect("alarm.toml is readable");
            check_source(&alarm, &text).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                dir.join("build-alarm.sh").is_file(),
                "{} has no build-alarm.sh",
                dir.display()
            );
        }
        names.push(
            dir.file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    assert_eq!(
        names,
        [
            "app",
            "bigdata-compute",
            "bigdata-storage",
            "gateway",
            "lgw",
            "tiny"
        ]
    );
}

/// templates/lib/descriptor.sh (what every recipe writes next to its build) produces descriptors
/// this crate loads, with each file's own sha256 in its own field, for every template.
#[test]
fn the_recipes_descriptor_writer_yields_loadable_descriptors() {
    let top = templates_dir().join("..");
    for name in [
        "app",
        "bigdata-compute",
        "bigdata-storage",
        "gateway",
        "tiny",
    ] {
        let out = std::env::temp_dir().join(format!("betaas-tpl-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&out).expect("temp dir");
        for f in ["vmlinuz", "initrd.img", "disk.qcow2", "rootfs.tar.gz"] {
            std::fs::write(out.join(f), format!("{name}/{f} {}", fastrand_u64())).expect("write");
        }
        let arch = if name == "tiny" { "armhf" } else { "" };
        let status = Command::new("bash")
            .current_dir(&top)
            .arg("-c")
            .arg(r#". templates/lib/descriptor.sh && tpl_descriptor "templates/$1/template.toml" "$2" "$3""#)
            .args(["-", name])
            .arg(&out)
            .arg(arch)
            .status()
            .expect("bash runs");
        assert!(status.success(), "{name}: tpl_descriptor failed");
        let t = Template::load(&out).unwrap_or_else(|e| panic!("{e}"));
        for (field, f) in t.files() {
            assert_eq!(
                f.sha256.as_hex(),
                betaas_e2e::sha256_hex(&t.path_of(f)),
                "{name}: {field}"
            );
        }
        if name == "tiny" {
            assert_eq!(t.image.name, "tiny-armhf");
            assert_eq!(t.arch, [betaas_templates::Arch::Armhf]);
        }
        std::fs::remove_dir_all(&out).expect("cleanup");
    }
}

/// Random enough for distinct file contents per run (no extra dependency).
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The offline big-data templates: one recipe (`templates/bigdata/build.sh`), three descriptors,
/// each a role of one cluster; the worker names the master's template and the variable.
#[test]
fn the_bigdata_roles_are_valid_and_find_their_master() {
    let dir = templates_dir().join("bigdata");
    let load = |role: &str| {
        let path = dir.join(format!("{role}.toml"));
        let text = std::fs::read_to_string(&path).expect("descriptor is readable");
        check_source(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        text
    };
    for role in ["master", "compute", "storage"] {
        let text = load(role);
        assert!(
            text.contains(&format!("name = \"bigdata-{role}\"")),
            "{role}"
        );
        assert!(text.contains("[cluster]"), "{role}");
    }
    assert!(load("compute").contains("master = \"bigdata-master\""));
    assert!(load("compute").contains("master_env = \"SPARK_MASTER\""));
}
