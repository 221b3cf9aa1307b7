//! A number read from a file, e.g. `/sys/class/thermal/thermal_zone0/temp` (the SoC's own sensor):
//! the unit comes from the config.

use std::path::PathBuf;

use super::spec::{Bus, Component, DriverSpec, Opening, Quantity, Run, Sensor};

pub const SPEC: DriverSpec = DriverSpec {
    name: "sysfs",
    bus: Bus::Sysfs,
    requires: &["device", "unit"],
    keys: &[],
    quantities: &[Quantity::own("", None)],
    component: Component::Sensor,
    range: None,
    run: Run::Poll(open),
};

struct File(PathBuf);

fn open(o: &Opening) -> Result<Box<dyn Sensor>, String> {
    Ok(Box::new(File(o.device.clone())))
}

impl Sensor for File {
    fn read(&mut self) -> Result<Vec<f64>, String> {
        let path = &self.0;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let raw: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("{}: {:?} is not a number", path.display(), text.trim()))?;
        Ok(vec![raw])
    }
}
