//! The command line: `write`, `provision`, `verify`, `batch`, `bmap create`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use betaas_flash::bmap::{self, Map};
use betaas_flash::target::{self, System, Target};
use betaas_flash::{batch, copy, disk, human, provision, Error};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "betaas-flash",
    about = "Writes a BETaaS gateway image to an SD card (only the mapped blocks, read back and \
             compared), and provisions the gateway's config and keys on its boot partition"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the image to a card (or a file), verify it, then provision it.
    Write {
        #[command(flatten)]
        image: ImageArgs,
        /// A whole block device (/dev/sdX, /dev/mmcblkN) or a plain file (created or grown).
        #[arg(long)]
        target: PathBuf,
        #[command(flatten)]
        prov: ProvisionArgs,
        #[command(flatten)]
        safety: Safety,
        /// Do not read back what was written.
        #[arg(long)]
        no_verify: bool,
    },
    /// Put agent.toml and a directory's files into betaas/ on a card's boot partition.
    Provision {
        #[arg(long)]
        target: PathBuf,
        #[command(flatten)]
        prov: ProvisionArgs,
    },
    /// Compare a card with the image, range by range; exit 0 if equal, 1 if not.
    Verify {
        #[command(flatten)]
        image: ImageArgs,
        #[arg(long)]
        target: PathBuf,
        /// Do not compare the boot partition (p1), which provisioning changes.
        #[arg(long)]
        except_boot: bool,
    },
    /// One image per gateway of a CSV file (header: config keys, gateway_id required).
    Batch {
        #[command(flatten)]
        image: ImageArgs,
        #[arg(long)]
        csv: PathBuf,
        /// The config every row starts from.
        #[arg(long)]
        base_config: PathBuf,
        /// Where DIR/<gateway_id>.img and DIR/report.json go.
        #[arg(long)]
        out: PathBuf,
        /// The instance's private key: each gateway gets its own key and credential.
        #[arg(long)]
        instance_key: Option<PathBuf>,
        /// Files every gateway gets in betaas/ (mosquitto.conf, ...).
        #[arg(long = "provision")]
        provision_dir: Option<PathBuf>,
        /// Cards to write instead of image files, one per good row, in order (comma-separated).
        #[arg(long, value_delimiter = ',')]
        targets: Vec<PathBuf>,
        #[command(flatten)]
        safety: Safety,
        #[arg(long)]
        no_verify: bool,
    },
    /// Block maps.
    Bmap {
        #[command(subcommand)]
        cmd: BmapCmd,
    },
}

#[derive(Subcommand)]
enum BmapCmd {
    /// Write IMAGE.bmap (bmaptool's format) for the blocks of the image that hold data.
    Create {
        #[arg(long)]
        image: PathBuf,
        /// FILE@OFFSET: the image's bytes from OFFSET were copied from FILE; its extents give
        /// their map (e.g. boot.vfat@1MiB). Elsewhere the image's own extents count.
        #[arg(long = "from")]
        from: Vec<bmap::Source>,
        /// Default: IMAGE.bmap.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ImageArgs {
    /// The card image (out/<board>/sdcard.img).
    #[arg(long)]
    image: PathBuf,
    /// Its block map; default IMAGE.bmap when that exists.
    #[arg(long, conflicts_with = "no_bmap")]
    bmap: Option<PathBuf>,
    /// Write every byte of the image, mapped or not (like dd).
    #[arg(long)]
    no_bmap: bool,
}

#[derive(Args)]
struct ProvisionArgs {
    /// The gateway's agent.toml (checked with the agent's parser first) → betaas/agent.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A directory whose files go to betaas/ (instance/ keys, mosquitto.conf, ...).
    #[arg(long = "provision")]
    dir: Option<PathBuf>,
}

#[derive(Args)]
struct Safety {
    /// Overwrite a device without asking.
    #[arg(long)]
    yes: bool,
    /// Allow a non-removable disk, or one over 128 GiB (never one in use or too small).
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("betaas-flash: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bar(what: &str) -> ProgressBar {
    let b = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:8} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_owned());
    b
}

fn rate(bytes: u64, t: Duration) -> String {
    format!(
        "{}/s",
        human((bytes as f64 / t.as_secs_f64().max(1e-6)) as u64)
    )
}

fn load_map(a: &ImageArgs) -> Result<Map, Error> {
    let size = std::fs::metadata(&a.image)
        .map_err(|e| Error::io(&a.image, e))?
        .len();
    if a.no_bmap {
        return Ok(Map::full(size));
    }
    let default = PathBuf::from(format!("{}.bmap", a.image.display()));
    let path = match &a.bmap {
        Some(p) => p.clone(),
        None if default.exists() => default,
        None => {
            eprintln!("note: no {}: writing the whole image", default.display());
            return Ok(Map::full(size));
        }
    };
    let mut m = Map::load(&path, size)?;
    m.source = path.display().to_string();
    Ok(m)
}

