//! Battery and mains from `/sys/class/power_supply` (the Cubietruck's AXP209 PMU exposes
//! `axp20x-battery`, `axp20x-ac` and `axp20x-usb`). The root directory is an argument so the
//! tests run against a fake tree.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Power {
    /// Battery charge 0..=1; `None` without a battery (or with one marked not present).
    pub battery: Option<f64>,
    /// An AC/USB/mains supply reports `online = 1`.
    pub mains: bool,
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Reads every supply under `root`, in name order (the first battery present wins).
pub fn read_power(root: &Path) -> Power {
    let mut names: Vec<_> = std::fs::read_dir(root)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.sort();
    let mut p = Power {
        battery: None,
        mains: false,
    };
    for dir in names {
        match read(&dir, "type").as_deref() {
            Some("Battery") => {
                let present = read(&dir, "present").is_none_or(|v| v == "1");
                let capacity = read(&dir, "capacity").and_then(|v| v.parse::<f64>().ok());
                if p.battery.is_none() && present {
                    p.battery = capacity.map(|c| (c / 100.0).clamp(0.0, 1.0));
                }
            }
            Some("Mains" | "USB" | "USB_C" | "USB_PD" | "USB_DCP" | "USB_CDP") => {
                p.mains |= read(&dir, "online").as_deref() == Some("1");
            }
            _ => {}
        }
    }
    p
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, files: &[(&str, &str)]) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in files {
            std::fs::write(d.join(f), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn axp209_tree() {
        let t = tempfile::tempdir().unwrap();
        let charge: u32 = 20 + (std::process::id() % 70);
        supply(t.path(), "axp20x-ac", &[("type", "Mains"), ("online", "0")]);
        supply(t.path(), "axp20x-usb", &[("type", "USB"), ("online", "1")]);
        supply(
            t.path(),
            "axp20x-battery",
            &[
                ("type", "Battery"),
                ("present", "1"),
                ("capacity", &charge.to_string()),
            ],
        );
        let p = read_power(t.path());
        assert_eq!(p.battery, Some(f64::from(charge) / 100.0));
        assert!(p.mains);
    }

    #[test]
    fn absent_battery_and_missing_tree() {
        let t = tempfile::tempdir().unwrap();
        supply(
            t.path(),
            "axp20x-battery",
            &[("type", "Battery"), ("present", "0"), ("capacity", "0")],
        );
        assert_eq!(
            read_power(t.path()),
            Power {
                battery: None,
                mains: false
            }
        );
        let p = read_power(&t.path().join("nope"));
        assert_eq!(
            p,
            Power {
                battery: None,
                mains: false
            }
        );
    }
}
