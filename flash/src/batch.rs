//! A batch of gateways from a CSV file: one row per gateway, the header naming config keys
//! (`gateway_id` required; dotted names such as `mqtt.host` set keys in tables). Each row's config
//! is the base config with the row's values set (comments and layout kept, `toml_edit`), checked
//! with the agent's parser; a bad row is reported with its line and the others go on.
//!
//! Each good row gets the image written (bmap), verified and provisioned: to `OUT/<gateway>.img`,
//! or to the next of the given targets; with an instance key, a fresh gateway key and the
//! instance's credential for it, made by the agent's own `instance::admit`, go to where the config's
//! `[instance] keys` points under `/boot/betaas/`. The generated private key exists only on the
//! card (and in a 0700 temporary directory while it is copied there).

use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde::Serialize;
use toml_edit::{DocumentMut, Item as TomlItem, Table, Value};

use crate::bmap::Map;
use crate::provision::{self, Item};
use crate::target::{self, System, Target};
use crate::{copy, Error};

/// One planned row: its line in the CSV, the gateway it names (if it does), and its config
/// text or why it cannot be made.
#[derive(Debug, Clone)]
pub struct Row {
    pub line: u64,
    pub gateway: String,
    pub config: Result<String, String>,
}

/// The base config with one row's values set. Empty cells keep the base's value. A cell is
/// typed like the base's value of that key (a string stays a string); for a new key it is read
/// as a TOML value (number, boolean, array, quoted string) or else taken as a string.
pub fn config_for(base: &str, header: &[String], cells: &[String]) -> Result<String, String> {
    let mut doc: DocumentMut = base.parse().map_err(|e| format!("base config: {e}"))?;
    for (key, cell) in header.iter().zip(cells) {
        if cell.is_empty() {
            continue;
        }
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("column `{key}`: not a key name"));
        }
        let (last, path) = parts.split_last().ok_or("empty column name")?;
        let mut table: &mut Table = doc.as_table_mut();
        for p in path {
            let entry = table
                .entry(p)
                .or_insert_with(|| TomlItem::Table(Table::new()));
            table = entry.as_table_mut().ok_or_else(|| {
                format!(
                    "column `{key}`: `{p}` is not a table in the base config (arrays of tables such as [[things]] are set in the base config)"
                )
            })?;
        }
        let value = match table.get(last).and_then(TomlItem::as_value) {
            Some(Value::String(_)) => Value::from(cell.as_str()),
            _ => cell
                .parse::<Value>()
                .unwrap_or_else(|_| Value::from(cell.as_str())),
        };
        match table.get_mut(last).and_then(TomlItem::as_value_mut) {
            // Replace the value only: the key and the comments around it stay.
            Some(v) => {
                let decor = v.decor().clone();
                *v = value;
                *v.decor_mut() = decor;
            }
            None => {
                table.insert(last, toml_edit::value(value));
            }
        }
    }
    Ok(doc.to_string())
}

/// Reads the CSV and makes every row's config, checked with the agent's parser. Errors in the
/// CSV as a whole (unreadable, no `gateway_id` column) stop everything; a row's error is kept
/// in its [`Row`].
pub fn plan(csv_path: &Path, base_path: &Path) -> Result<Vec<Row>, Error> {
    let base = std::fs::read_to_string(base_path).map_err(|e| Error::io(base_path, e))?;
    provision::check_config(base_path, &base)?;
    let mut rd = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_path(csv_path)
        .map_err(|e| Error::Usage(format!("{}: {e}", csv_path.display())))?;
    let header: Vec<String> = rd
        .headers()
        .map_err(|e| Error::Usage(format!("{}: {e}", csv_path.display())))?
        .iter()
        .map(str::to_owned)
        .collect();
    if !header.iter().any(|h| h == "gateway_id") {
        return Err(Error::Usage(format!(
            "{}:1: the header has no `gateway_id` column (columns: {})",
            csv_path.display(),
            header.join(", ")
        )));
    }
    let mut rows = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for rec in rd.records() {
        let (line, cells) = match rec {
            Ok(r) => (
                r.position().map_or(0, |p| p.line()),
                r.iter().map(str::to_owned).collect::<Vec<_>>(),
            ),
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                rows.push(Row {
                    line,
                    gateway: String::new(),
                    config: Err(e.to_string()),
                });
                continue;
            }
        };
        let gateway = header
            .iter()
            .zip(&cells)
            .find(|(h, _)| *h == "gateway_id")
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        let config = if cells.len() != header.len() {
            Err(format!(
                "{} fields, the header has {}",
                cells.len(),
                header.len()
            ))
        } else if gateway.is_empty() {
            Err("no gateway_id".into())
        } else if let Some(first) = seen.get(&gateway) {
            Err(format!("gateway_id {gateway:?} is already on line {first}"))
        } else {
            seen.insert(gateway.clone(), line);
            config_for(&base, &header, &cells).and_then(|text| {
                // The agent's own check; the message names the field. The line it gives is in
                // the generated file, not the CSV: the field is what the user can find.
                let place = PathBuf::from(format!("{}:{line}", csv_path.display()));
                betaas_agent::config::Config::parse(&place, &text)
                    .map(|_| text)
                    .map_err(|e| {
                        if e.field.is_empty() {
                            e.message
                        } else {
                            format!("field `{}`: {}", e.field, e.message)
                        }
                    })
            })
        };
        rows.push(Row {
            line,
            gateway,
            config,
        });
    }
    Ok(rows)
}

