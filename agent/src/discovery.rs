//! Home Assistant MQTT discovery (issue #3 item 5): one retained config message per thing on
//! `homeassistant/<component>/<gateway>_<thing>/config`, so a stock Home Assistant shows every
//! sensor and actuator with its device class and unit, grouped under one device per gateway.
//!
//! Pure: ids in, `(topic, payload)` out; the MQTT loop publishes them retained (QoS 1) after each
//! connect, and publishes [`removal_message`] (an empty retained payload) for a thing that is no
//! longer configured. Payloads are built with `serde_json::json!`, never by concatenation.
//!
//! Topics the payloads point at (the agent's layout, README "Topics"):
//! - state: `<prefix>/<gateway>/things/<thing>/state`, JSON with the reading in `value`;
//! - availability: `<prefix>/<gateway>/availability` (the last will) and
//!   `<prefix>/<gateway>/things/<thing>/availability`, `online` / `offline`; an entity is
//!   available only when both say `online` (`availability_mode: all`);
//! - commands: `<prefix>/<gateway>/things/<thing>/set`, `{"id":"<timestamp>","value":<value>}`
//!   (see `things::command`); the timestamp id lets the agent drop redeliveries.
//!
//! Field names: Home Assistant's MQTT integration docs (sensor, binary_sensor, switch, number,
//! "Discovery messages"). `object_id` is kept next to its 2025.10 replacement
//! `default_entity_id` (`<component>.<object_id>`): discovery drops keys it does not know, so
//! older and newer versions both get a stable entity id.

use serde_json::{json, Map, Value};

use crate::config::ids::TopicLevel;
use crate::config::thing::Thing;

/// Home Assistant's default discovery prefix.
pub const DISCOVERY_PREFIX: &str = "homeassistant";
pub const MANUFACTURER: &str = "BETaaS";

pub use crate::things::spec::{Component, NumberRange};

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Sensor,
        Component::BinarySensor,
        Component::Switch,
        Component::Number,
    ];

    /// The name in the discovery topic and in entity ids.
    pub fn name(self) -> &'static str {
        match self {
            Component::Sensor => "sensor",
            Component::BinarySensor => "binary_sensor",
            Component::Switch => "switch",
            Component::Number => "number",
        }
    }

    /// Device classes Home Assistant accepts for this platform (an unknown one makes it reject
    /// the whole config, so the entity would silently not appear).
    pub fn device_classes(self) -> &'static [&'static str] {
        match self {
            // Numeric sensor classes (not date/enum/timestamp: these readings are numbers).
            Component::Sensor | Component::Number => NUMERIC_CLASSES,
            Component::BinarySensor => BINARY_CLASSES,
            Component::Switch => &["outlet", "switch"],
        }
    }
}

const NUMERIC_CLASSES: &[&str] = &[
    "apparent_power",
    "aqi",
    "area",
    "atmospheric_pressure",
    "battery",
    "blood_glucose_concentration",
    "carbon_dioxide",
    "carbon_monoxide",
    "conductivity",
    "current",
    "data_rate",
    "data_size",
    "distance",
    "duration",
    "energy",
    "energy_distance",
    "energy_storage",
    "frequency",
    "gas",
    "humidity",
    "illuminance",
    "irradiance",
    "moisture",
    "monetary",
    "nitrogen_dioxide",
    "nitrogen_monoxide",
    "nitrous_oxide",
    "ozone",
    "ph",
    "pm1",
    "pm10",
    "pm25",
    "power",
    "power_factor",
    "precipitation",
    "precipitation_intensity",
    "pressure",
    "reactive_power",
    "signal_strength",
    "sound_pressure",
    "speed",
    "sulphur_dioxide",
    "temperature",
    "volatile_organic_compounds",
    "volatile_organic_compounds_parts",
    "voltage",
    "volume",
    "volume_flow_rate",
    "volume_storage",
    "water",
    "weight",
    "wind_direction",
    "wind_speed",
];

