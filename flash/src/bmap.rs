//! The block map: which byte ranges of an image hold data, each with its sha256, in bmaptool's XML
//! format (version 2.0, the one `bmaptool create` writes and `bmaptool copy` reads).
//!
//! Reading uses the maintained `bmap-parser` crate; two checks it does not make are made here
//! first: the file's own checksum (`BmapFileChecksum`, as bmaptool checks it) and that every range
//! lies inside the image. Writing the XML is done here: `bmap-parser` only parses.
//!
//! Why `betaas-flash bmap create` and not Debian's `bmaptool create`: bmaptool maps the blocks the
//! image file has allocated, and `image/build.sh` assembles `sdcard.img` with `dd`, which allocates
//! every block of each partition, so bmaptool would map the whole card. Making the image sparse by
//! looking for zeros (`fallocate --dig-holes`, `dd conv=sparse`) would be wrong: the FAT writer
//! writes its FAT tables and the ext4 writer its bitmaps as zeros on purpose, and a card's old
//! content left there would corrupt them. The partition files themselves (`mkfs.vfat -C`,
//! `mke2fs -d`) are sparse exactly where their writers wrote nothing, so `--from FILE@OFFSET` takes
//! the map of a partition from its file's extents (SEEK_DATA/SEEK_HOLE), and the rest of the image
//! (MBR, U-Boot) from the image's own extents.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Error;

/// The block size of the maps this tool writes (bmaptool's default).
pub const BLOCK_SIZE: u64 = 4096;
/// Without a bmap the whole image is written in ranges of this size (they name a failure's place).
pub const FULL_RANGE: u64 = 4 << 20;

/// One contiguous run of mapped blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// 1-based, in image order, as errors name it.
    pub number: usize,
    pub offset: u64,
    pub len: u64,
    /// From the bmap; `None` when there is no bmap (then it is computed from the image).
    pub sha256: Option<[u8; 32]>,
}

impl Range {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// What to write: the mapped ranges of an image of `image_size` bytes.
#[derive(Debug, Clone)]
pub struct Map {
    pub image_size: u64,
    pub ranges: Vec<Range>,
    /// Where the map came from (a .bmap file, or "whole image").
    pub source: String,
}

impl Map {
    /// Every byte of the image, in [`FULL_RANGE`] pieces (a plain copy, like `dd`).
    pub fn full(image_size: u64) -> Map {
        let mut ranges = Vec::new();
        let mut offset = 0;
        while offset < image_size {
            let len = FULL_RANGE.min(image_size - offset);
            ranges.push(Range {
                number: ranges.len() + 1,
                offset,
                len,
                sha256: None,
            });
            offset += len;
        }
        Map {
            image_size,
            ranges,
            source: "whole image (no bmap)".into(),
        }
    }

    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// Reads and checks a .bmap file for an image of `image_size` bytes.
    pub fn load(path: &Path, image_size: u64) -> Result<Map, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Map::parse(&text, image_size).map_err(|m| Error::Bmap(path.to_owned(), m))
    }

    pub fn parse(text: &str, image_size: u64) -> Result<Map, String> {
        check_file_checksum(text)?;
        // bmap-parser panics on a malformed range ("a-b" with non-numbers): the file's checksum
        // above catches damage, and this keeps a hand-made bad file from crashing the tool.
        let parsed = std::panic::catch_unwind(|| bmap_parser::Bmap::from_xml(text))
            .map_err(|_| "malformed <Range> in the block map".to_owned())?
            .map_err(|e| e.to_string())?;
        if parsed.image_size() != image_size {
            return Err(format!(
                "made for an image of {} bytes, this image has {image_size}",
                parsed.image_size()
            ));
        }
        let mut ranges: Vec<Range> = Vec::new();
        for r in parsed.block_map() {
            let end = r.offset().checked_add(r.length());
            if r.length() == 0 || end.is_none_or(|e| e > image_size) {
                return Err(format!(
                    "range at byte {} ({} bytes) lies outside the image",
                    r.offset(),
                    r.length()
                ));
            }
            if let Some(prev) = ranges.last() {
                if r.offset() < prev.end() {
                    return Err(format!(
                        "ranges overlap or are out of order at byte {}",
                        r.offset()
                    ));
                }
            }
            let bmap_parser::HashValue::Sha256(sum) = r.checksum() else {
                return Err("only sha256 checksums are supported".into());
            };
            ranges.push(Range {
                number: ranges.len() + 1,
                offset: r.offset(),
                len: r.length(),
                sha256: Some(sum),
            });
        }
        Ok(Map {
            image_size,
            ranges,
            source: String::new(),
        })
    }
}