/// One gateway's line in `report.json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub line: u64,
    pub gateway: String,
    pub target: Option<PathBuf>,
    /// sha256 of the target's first image-size bytes after writing and provisioning
    /// (`head -c BYTES TARGET | sha256sum` gives it again).
    pub sha256: Option<String>,
    pub bytes: Option<u64>,
    pub verified: bool,
    pub provisioned: Vec<String>,
    pub error: Option<String>,
}

pub struct Options<'a> {
    pub image: PathBuf,
    pub map: Map,
    pub csv: PathBuf,
    pub base_config: PathBuf,
    pub out: PathBuf,
    pub instance_key: Option<PathBuf>,
    pub provision_dir: Option<PathBuf>,
    /// Cards to write in order, one per good row; none: `OUT/<gateway>.img` files.
    pub targets: Vec<PathBuf>,
    pub verify: bool,
    pub force: bool,
    /// Asked before a device is overwritten; false skips that row.
    pub confirm: &'a mut dyn FnMut(&Target) -> bool,
    pub bar: &'a dyn Fn() -> ProgressBar,
}

/// Runs the batch; the reports (also written to `OUT/report.json`) in CSV order.
pub fn run(mut o: Options) -> Result<Vec<Report>, Error> {
    let rows = plan(&o.csv, &o.base_config)?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let shared = provision::collect(None, o.provision_dir.as_deref())?;
    if shared.iter().any(|i| i.rel == "agent.toml") {
        return Err(Error::Usage(
            "the --provision directory has an agent.toml: each gateway's comes from the CSV".into(),
        ));
    }
    let mut targets = o.targets.clone().into_iter();
    let mut reports = Vec::new();
    let sys = System::live();
    for row in rows {
        let mut r = Report {
            line: row.line,
            gateway: row.gateway.clone(),
            target: None,
            sha256: None,
            bytes: None,
            verified: false,
            provisioned: Vec::new(),
            error: None,
        };
        let result = match &row.config {
            Err(e) => Err(e.clone()),
            Ok(text) => {
                let target = if o.targets.is_empty() {
                    Some(o.out.join(format!("{}.img", row.gateway)))
                } else {
                    targets.next()
                };
                match target {
                    None => Err("no target left (more good rows than --targets)".into()),
                    Some(t) => {
                        r.target = Some(t.clone());
                        one(&mut o, &row, text, &shared, &t, &sys, &mut r)
                            .map_err(|e| e.to_string())
                    }
                }
            }
        };
        if let Err(e) = result {
            eprintln!(
                "{}:{}: gateway {:?}: {e}",
                o.csv.display(),
                row.line,
                row.gateway
            );
            r.error = Some(e);
        } else {
            eprintln!(
                "{}: {} written{}, {} files provisioned",
                row.gateway,
                r.target.as_deref().unwrap_or(Path::new("")).display(),
                if r.verified { " and verified" } else { "" },
                r.provisioned.len()
            );
        }
        reports.push(r);
        write_report(&o.out, &reports)?;
    }
    Ok(reports)
}

fn write_report(out: &Path, reports: &[Report]) -> Result<(), Error> {
    let path = out.join("report.json");
    let json = serde_json::to_string_pretty(reports).map_err(|e| Error::Usage(e.to_string()))?;
    std::fs::write(&path, json + "\n").map_err(|e| Error::io(&path, e))
}

fn one(
    o: &mut Options,
    row: &Row,
    config: &str,
    shared: &[Item],
    target_path: &Path,
    sys: &System,
    r: &mut Report,
) -> Result<(), Error> {
    let mut items = shared.to_vec();
    let cfg_from = PathBuf::from(format!("{}:{}", o.csv.display(), row.line));
    items.push(Item {
        rel: "agent.toml".into(),
        data: config.as_bytes().to_vec(),
        private: false,
        from: cfg_from.clone(),
    });
    // Mode 0700 (tempfile's default), removed on drop.
    let keys_tmp = tempfile::Builder::new()
        .prefix(".keys-")
        .tempdir_in(&o.out)
        .map_err(|e| Error::io(&o.out, e))?;
    let keys_dir = keys_tmp.path().to_owned();
    let result = keys_and_card(
        o,
        row,
        &cfg_from,
        config,
        &keys_dir,
        items,
        target_path,
        sys,
        r,
    );
    drop(keys_tmp);
    result
}

