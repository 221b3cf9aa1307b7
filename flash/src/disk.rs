//! The card's partition table (MBR, as `image/build.sh` writes it with sfdisk): where the FAT boot
//! partition is, and which partition a byte belongs to (for error messages).

use std::io::{Read, Seek};

/// A primary partition: number (1..=4), byte offset and length, type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub number: usize,
    pub offset: u64,
    pub len: u64,
    pub kind: u8,
}

impl Partition {
    pub fn contains(&self, byte: u64) -> bool {
        (self.offset..self.offset + self.len).contains(&byte)
    }
}

/// FAT partition type bytes: FAT12, FAT16 (<32M, >=32M), FAT32 (CHS, LBA), FAT16 LBA.
const FAT_TYPES: [u8; 6] = [0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e];

/// The used primary partitions of an MBR disk.
pub fn partitions<R: Read + Seek>(disk: &mut R) -> Result<Vec<Partition>, String> {
    let header =
        mbrman::MBRHeader::read_from(disk).map_err(|e| format!("no MBR partition table: {e}"))?;
    Ok(header
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| Partition {
            number: n,
            offset: u64::from(p.starting_lba) * 512,
            len: u64::from(p.sectors) * 512,
            kind: p.sys,
        })
        .collect())
}

/// Partition 1, which must be FAT: where `betaas/` goes.
pub fn boot_partition<R: Read + Seek>(disk: &mut R) -> Result<Partition, String> {
    let parts = partitions(disk)?;
    let p1 = parts
        .iter()
        .find(|p| p.number == 1)
        .ok_or("no partition 1 (the FAT boot partition)")?;
    if !FAT_TYPES.contains(&p1.kind) {
        return Err(format!(
            "partition 1 has type {:#04x}, not FAT: not a BETaaS card",
            p1.kind
        ));
    }
    Ok(*p1)
}

/// "p2" for a byte inside partition 2, "before p1" / "after the partitions" otherwise.
pub fn place(parts: &[Partition], byte: u64) -> String {
    if let Some(p) = parts.iter().find(|p| p.contains(byte)) {
        return format!("p{}", p.number);
    }
    match parts.iter().map(|p| p.offset).min() {
        Some(first) if byte < first => "before p1: MBR/U-Boot".into(),
        _ => "outside the partitions".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr(entries: &[(u8, u32, u32)]) -> std::io::Cursor<Vec<u8>> {
        let mut d = vec![0u8; 1 << 20];
        for (i, &(kind, lba, sectors)) in entries.iter().enumerate() {
            let e = 446 + 16 * i;
            d[e + 4] = kind;
            d[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
            d[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xaa;
        std::io::Cursor::new(d)
    }

    #[test]
    fn finds_the_fat_boot_partition_like_sfdisk_writes_it() {
        let mut d = mbr(&[(0x0c, 2048, 65536), (0x83, 67584, 196608)]);
        let p = boot_partition(&mut d).expect("p1");
        assert_eq!((p.offset, p.len), (1 << 20, 32 << 20));
        let parts = partitions(&mut d).expect("parts");
        assert_eq!(place(&parts, 8192), "before p1: MBR/U-Boot");
        assert_eq!(place(&parts, 40 << 20), "p2");
        assert_eq!(place(&parts, 200 << 20), "outside the partitions");
    }

    #[test]
    fn refuses_a_disk_whose_first_partition_is_not_fat() {
        let mut d = mbr(&[(0x83, 2048, 65536)]);
        let e = boot_partition(&mut d).expect_err("ext4 p1");
        assert!(e.contains("not FAT"), "{e}");
        let mut blank = std::io::Cursor::new(vec![0u8; 4096]);
        assert!(boot_partition(&mut blank).is_err());
    }
}