const BINARY_CLASSES: &[&str] = &[
    "battery",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "heat",
    "light",
    "lock",
    "moisture",
    "motion",
    "moving",
    "occupancy",
    "opening",
    "plug",
    "power",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "update",
    "vibration",
    "window",
];

/// The gateway, shown in Home Assistant as one device holding all its things.
#[derive(Debug, Clone, Copy)]
pub struct Gateway<'a> {
    pub id: &'a str,
    /// The agent's topic prefix (`betaas`).
    pub prefix: &'a str,
    /// The board, e.g. `Cubietruck`.
    pub model: &'a str,
    /// The agent's version.
    pub sw_version: &'a str,
}

/// What discovery needs to know about one thing.
#[derive(Debug, Clone, Copy)]
pub struct ThingInfo<'a> {
    pub id: &'a str,
    /// Entity name shown in Home Assistant; the id when None.
    pub name: Option<&'a str>,
    pub component: Component,
    pub device_class: Option<&'a str>,
    /// Sensor and number only (binary sensors and switches have no unit).
    pub unit: Option<&'a str>,
    /// Number only.
    pub range: Option<NumberRange>,
}

/// An id usable as an MQTT topic level and as Home Assistant's `object_id`
/// (`[A-Za-z0-9_-]+`, the discovery topic pattern).
fn check_id(what: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {id:?}: Home Assistant discovery accepts only A-Z a-z 0-9 - _"
        ))
    }
}

/// Checks what [`config_message`] needs; the error names the thing, the field and what is
/// accepted. Call at config time.
pub fn check(gw: &Gateway, thing: &ThingInfo) -> Result<(), String> {
    check_id("gateway id", gw.id)?;
    check_id("thing id", thing.id)?;
    if gw.prefix.is_empty() || gw.prefix.contains(['+', '#', '\0']) {
        return Err(format!(
            "topic prefix {:?}: must be non-empty without + # or NUL",
            gw.prefix
        ));
    }
    let t = thing.id;
    let component = thing.component.name();
    if let Some(class) = thing.device_class {
        let accepted = thing.component.device_classes();
        if !accepted.contains(&class) {
            return Err(format!(
                "thing {t}: device_class {class:?} is not one Home Assistant accepts for a {component}: accepted are {}",
                accepted.join(", ")
            ));
        }
    }
    if thing.unit.is_some()
        && matches!(thing.component, Component::BinarySensor | Component::Switch)
    {
        return Err(format!("thing {t}: a {component} has no unit"));
    }
    match (thing.component, thing.range) {
        (Component::Number, Some(r)) => {
            if !(r.min.is_finite() && r.max.is_finite() && r.min < r.max) {
                return Err(format!(
                    "thing {t}: min {} must be below max {}, both finite",
                    r.min, r.max
                ));
            }
            if !(r.step.is_finite() && r.step > 0.0) {
                return Err(format!("thing {t}: step {} must be above 0", r.step));
            }
        }
        (Component::Number, None) => {}
        (_, Some(_)) => {
            return Err(format!(
                "thing {t}: min/max/step apply to a number, not a {component}"
            ))
        }
        (_, None) => {}
    }
    Ok(())
}

/// `homeassistant/<component>/<gateway>_<thing>/config`.
pub fn config_topic(gateway: &str, component: Component, thing: &str) -> String {
    format!(
        "{DISCOVERY_PREFIX}/{}/{}/config",
        component.name(),
        object_id(gateway, thing)
    )
}

fn object_id(gateway: &str, thing: &str) -> String {
    format!("{gateway}_{thing}")
}

/// The command template for switch and number: Home Assistant renders `value` (the switch's
/// `payload_on`/`payload_off`, or the number) into the agent's command JSON, with the current
/// time as the command id.
pub const COMMAND_TEMPLATE: &str = r#"{"id":"{{ now().timestamp() }}","value":{{ value }}}"#;
/// The reading's value as the entity state.
pub const VALUE_TEMPLATE: &str = "{{ value_json.value }}";
/// Switch state: `true` for a true, 1, "on" or "true" value, else `false`; compared with
/// `state_on` / `state_off`.
pub const SWITCH_STATE_TEMPLATE: &str =
    "{{ 'true' if value_json.value in [true, 1, 'on', 'ON', 'true'] else 'false' }}";
