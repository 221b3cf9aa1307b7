//! The adaptation layer (paper §II): physical things become readings.
//!
//! A driver is one file: its datasheet register map, its conversion, its tests against the
//! datasheet's bytes, and its [`DriverSpec`] (keys, defaults, ranges, units, Home Assistant
//! classes and quantities, how it runs). Registering it is one line in `drivers!` below; config
//! validation, polling ([`device`]), actuators and discovery read the spec.

pub mod device;
pub mod spec;
pub mod status;

// The pure parsers of outside input live in `betaas-core` (the fuzz crate uses them from there).
pub use betaas_core::things::{command, payload};

use spec::DriverSpec;

/// Declares each driver module and lists its specs in [`DRIVERS`].
macro_rules! drivers {
    ($($module:ident: $($spec:ident),+;)*) => {
        $(pub mod $module;)*

        /// The registered drivers: `driver = "<name>"` in the config names one of these.
        pub static DRIVERS: &[&DriverSpec] = &[$($(&$module::$spec,)+)*];
    };
}

// One line per driver file: `module: ITS_SPECS;`.
drivers! {
    tmp105: SPEC, LIMIT;
    bme280: SPEC;
    bh1750: SPEC;
    mcp3008: SPEC;
    gpio: IN, OUT;
    sysfs: SPEC;
    json: SPEC;
}

/// The registered driver named `name`.
pub fn find(name: &str) -> Option<&'static DriverSpec> {
    DRIVERS.iter().copied().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::spec::{Component, Kind, Run};
    use super::*;

    /// What config validation, polling and discovery rely on, for every registered driver.
    #[test]
    fn every_spec_is_consistent() {
        let known = ["device", "address", "channel", "line", "topic", "unit"];
        for (i, d) in DRIVERS.iter().enumerate() {
            assert!(
                DRIVERS[..i].iter().all(|e| e.name != d.name),
                "{} twice",
                d.name
            );
            assert!(d.requires.iter().all(|k| known.contains(k)), "{}", d.name);
            assert!(!d.quantities.is_empty(), "{} publishes nothing", d.name);
            if d.quantities.len() > 1 {
                assert!(
                    d.quantities.iter().all(|q| q.suffix.is_some()),
                    "{}",
                    d.name
                );
            }
            for k in d.keys {
                assert!(k.accepts(k.default), "{}: {} default", d.name, k.name);
            }
            assert_eq!(
                d.range.is_some(),
                d.component == Component::Number,
                "{}",
                d.name
            );
            assert_eq!(
                matches!(d.component, Component::Switch | Component::Number),
                d.kind() == Kind::Actuator,
                "{}",
                d.name
            );
            if matches!(d.run, Run::Watch) {
                assert_eq!(d.component, Component::BinarySensor, "{}", d.name);
            }
        }
        assert_eq!(find("tmp105-limit").map(|d| d.name), Some("tmp105-limit"));
        assert!(find("ds18b20").is_none());
    }
}
