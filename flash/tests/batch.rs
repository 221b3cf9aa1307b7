//! `betaas-flash batch`: five gateways, one bad row. Checked from outside: mtools reads each
//! image's agent.toml and keys, the agent's parser reads the config, and the credential verifies
//! against the instance key (the core crate's `Credential::verify`).

mod common;

use std::os::unix::fs::MetadataExt;

use betaas_core::instance::msg::Credential;
use common::*;

#[test]
fn five_rows_one_bad_four_images_each_with_its_own_id_and_credential() {
    let card = Card::new();
    let d = card.dir.path();
    let keys = d.join("instance-keys");
    betaas_agent::instance::keygen(&keys).expect("instance keygen");
    let instance_pub: [u8; 32] = std::fs::read(keys.join("instance.pub"))
        .expect("instance.pub")
        .try_into()
        .expect("32 bytes");
    let instance = ed25519_dalek::VerifyingKey::from_bytes(&instance_pub).expect("key");

    let base = d.join("base.toml");
    std::fs::write(
        &base,
        format!(
            "{}\n[instance]\nname = \"lab\"\nkeys = \"/boot/betaas/instance\"\nvirt = \"none\"\ncapacity = {{ cpus = 0, mem_mb = 0, disk_gb = 0 }}\n",
            agent_toml("template", "10.0.2.2", 1883)
        ),
    )
    .expect("base");
    let run_id = fastrand::u32(..);
    let gws: Vec<String> = (0..5).map(|i| format!("gw{i}-{run_id}")).collect();
    let bad_row = 1 + fastrand::usize(..5); // data rows are lines 2..=6
    let mut csv = String::from("gateway_id,mqtt.host,mqtt.port\n");
    for (i, gw) in gws.iter().enumerate() {
        let port = if i + 1 == bad_row {
            "70000".to_owned()
        } else {
            (1883 + i).to_string()
        };
        csv.push_str(&format!("{gw},10.0.0.{},{port}\n", 10 + i));
    }
    let csv_path = d.join("gateways.csv");
    std::fs::write(&csv_path, &csv).expect("csv");
    let out = d.join("out");
    let o = flash()
        .args(["batch", "--image"])
        .arg(&card.img)
        .arg("--csv")
        .arg(&csv_path)
        .arg("--base-config")
        .arg(&base)
        .arg("--out")
        .arg(&out)
        .arg("--instance-key")
        .arg(keys.join("instance.key"))
        .output()
        .expect("batch");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "one row failed: {err}");
    let bad_line = bad_row + 1;
    assert!(
        err.contains(&format!(
            "{}:{bad_line}: gateway \"{}\": field `mqtt.port`",
            csv_path.display(),
            gws[bad_row - 1]
        )),
        "{err}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report"))
            .expect("json");
    let rows = report.as_array().expect("array");
    assert_eq!(rows.len(), 5);
    for (i, (gw, row)) in gws.iter().zip(rows).enumerate() {
        assert_eq!(row["gateway"], gw.as_str());
        assert_eq!(row["line"], i as u64 + 2);
        let img = out.join(format!("{gw}.img"));
        if i + 1 == bad_row {
            assert!(
                row["error"].as_str().expect("error").contains("mqtt.port"),
                "{row}"
            );
            assert!(!img.exists(), "no image for the bad row");
            continue;
        }
        assert!(row["error"].is_null(), "{row}");
        assert_eq!(row["verified"], true);
        assert_eq!(row["target"], img.to_string_lossy().as_ref());
        let bytes = std::fs::read(&img).expect("image");
        assert_eq!(
            row["sha256"],
            sha256(&bytes).as_str(),
            "report's sha256 is the file's"
        );
        assert_eq!(
            std::fs::metadata(&img).expect("meta").mode() & 0o777,
            0o600,
            "an image holding a private key is 0600"
        );
        let provisioned: Vec<&str> = row["provisioned"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            provisioned.contains(&"betaas/instance/gateway.key"),
            "{provisioned:?}"
        );

        let at = BOOT_AT_MB * MIB;
        let toml = String::from_utf8(mtype(&img, at, "betaas/agent.toml")).expect("utf8");
        let config = betaas_agent::config::Config::parse(std::path::Path::new("x"), &toml)
            .expect("config parses");
        assert_eq!(config.gateway_id.to_string(), *gw);
        assert_eq!(config.mqtt.host, format!("10.0.0.{}", 10 + i));
        assert_eq!(config.mqtt.port, 1883 + i as u16);
        let cred: Credential = postcard::from_bytes(&mtype(&img, at, "betaas/instance/credential"))
            .expect("credential");
        let gw_key: [u8; 32] = mtype(&img, at, "betaas/instance/gateway.key")
            .try_into()
            .expect("32-byte key");
        let signing = ed25519_dalek::SigningKey::from_bytes(&gw_key);
        let verified = cred
            .verify(&instance)
            .expect("the instance key verifies the credential");
        assert_eq!(
            verified,
            signing.verifying_key(),
            "the credential is for this gateway's key"
        );
        assert_eq!(cred.gateway, *gw);
        assert_eq!(
            mtype(&img, at, "betaas/instance/instance.pub"),
            instance_pub
        );
        // The rest of the boot partition is the image's.
        for (path, data) in &card.fat_files {
            assert!(&mtype(&img, at, path) == data, "{path} changed");
        }
    }
    // No generated private key stays on the PC.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .expect("out")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".img") && n != "report.json")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