/// Binary sensor state: `ON` for a true, 1, "on" or "true" value, else `OFF`.
pub const BINARY_STATE_TEMPLATE: &str =
    "{{ 'ON' if value_json.value in [true, 1, 'on', 'ON', 'true'] else 'OFF' }}";

/// The discovery config payload of one thing (after [`check`]).
pub fn config_payload(gw: &Gateway, thing: &ThingInfo) -> Result<Value, String> {
    check(gw, thing)?;
    let base = format!("{}/{}", gw.prefix, gw.id);
    let thing_base = format!("{base}/things/{}", thing.id);
    let object_id = object_id(gw.id, thing.id);
    let component = thing.component.name();
    let mut p = json!({
        "name": thing.name.unwrap_or(thing.id),
        "unique_id": object_id,
        "object_id": object_id,
        "default_entity_id": format!("{component}.{object_id}"),
        "state_topic": format!("{thing_base}/state"),
        "availability": [
            {"topic": format!("{base}/availability"),
             "payload_available": "online", "payload_not_available": "offline"},
            {"topic": format!("{thing_base}/availability"),
             "payload_available": "online", "payload_not_available": "offline"},
        ],
        "availability_mode": "all",
        "device": {
            "identifiers": [format!("betaas-{}", gw.id)],
            "name": format!("BETaaS {}", gw.id),
            "manufacturer": MANUFACTURER,
            "model": gw.model,
            "sw_version": gw.sw_version,
        },
        "origin": {"name": "betaas-agent", "sw_version": gw.sw_version},
    });
    let extra: Value = match thing.component {
        Component::Sensor => json!({
            "value_template": VALUE_TEMPLATE,
            "state_class": "measurement",
        }),
        Component::BinarySensor => json!({
            "value_template": BINARY_STATE_TEMPLATE,
            "payload_on": "ON",
            "payload_off": "OFF",
        }),
        Component::Switch => json!({
            "command_topic": format!("{thing_base}/set"),
            "command_template": COMMAND_TEMPLATE,
            "payload_on": "true",
            "payload_off": "false",
            "state_value_template": SWITCH_STATE_TEMPLATE,
            "state_on": "true",
            "state_off": "false",
        }),
        Component::Number => {
            let mut n = json!({
                "command_topic": format!("{thing_base}/set"),
                "command_template": COMMAND_TEMPLATE,
                "value_template": VALUE_TEMPLATE,
            });
            if let (Some(r), Some(obj)) = (thing.range, n.as_object_mut()) {
                obj.insert("min".into(), json!(r.min));
                obj.insert("max".into(), json!(r.max));
                obj.insert("step".into(), json!(r.step));
            }
            n
        }
    };
    let mut optional = Map::new();
    if let Some(unit) = thing.unit {
        optional.insert("unit_of_measurement".into(), json!(unit));
    }
    if let Some(class) = thing.device_class {
        optional.insert("device_class".into(), json!(class));
    }
    if let (Some(obj), Value::Object(extra)) = (p.as_object_mut(), extra) {
        obj.extend(extra);
        obj.extend(optional);
    }
    Ok(p)
}

/// `(topic, payload)` to publish retained for one thing.
pub fn config_message(gw: &Gateway, thing: &ThingInfo) -> Result<(String, String), String> {
    let payload = config_payload(gw, thing)?;
    Ok((
        config_topic(gw.id, thing.component, thing.id),
        payload.to_string(),
    ))
}

/// `(topic, "")` to publish retained for a thing that is no longer configured: Home Assistant
/// removes the entity and the broker drops the retained config. When the thing's old component
/// is unknown, publish one for each of [`Component::ALL`] (removing a config that does not
/// exist is harmless).
pub fn removal_message(gateway: &str, component: Component, thing: &str) -> (String, String) {
    (config_topic(gateway, component, thing), String::new())
}