/// Asks on the terminal; without one, only `--yes` lets a device be written.
fn confirm(t: &Target, yes: bool) -> bool {
    if yes {
        return true;
    }
    if !std::io::stdin().is_terminal() {
        eprintln!(
            "betaas-flash: {} would be overwritten: no terminal to ask on, pass --yes",
            t.describe()
        );
        return false;
    }
    eprint!(
        "Overwrite {}? Everything on it is lost. Type yes: ",
        t.describe()
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim() == "yes"
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.cmd {
        Cmd::Write {
            image,
            target,
            prov,
            safety,
            no_verify,
        } => {
            let map = load_map(&image)?;
            // Everything that can be refused is refused before the first byte is written.
            let items = provision::collect(prov.config.as_deref(), prov.dir.as_deref())?;
            let t = target::inspect(
                &target,
                &image.image,
                map.image_size,
                safety.force,
                &System::live(),
            )?;
            if t.is_device() && !confirm(&t, safety.yes) {
                return Err(Error::Usage("not confirmed: nothing written".into()));
            }
            let out = copy::open_output(&t, map.image_size, items.iter().any(|i| i.private))?;
            eprintln!(
                "writing {} of {} ({}) to {}",
                human(map.mapped_bytes()),
                image.image.display(),
                map.source,
                t.describe()
            );
            let b = bar("write");
            let w = copy::write(&image.image, &map, &out, &b)?;
            b.finish_and_clear();
            drop(out);
            eprintln!(
                "wrote {} in {} ranges in {:.1} s ({})",
                human(w.bytes),
                map.ranges.len(),
                w.elapsed.as_secs_f64(),
                rate(w.bytes, w.elapsed)
            );
            if !no_verify {
                let b = bar("verify");
                let t = copy::verify(&image.image, &map, Some(&w.sums), &target, None, &b)?;
                b.finish_and_clear();
                eprintln!(
                    "verified: all {} ranges read back equal ({:.1} s)",
                    map.ranges.len(),
                    t.as_secs_f64()
                );
            }
            if !items.is_empty() {
                let done = provision::provision(&target, &items)?;
                eprintln!("provisioned on the boot partition: {}", done.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Provision { target, prov } => {
            if prov.config.is_none() && prov.dir.is_none() {
                return Err(Error::Usage(
                    "nothing to provision: give --config and/or --provision".into(),
                ));
            }
            let items = provision::collect(prov.config.as_deref(), prov.dir.as_deref())?;
            let done = provision::provision(&target, &items)?;
            eprintln!("provisioned on the boot partition: {}", done.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            image,
            target,
            except_boot,
        } => {
            let map = load_map(&image)?;
            let skip = if except_boot {
                let mut f =
                    std::fs::File::open(&image.image).map_err(|e| Error::io(&image.image, e))?;
                let p = disk::boot_partition(&mut f)
                    .map_err(|m| Error::Bmap(image.image.clone(), m))?;
                Some((p.offset, p.offset + p.len))
            } else {
                None
            };
            let b = bar("verify");
            match copy::verify(&image.image, &map, None, &target, skip, &b) {
                Ok(t) => {
                    b.finish_and_clear();
                    eprintln!(
                        "equal: {} ranges, {} ({:.1} s)",
                        map.ranges.len(),
                        human(map.mapped_bytes()),
                        t.as_secs_f64()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ Error::Verify { .. }) => {
                    b.finish_and_clear();
                    eprintln!("betaas-flash: {e}");
                    if let Error::Verify { ranges, .. } = &e {
                        if !except_boot && ranges.iter().all(|r| r.contains(", p1)")) {
                            eprintln!("(all of them in p1, the boot partition, which provisioning changes: --except-boot compares the rest)");
                        }
                    }
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e),
            }
        }
        Cmd::Batch {
            image,
            csv,
            base_config,
            out,
            instance_key,
            provision_dir,
            targets,
            safety,
            no_verify,
        } => {
            let map = load_map(&image)?;
            let yes = safety.yes;
            let mut ask = |t: &Target| confirm(t, yes);
            let reports = batch::run(batch::Options {
                image: image.image.clone(),
                map,
                csv,
                base_config,
                out: out.clone(),
                instance_key,
                provision_dir,
                targets,
                verify: !no_verify,
                force: safety.force,
                confirm: &mut ask,
                bar: &|| bar("write"),
            })?;
            let bad = reports.iter().filter(|r| r.error.is_some()).count();
            eprintln!(
                "{} of {} gateways done, {bad} failed: {}",
                reports.len() - bad,
                reports.len(),
                out.join("report.json").display()
            );
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Bmap {
            cmd:
                BmapCmd::Create {
                    image,
                    from,
                    output,
                },
        } => {
            let runs = bmap::mapped_blocks(&image, &from)?;
            let xml = bmap::create(&image, &runs)?;
            let out = output.unwrap_or_else(|| PathBuf::from(format!("{}.bmap", image.display())));
            std::fs::write(&out, xml).map_err(|e| Error::io(&out, e))?;
            let mapped: u64 = runs.iter().map(|(a, b)| b - a + 1).sum();
            let size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "{}: {} of {} mapped in {} ranges",
                out.display(),
                human(mapped * bmap::BLOCK_SIZE),
                human(size),
                runs.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
