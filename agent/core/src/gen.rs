//! Seeded scenario generator for large instances (10 to 10 000 gateways): a mix of gateway kinds
//! with a history of their own memory use, the usual templates, two remote clouds, and a stream
//! of arrivals and releases.
//! Same (gateways, requests, seed), same scenario, on every machine.

use crate::allocator::{splitmix64, Provider, Role, Template, Virt};
use crate::scenario::{ScGateway, ScRemote, ScRequest, Scenario};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0)
    }
    /// Uniform in 0..n (n > 0); the modulo bias is irrelevant at these sizes.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn template(name: &str, vcpus: u32, mem_mb: u64, disk_gb: u64, role: Role) -> Template {
    Template {
        name: name.into(),
        vcpus,
        mem_mb,
        disk_gb,
        role,
    }
}

/// The templates every generated scenario registers.
pub fn templates() -> Vec<Template> {
    vec![
        template("storage-node", 1, 512, 16, Role::Storage),
        template("compute-node", 2, 1024, 4, Role::Compute),
        template("app-light", 1, 128, 1, Role::AppLight),
        template("app-heavy", 2, 2048, 8, Role::AppHeavy),
        template("logical-gateway", 1, 256, 2, Role::Gateway),
    ]
}

pub fn generate(gateways: usize, requests: usize, seed: u64) -> Scenario {
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let gws: Vec<ScGateway> = (0..gateways)
        .map(|i| {
            // (cpus, mem, disk, virt, powerful, on battery): Cubietruck, x86 mini PC, Pi-like, old box.
            let (cpus, mem_mb, disk_gb, virt, powerful, battery) = match rng.below(10) {
                0..=4 => (2, 2048, 32, Virt::Kvm, false, rng.below(3) == 0),
                5..=6 => (4, 8192, 128, Virt::Kvm, true, false),
                7 => (4, 1024, 16, Virt::Lxc, false, false),
                8 => (2, 1024, 16, Virt::Qemu, false, false),
                _ => (1, 512, 8, Virt::None, false, false),
            };
            let trust = if rng.below(10) == 0 {
                0.2 + 0.3 * rng.unit()
            } else {
                0.6 + 0.4 * rng.unit()
            };
            // The host's own memory use over the last 12 samples: mostly steady, some growing
            // (a leaking service, a filling cache), some shrinking; ±2 % noise.
            let base = mem_mb as f64 * (0.1 + 0.15 * rng.unit());
            let slope = match rng.below(10) {
                0..=6 => 0.0,
                7 | 8 => mem_mb as f64 * 0.02,
                _ => -(mem_mb as f64) * 0.005,
            };
            let host_mem_used_mb = (0..12)
                .map(|k| {
                    let noise = mem_mb as f64 * 0.02 * (rng.unit() - 0.5);
                    (base + slope * f64::from(k) + noise).round().max(0.0)
                })
                .collect();
            ScGateway {
                id: format!("gw-{i:05}"),
                cpus,
                mem_mb,
                disk_gb,
                virt,
                trust: (trust * 100.0).round() / 100.0,
                battery: battery.then(|| (rng.unit() * 100.0).round() / 100.0),
                powerful,
                host_mem_used_mb,
                running: Vec::new(),
            }
        })
        .collect();
    let max_vms = (gateways as u32 / 5).max(2);
    let owner = |k: usize| {
        gws.get(k.min(gateways.saturating_sub(1)))
            .map_or(String::new(), |g| g.id.clone())
    };
    let remote = if gateways == 0 {
        Vec::new()
    } else {
        vec![
            ScRemote {
                name: "openstack-1".into(),
                provider: Provider::Openstack,
                max_vms,
                reachable: true,
                owner: owner(0),
                cost_per_vm: 1.0,
            },
            ScRemote {
                name: "opennebula-1".into(),
                provider: Provider::Opennebula,
                max_vms: max_vms / 2,
                reachable: rng.below(4) != 0,
                owner: owner(1),
                cost_per_vm: 0.5,
            },
        ]
    };
    let tpl = templates();
    let mut live: Vec<usize> = Vec::new();
    let mut reqs = Vec::with_capacity(requests);
    for i in 0..requests {
        // 70 % arrivals, 30 % releases of a VM still requested.
        if !live.is_empty() && rng.below(10) < 3 {
            let k = rng.below(live.len() as u64) as usize;
            reqs.push(ScRequest::Release {
                release: live.swap_remove(k),
            });
        } else {
            // Light apps and storage are the common case on IoT gateways.
            let t = match rng.below(20) {
                0..=5 => 2,
                6..=10 => 0,
                11..=14 => 1,
                15..=17 => 4,
                _ => 3,
            };
            reqs.push(ScRequest::Template {
                template: tpl[t].name.clone(),
            });
            live.push(i);
        }
    }
    Scenario {
        gateways: gws,
        templates: tpl,
        remote,
        requests: reqs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_scenarios_are_valid_and_seeded() {
        let a = generate(50, 400, 7);
        assert_eq!(a.check(), Ok(()));
        assert_eq!(a, generate(50, 400, 7));
        assert_ne!(a, generate(50, 400, 8));
        assert!(a
            .requests
            .iter()
            .any(|r| matches!(r, ScRequest::Release { .. })));
        assert_eq!(generate(0, 10, 1).check(), Ok(()));
    }
}