/// One discovery entity: published id, component, device class, unit, number range.
pub type Entity = (
    String,
    Component,
    Option<String>,
    Option<String>,
    Option<NumberRange>,
);

/// The discovery entities of one configured thing, from its driver's spec: one per published
/// quantity (a BME280 is three sensors), as the driver's component (a GPIO input a binary sensor,
/// a GPIO output a switch, a TMP105 limit a number with the driver's range).
pub fn entities(thing: &Thing) -> Vec<Entity> {
    let info = thing.driver.info();
    let ids = thing.published_ids();
    let single = info.quantities.len() == 1;
    ids.into_iter()
        .zip(info.quantities)
        .map(|(id, q)| {
            // A single quantity takes the config's device class and unit over the driver's.
            let (class, unit) = if single {
                (
                    thing
                        .device_class
                        .clone()
                        .or(q.device_class.map(str::to_owned)),
                    Some(thing.unit()),
                )
            } else {
                (q.device_class.map(str::to_owned), Some(q.unit.to_owned()))
            };
            let unit = match info.component {
                Component::BinarySensor | Component::Switch => None,
                Component::Sensor | Component::Number => unit.filter(|u| !u.is_empty()),
            };
            (id, info.component, class, unit, info.range)
        })
        .collect()
}

/// Every retained discovery message of a configuration's things, or the first thing that cannot
/// be discovered (e.g. a device class Home Assistant does not know), by index. Takes the config's
/// parts, not the config: the config's own check calls this.
pub fn messages(
    gateway: &TopicLevel,
    prefix: &TopicLevel,
    things: &[Thing],
) -> Result<Vec<(String, String)>, (usize, String)> {
    let gw_id = gateway.to_string();
    let prefix = prefix.to_string();
    let gw = Gateway {
        id: &gw_id,
        prefix: &prefix,
        model: "BETaaS gateway",
        sw_version: env!("CARGO_PKG_VERSION"),
    };
    let mut out = Vec::new();
    for (i, thing) in things.iter().enumerate() {
        for (id, component, class, unit, range) in entities(thing) {
            let info = ThingInfo {
                id: &id,
                name: None,
                component,
                device_class: class.as_deref(),
                unit: unit.as_deref(),
                range,
            };
            out.push(config_message(&gw, &info).map_err(|e| (i, e))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    const GW: Gateway = Gateway {
        id: "gw-1",
        prefix: "betaas",
        model: "Cubietruck",
        sw_version: "0.1.0",
    };

    fn thing(id: &str, component: Component) -> ThingInfo<'_> {
        ThingInfo {
            id,
            name: None,
            component,
            device_class: None,
            unit: None,
            range: None,
        }
    }

    /// The fields every component carries.
    fn common(component: &str, id: &str) -> Value {
        json!({
            "name": id,
            "unique_id": format!("gw-1_{id}"),
            "object_id": format!("gw-1_{id}"),
            "default_entity_id": format!("{component}.gw-1_{id}"),
            "state_topic": format!("betaas/gw-1/things/{id}/state"),
            "availability": [
                {"topic": "betaas/gw-1/availability",
                 "payload_available": "online", "payload_not_available": "offline"},
                {"topic": format!("betaas/gw-1/things/{id}/availability"),
                 "payload_available": "online", "payload_not_available": "offline"},
            ],
            "availability_mode": "all",
            "device": {
                "identifiers": ["betaas-gw-1"],
                "name": "BETaaS gw-1",
                "manufacturer": "BETaaS",
                "model": "Cubietruck",
                "sw_version": "0.1.0",
            },
            "origin": {"name": "betaas-agent", "sw_version": "0.1.0"},
        })
    }

    fn with(mut base: Value, extra: Value) -> Value {
        if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
            b.extend(e);
        }
        base
    }

    #[test]
    fn sensor() {
        let t = ThingInfo {
            device_class: Some("temperature"),
            unit: Some("°C"),
            ..thing("temp0", Component::Sensor)
        };
        let (topic, payload) = config_message(&GW, &t).unwrap();
        assert_eq!(topic, "homeassistant/sensor/gw-1_temp0/config");
        let expect = with(
            common("sensor", "temp0"),
            json!({
                "value_template": "{{ value_json.value }}",
                "state_class": "measurement",
                "unit_of_measurement": "°C",
                "device_class": "temperature",
            }),
        );
        assert_eq!(serde_json::from_str::<Value>(&payload).unwrap(), expect);
    }

    #[test]
    fn sensor_without_class_or_unit_leaves_them_out() {
        let p = config_payload(&GW, &thing("raw", Component::Sensor)).unwrap();
        assert_eq!(p.get("device_class"), None);
        assert_eq!(p.get("unit_of_measurement"), None);
        assert_eq!(p["state_class"], "measurement");
    }

    #[test]
    fn binary_sensor() {
        let t = ThingInfo {
            device_class: Some("door"),
            name: Some("Front door"),
            ..thing("door0", Component::BinarySensor)
        };
        let (topic, payload) = config_message(&GW, &t).unwrap();
        assert_eq!(topic, "homeassistant/binary_sensor/gw-1_door0/config");
        let mut expect = with(
            common("binary_sensor", "door0"),
            json!({
                "value_template":
                    "{{ 'ON' if value_json.value in [true, 1, 'on', 'ON', 'true'] else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "door",
            }),
        );
        expect["name"] = json!("Front door");
        assert_eq!(serde_json::from_str::<Value>(&payload).unwrap(), expect);
    }

    #[test]
    fn switch() {
        let (topic, payload) = config_message(&GW, &thing("relay0", Component::Switch)).unwrap();
        assert_eq!(topic, "homeassistant/switch/gw-1_relay0/config");
        let expect = with(
            common("switch", "relay0"),
            json!({
                "command_topic": "betaas/gw-1/things/relay0/set",
                "command_template": r#"{"id":"{{ now().timestamp() }}","value":{{ value }}}"#,
                "payload_on": "true",
                "payload_off": "false",
                "state_value_template":
                    "{{ 'true' if value_json.value in [true, 1, 'on', 'ON', 'true'] else 'false' }}",
                "state_on": "true",
                "state_off": "false",
            }),
        );
        assert_eq!(serde_json::from_str::<Value>(&payload).unwrap(), expect);
    }

    #[test]
    fn number() {
        let t = ThingInfo {
            device_class: Some("temperature"),
            unit: Some("°C"),
            range: Some(NumberRange {
                min: -55.0,
                max: 125.0,
                step: 0.5,
            }),
            ..thing("limit0", Component::Number)
        };
        let (topic, payload) = config_message(&GW, &t).unwrap();
        assert_eq!(topic, "homeassistant/number/gw-1_limit0/config");
        let expect = with(
            common("number", "limit0"),
            json!({
                "command_topic": "betaas/gw-1/things/limit0/set",
                "command_template": r#"{"id":"{{ now().timestamp() }}","value":{{ value }}}"#,
                "value_template": "{{ value_json.value }}",
                "min": -55.0,
                "max": 125.0,
                "step": 0.5,
                "unit_of_measurement": "°C",
                "device_class": "temperature",
            }),
        );
        assert_eq!(serde_json::from_str::<Value>(&payload).unwrap(), expect);
        // Without a range Home Assistant's defaults apply: no keys.
        let p = config_payload(&GW, &thing("n", Component::Number)).unwrap();
        assert_eq!(
            (p.get("min"), p.get("max"), p.get("step")),
            (None, None, None)
        );
    }

    /// Rendering the command template as Home Assistant would (value substituted, timestamp
    /// fixed) gives a command the agent's parser accepts, with the intended value.
    #[test]
    fn command_template_renders_to_a_valid_command() {
        use crate::things::command::{parse, CommandValue};
        let render = |value: &str| {
            COMMAND_TEMPLATE
                .replace("{{ now().timestamp() }}", "1764083000.123456")
                .replace("{{ value }}", value)
        };
        let on = parse(render("true").as_bytes()).unwrap();
        assert_eq!(on.id.as_deref(), Some("1764083000.123456"));
        assert_eq!(on.value, CommandValue::Bool(true));
        assert_eq!(
            parse(render("false").as_bytes()).unwrap().value,
            CommandValue::Bool(false)
        );
        assert_eq!(
            parse(render("21.5").as_bytes()).unwrap().value,
            CommandValue::Number(21.5)
        );
    }

    #[test]
    fn payload_strings_are_escaped_not_concatenated() {
        let gw = Gateway {
            model: "Board \"X\"\n{}",
            ..GW
        };
        let t = ThingInfo {
            name: Some("Living room \"north\" \\ wall"),
            ..thing("t", Component::Sensor)
        };
        let (_, payload) = config_message(&gw, &t).unwrap();
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["name"], "Living room \"north\" \\ wall");
        assert_eq!(v["device"]["model"], "Board \"X\"\n{}");
    }

    #[test]
    fn removal_is_an_empty_payload_on_the_same_topic() {
        for c in Component::ALL {
            let (topic, payload) = removal_message("gw-1", c, "t0");
            assert_eq!(topic, config_topic("gw-1", c, "t0"));
            assert_eq!(topic, format!("homeassistant/{}/gw-1_t0/config", c.name()));
            assert!(payload.is_empty());
        }
    }

    #[test]
    fn checks_name_the_problem() {
        let bad = [
            (GW, thing("a/b", Component::Sensor), "thing id \"a/b\""),
            (GW, thing("", Component::Sensor), "thing id \"\""),
            (Gateway { id: "gw 1", ..GW }, thing("t", Component::Sensor), "gateway id"),
            (Gateway { prefix: "a/+", ..GW }, thing("t", Component::Sensor), "prefix"),
            (
                GW,
                ThingInfo {
                    device_class: Some("temprature"),
                    ..thing("t", Component::Sensor)
                },
                "device_class \"temprature\" is not one Home Assistant accepts for a sensor: accepted are apparent_power",
            ),
            (
                GW,
                ThingInfo {
                    device_class: Some("temperature"),
                    ..thing("t", Component::BinarySensor)
                },
                "for a binary_sensor",
            ),
            (
                GW,
                ThingInfo {
                    unit: Some("%"),
                    ..thing("t", Component::Switch)
                },
                "a switch has no unit",
            ),
            (
                GW,
                ThingInfo {
                    range: Some(NumberRange { min: 1.0, max: 1.0, step: 1.0 }),
                    ..thing("t", Component::Number)
                },
                "min 1 must be below max 1",
            ),
            (
                GW,
                ThingInfo {
                    range: Some(NumberRange { min: 0.0, max: 1.0, step: 0.0 }),
                    ..thing("t", Component::Number)
                },
                "step 0",
            ),
            (
                GW,
                ThingInfo {
                    range: Some(NumberRange { min: 0.0, max: f64::INFINITY, step: 1.0 }),
                    ..thing("t", Component::Number)
                },
                "both finite",
            ),
            (
                GW,
                ThingInfo {
                    range: Some(NumberRange { min: 0.0, max: 1.0, step: 1.0 }),
                    ..thing("t", Component::Sensor)
                },
                "not a sensor",
            ),
        ];
        for (gw, t, expect) in bad {
            let e = config_message(&gw, &t).unwrap_err();
            assert!(e.contains(expect), "{t:?}: {e}");
        }
        for (c, class) in [
            (Component::Sensor, "humidity"),
            (Component::Sensor, "pressure"),
            (Component::Sensor, "illuminance"),
            (Component::Sensor, "voltage"),
            (Component::BinarySensor, "motion"),
            (Component::Switch, "outlet"),
        ] {
            let t = ThingInfo {
                device_class: Some(class),
                ..thing("t", c)
            };
            assert_eq!(check(&GW, &t), Ok(()), "{c:?} {class}");
        }
    }
}
