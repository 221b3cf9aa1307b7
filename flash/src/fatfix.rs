//! A repair for one known flaw of `fatfs` 0.3.6 (the newest release on crates.io; the fix is only
//! in its unreleased 0.4): `create_dir` writes a long-name entry before each of the new
//! directory's `.` and `..` entries, so `.` is not in the first slot and `fsck.fat` reports the
//! directory as damaged. Right after `fatfs` makes a directory, this finds the cluster it took (the
//! one whose FAT entry went from free to used) and rewrites the first four slots as `.`, `..` and
//! two free slots. Nothing else here writes to the FAT volume; no crate exposes this, so it is
//! written here, reading only the boot sector's geometry and the first FAT.

use std::fs::File;
use std::os::unix::fs::FileExt;

const SLOT: usize = 32;
const LFN_ATTR: u8 = 0x0f;

/// Where things are on a FAT volume, from its boot sector.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    bytes_per_cluster: u64,
    fat_start: u64,
    fat_len: u64,
    data_start: u64,
    clusters: u32,
    bits: u32,
}

fn geometry(f: &File, base: u64) -> std::io::Result<Geometry> {
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, base)?;
    let u16le = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u32le = |o: usize| u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]));
    let bps = u16le(11);
    let spc = u64::from(b[13]);
    let reserved = u16le(14);
    let fats = u64::from(b[16]);
    let root_entries = u16le(17);
    let total = if u16le(19) != 0 { u16le(19) } else { u32le(32) };
    let fat_sectors = if u16le(22) != 0 { u16le(22) } else { u32le(36) };
    if bps == 0 || spc == 0 || fats == 0 {
        return Err(std::io::Error::other("not a FAT boot sector"));
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let data_sector = reserved + fats * fat_sectors + root_sectors;
    let clusters = (total.saturating_sub(data_sector) / spc) as u32;
    let bits = if clusters < 4085 {
        12
    } else if clusters < 65525 {
        16
    } else {
        32
    };
    Ok(Geometry {
        bytes_per_cluster: bps * spc,
        fat_start: base + reserved * bps,
        fat_len: fat_sectors * bps,
        data_start: base + data_sector * bps,
        clusters,
        bits,
    })
}

/// Which clusters (2..) are in use, from the first FAT.
pub struct Snapshot {
    used: Vec<bool>,
}

fn entries(g: &Geometry, fat: &[u8]) -> Vec<bool> {
    (0..g.clusters as usize + 2)
        .map(|c| {
            let v = match g.bits {
                12 => {
                    let o = c * 3 / 2;
                    let w = u16::from_le_bytes([fat[o], fat.get(o + 1).copied().unwrap_or(0)]);
                    u32::from(if c % 2 == 0 { w & 0xfff } else { w >> 4 })
                }
                16 => u32::from(u16::from_le_bytes([fat[2 * c], fat[2 * c + 1]])),
                _ => {
                    u32::from_le_bytes([fat[4 * c], fat[4 * c + 1], fat[4 * c + 2], fat[4 * c + 3]])
                        & 0x0fff_ffff
                }
            };
            v != 0
        })
        .collect()
}

/// The FAT volume at byte `base` of `f`, before a `create_dir`.
pub fn snapshot(f: &File, base: u64) -> std::io::Result<Snapshot> {
    let g = geometry(f, base)?;
    let mut fat = vec![0u8; g.fat_len as usize];
    f.read_exact_at(&mut fat, g.fat_start)?;
    Ok(Snapshot {
        used: entries(&g, &fat),
    })
}

/// After one `create_dir`: puts `.` and `..` in the new directory's first two slots. Returns
/// whether it had to (false when the directory already existed or was written correctly).
pub fn fix_new_dir(f: &File, base: u64, before: &Snapshot) -> std::io::Result<bool> {
    let g = geometry(f, base)?;
    let mut fat = vec![0u8; g.fat_len as usize];
    f.read_exact_at(&mut fat, g.fat_start)?;
    let now = entries(&g, &fat);
    let new: Vec<usize> = (2..now.len())
        .filter(|&c| now[c] && !before.used.get(c).copied().unwrap_or(false))
        .collect();
    let [cluster] = new[..] else {
        return Ok(false);
    };
    let at = g.data_start + (cluster as u64 - 2) * g.bytes_per_cluster;
    let mut s = [0u8; 4 * SLOT];
    f.read_exact_at(&mut s, at)?;
    let name = |i: usize| &s[i * SLOT..i * SLOT + 11];
    let flawed = s[11] == LFN_ATTR
        && name(1) == b".          "
        && s[2 * SLOT + 11] == LFN_ATTR
        && name(3) == b"..         ";
    if !flawed {
        return Ok(false);
    }
    let mut fixed = [0u8; 4 * SLOT];
    fixed[..SLOT].copy_from_slice(&s[SLOT..2 * SLOT]);
    fixed[SLOT..2 * SLOT].copy_from_slice(&s[3 * SLOT..4 * SLOT]);
    f.write_all_at(&fixed, at)?;
    Ok(true)
}
