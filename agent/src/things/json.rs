//! A JSON payload from an MQTT device: the agent's MQTT things subscribe to `topic` and take the
//! value at `field` (`betaas_core::things::payload`); the unit comes from the config.

use super::spec::{Bus, Component, DriverSpec, Quantity, Run};

pub const SPEC: DriverSpec = DriverSpec {
    name: "json",
    bus: Bus::Mqtt,
    requires: &["topic", "unit"],
    keys: &[],
    quantities: &[Quantity::own("", None)],
    component: Component::Sensor,
    range: None,
    run: Run::Mqtt,
};