/// bmaptool's rule: the sha256 of the file with the checksum's own text replaced by zeros.
fn check_file_checksum(text: &str) -> Result<(), String> {
    let stated = text
        .split_once("<BmapFileChecksum>")
        .and_then(|(_, rest)| rest.split_once("</BmapFileChecksum>"))
        .map(|(v, _)| v.trim())
        .ok_or("no <BmapFileChecksum> (only bmap format 2.0 with sha256 is supported)")?;
    if stated.len() != 64 {
        return Err(format!("BmapFileChecksum {stated:?} is not a sha256"));
    }
    let zeroed = text.replace(stated, &"0".repeat(stated.len()));
    let actual = hex(&Sha256::digest(zeroed.as_bytes()).into());
    if actual != stated {
        return Err(format!(
            "the file's checksum is {actual}, it states {stated}: the bmap is damaged or was edited"
        ));
    }
    Ok(())
}

pub fn hex(sum: &[u8; 32]) -> String {
    sum.iter().map(|b| format!("{b:02x}")).collect()
}

/// The data extents of a file, as (offset, len), from SEEK_DATA/SEEK_HOLE.
pub fn extents(file: &File) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom as S};
    let size = file.metadata()?.len();
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let data = match seek(file, S::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // no data after `at`
            Err(e) => return Err(e.into()),
        };
        let hole = seek(file, S::Hole(data))?.min(size);
        if hole > data {
            out.push((data, hole - data));
        }
        at = hole;
    }
    Ok(out)
}

/// A file whose extents give the map of the image bytes it was copied to.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub offset: u64,
}