#[allow(clippy::too_many_arguments)]
fn keys_and_card(
    o: &mut Options,
    row: &Row,
    cfg_from: &Path,
    config: &str,
    keys_dir: &Path,
    mut items: Vec<Item>,
    target_path: &Path,
    sys: &System,
    r: &mut Report,
) -> Result<(), Error> {
    if let Some(ik) = &o.instance_key {
        let parsed = provision::check_config(cfg_from, config)?;
        let keys = parsed
            .instance
            .as_ref()
            .map(|i| i.keys.clone())
            .ok_or_else(|| {
                Error::Usage("--instance-key, but the config has no [instance] section".into())
            })?;
        let rel = keys.strip_prefix(provision::ON_GATEWAY).map_err(|_| {
                Error::Usage(format!(
                    "--instance-key: the config's [instance] keys = {:?} is not under {} (the card's boot partition), so the card cannot carry the keys",
                    keys.display().to_string(),
                    provision::ON_GATEWAY
                ))
            })?;
        betaas_agent::instance::admit(ik, &row.gateway, keys_dir)
            .map_err(|m| Error::Usage(format!("making the gateway's key: {m}")))?;
        for f in [
            betaas_agent::instance::GATEWAY_KEY,
            betaas_agent::instance::CREDENTIAL,
            betaas_agent::instance::INSTANCE_PUB,
        ] {
            let p = keys_dir.join(f);
            items.push(Item {
                rel: rel.join(f).to_string_lossy().into_owned(),
                data: std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
                private: f == betaas_agent::instance::GATEWAY_KEY,
                from: p,
            });
        }
    }
    let private = items.iter().any(|i| i.private);
    if o.targets.is_empty() {
        // A fresh file: nothing of a previous run's image stays in its unmapped blocks.
        match std::fs::remove_file(target_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(target_path, e))
            }
            _ => {}
        }
    }
    let t = target::inspect(target_path, &o.image, o.map.image_size, o.force, sys)?;
    if t.is_device() && !(o.confirm)(&t) {
        return Err(Error::Usage("not confirmed: skipped".into()));
    }
    let out = copy::open_output(&t, o.map.image_size, private)?;
    let written = copy::write(&o.image, &o.map, &out, &(o.bar)())?;
    drop(out);
    if o.verify {
        copy::verify(
            &o.image,
            &o.map,
            Some(&written.sums),
            target_path,
            None,
            &(o.bar)(),
        )?;
        r.verified = true;
    }
    r.provisioned = provision::provision(target_path, &items)?;
    r.sha256 = Some(copy::sha256_prefix(target_path, o.map.image_size)?);
    r.bytes = Some(o.map.image_size);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "# base\ngateway_id = \"x\"\n\n[mqtt]\nhost = \"10.0.2.2\" # the broker\nport = 1883\n";

    fn set(cols: &[&str], cells: &[&str]) -> Result<String, String> {
        let h: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
        let c: Vec<String> = cells.iter().map(|s| s.to_string()).collect();
        config_for(BASE, &h, &c)
    }

    #[test]
    fn dotted_columns_set_nested_keys_typed_like_the_base() {
        let t = set(
            &[
                "gateway_id",
                "mqtt.host",
                "mqtt.port",
                "mqtt.prefix",
                "health.interval_secs",
            ],
            &["gw-7", "192.168.1.5", "8883", "lab", "30"],
        )
        .expect("config");
        let v: toml::Table = toml::from_str(&t).expect("toml");
        assert_eq!(v["gateway_id"].as_str(), Some("gw-7"));
        assert_eq!(v["mqtt"]["host"].as_str(), Some("192.168.1.5"));
        assert_eq!(v["mqtt"]["port"].as_integer(), Some(8883));
        assert_eq!(v["mqtt"]["prefix"].as_str(), Some("lab"));
        assert_eq!(v["health"]["interval_secs"].as_integer(), Some(30));
        assert!(t.contains("# base"), "comments kept:\n{t}");
    }

    #[test]
    fn a_string_key_stays_a_string_and_empty_cells_keep_the_base() {
        let t = set(&["gateway_id", "mqtt.host"], &["1234", ""]).expect("config");
        let v: toml::Table = toml::from_str(&t).expect("toml");
        assert_eq!(v["gateway_id"].as_str(), Some("1234"));
        assert_eq!(v["mqtt"]["host"].as_str(), Some("10.0.2.2"));
    }

    #[test]
    fn a_key_under_a_value_is_refused() {
        let e = set(&["gateway_id", "mqtt.port.x"], &["a", "1"]).expect_err("port is a value");
        assert!(e.contains("`port` is not a table"), "{e}");
    }
}