impl std::str::FromStr for Source {
    type Err = String;
    /// `FILE@OFFSET`, the offset in bytes or with a K/KiB/M/MiB suffix (1 MiB = 1048576).
    fn from_str(s: &str) -> Result<Source, String> {
        let (file, off) = s
            .rsplit_once('@')
            .ok_or_else(|| format!("{s:?}: expected FILE@OFFSET"))?;
        Ok(Source {
            file: file.into(),
            offset: parse_size(off)?,
        })
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: not a size"))?;
    let mul = match unit {
        "" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(format!("{s:?}: unit must be K, M or G (powers of 1024)")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// The mapped blocks of `image`: inside each source's span, the blocks its file has data in;
/// elsewhere, the blocks the image file itself has data in. Sorted block numbers, as runs.
pub fn mapped_blocks(image: &Path, sources: &[Source]) -> Result<Vec<(u64, u64)>, Error> {
    let img = File::open(image).map_err(|e| Error::io(image, e))?;
    let size = img.metadata().map_err(|e| Error::io(image, e))?.len();
    let mut spans = Vec::new(); // (start, end) bytes covered by a source
    let mut data = Vec::new(); // (offset, len) mapped bytes
    for s in sources {
        let f = File::open(&s.file).map_err(|e| Error::io(&s.file, e))?;
        let len = f.metadata().map_err(|e| Error::io(&s.file, e))?.len();
        if s.offset + len > size {
            return Err(Error::Usage(format!(
                "{} at byte {} ends past the image ({size} bytes)",
                s.file.display(),
                s.offset
            )));
        }
        spans.push((s.offset, s.offset + len));
        for (o, l) in extents(&f).map_err(|e| Error::io(&s.file, e))? {
            data.push((s.offset + o, l));
        }
    }
    for (o, l) in extents(&img).map_err(|e| Error::io(image, e))? {
        // The image's own extents, minus the sources' spans.
        let mut pieces = vec![(o, o + l)];
        for &(s, e) in &spans {
            pieces = pieces
                .into_iter()
                .flat_map(|(a, b)| {
                    let mut v = Vec::new();
                    if a < s.min(b) {
                        v.push((a, s.min(b)));
                    }
                    if e.max(a) < b {
                        v.push((e.max(a), b));
                    }
                    v
                })
                .collect();
        }
        data.extend(pieces.into_iter().map(|(a, b)| (a, b - a)));
    }
    Ok(block_runs(&data, size))
}

/// Byte extents → runs of whole blocks (first, last), merged, inside an image of `size` bytes.
pub fn block_runs(extents: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut blocks: Vec<(u64, u64)> = extents
        .iter()
        .filter(|&&(_, l)| l > 0)
        .map(|&(o, l)| {
            let end = (o + l).min(size);
            (o / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE) - 1)
        })
        .collect();
    blocks.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (a, b) in blocks {
        match runs.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => runs.push((a, b)),
        }
    }
    runs
}

/// The .bmap XML for `image` with these block runs (bmaptool's layout, its file checksum).
pub fn create(image: &Path, runs: &[(u64, u64)]) -> Result<String, Error> {
    let mut img = File::open(image).map_err(|e| Error::io(image, e))?;
    let size = img.metadata().map_err(|e| Error::io(image, e))?.len();
    let blocks = size.div_ceil(BLOCK_SIZE);
    let mut lines = String::new();
    let mut mapped = 0;
    let mut buf = vec![0u8; 1 << 20];
    for &(first, last) in runs {
        let offset = first * BLOCK_SIZE;
        let len = ((last + 1) * BLOCK_SIZE).min(size) - offset;
        img.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(image, e))?;
        let mut h = Sha256::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            img.read_exact(&mut buf[..n])
                .map_err(|e| Error::io(image, e))?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let range = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        lines.push_str(&format!(
            "        <Range chksum=\"{}\"> {range} </Range>\n",
            hex(&h.finalize().into())
        ));
        mapped += last - first + 1;
    }
    let zeros = "0".repeat(64);
    let text = format!(
        r#"<?xml version="1.0" ?>
<!-- Written by betaas-flash bmap create: the mapped blocks of the image and the sha256 of each
     range, in bmaptool's format (version 2.0). BmapFileChecksum is the sha256 of this file with
     the checksum itself replaced by zeros. -->
<bmap version="2.0">
    <!-- Image size in bytes: {human} -->
    <ImageSize> {size} </ImageSize>
    <BlockSize> {BLOCK_SIZE} </BlockSize>
    <BlocksCount> {blocks} </BlocksCount>
    <!-- Mapped blocks: {mapped_human} -->
    <MappedBlocksCount> {mapped} </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <BmapFileChecksum> {zeros} </BmapFileChecksum>
    <BlockMap>
{lines}    </BlockMap>
</bmap>
"#,
        human = crate::human(size),
        mapped_human = crate::human(mapped * BLOCK_SIZE),
    );
    let sum = hex(&Sha256::digest(text.as_bytes()).into());
    Ok(text.replace(&zeros, &sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_adjacent_and_overlapping_extents() {
        let b = BLOCK_SIZE;
        let runs = block_runs(&[(0, 512), (b, 10), (3 * b + 1, b), (10 * b, 0)], 100 * b);
        assert_eq!(runs, vec![(0, 1), (3, 4)]);
    }

    #[test]
    fn runs_stop_at_the_image_end() {
        assert_eq!(block_runs(&[(0, 10 * BLOCK_SIZE)], 5000), vec![(0, 1)]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("33M"), Ok(33 << 20));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert!(parse_size("1MB").is_err());
        let s: Source = "a@b@1M".parse().expect("source");
        assert_eq!((s.file, s.offset), (PathBuf::from("a@b"), 1 << 20));
    }

    #[test]
    fn a_written_map_reads_back_and_an_edited_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("x.img");
        let mut data = vec![0u8; 5 * BLOCK_SIZE as usize + 100];
        fastrand::fill(&mut data);
        std::fs::write(&img, &data).expect("write");
        let xml = create(&img, &[(0, 0), (2, 5)]).expect("create");
        let map = Map::parse(&xml, data.len() as u64).expect("parse");
        assert_eq!(map.ranges.len(), 2);
        assert_eq!(map.ranges[1].offset, 2 * BLOCK_SIZE);
        assert_eq!(map.ranges[1].end(), data.len() as u64, "last block clipped");
        let want: [u8; 32] = Sha256::digest(&data[2 * BLOCK_SIZE as usize..]).into();
        assert_eq!(map.ranges[1].sha256, Some(want));

        let edited = xml.replace("> 2-5 <", "> 2-4 <");
        let err = Map::parse(&edited, data.len() as u64).expect_err("edited");
        assert!(err.contains("damaged or was edited"), "{err}");
        let err = Map::parse(&xml, 1 << 30).expect_err("other size");
        assert!(err.contains("made for an image of"), "{err}");
    }
}
