//! The duration of an ISO base media file (MP4, MOV, 3GP) from its movie
//! header: the `mvhd` box inside the top-level `moov` box (ISO/IEC 14496-12
//! §8.2.2; QuickTime's "movie header atom" is the same box). Boxes are
//! walked by their sizes, seeking over each one's body, so a 2 GB file costs
//! a few small reads wherever its `moov` is (before or after `mdat`).
//!
//! Owns: walking the boxes to the movie header. Never: decoding or reading
//! the media data (`mdat`), nor any other container.

use std::io::{self, Read, Seek, SeekFrom};

/// Boxes looked at, at each level, before giving up: a real file has a
/// handful; a broken one must not keep the reader seeking.
const MAX_BOXES: usize = 4096;

/// A box's type and where its body lies.
struct BoxAt {
    kind: [u8; 4],
    body: u64,
    end: u64,
}

/// The duration in seconds the movie header of `file` states; `None` when
/// there is no readable `moov/mvhd`, or it states no duration (all ones,
/// or a time scale of 0).
pub(super) fn duration<R: Read + Seek>(file: &mut R) -> io::Result<Option<f64>> {
    let len = file.seek(SeekFrom::End(0))?;
    let Some(moov) = find(file, 0, len, b"moov")? else {
        return Ok(None);
    };
    let Some(mvhd) = find(file, moov.body, moov.end, b"mvhd")? else {
        return Ok(None);
    };
    // Version 1 has 64-bit creation and modification times and duration,
    // version 0 32-bit ones.
    let mut head = [0u8; 32];
    let (mut version, size) = (0, mvhd.end - mvhd.body);
    if size >= 4 {
        file.seek(SeekFrom::Start(mvhd.body))?;
        read(file, &mut head[..4])?;
        version = head[0];
    }
    let need = match version {
        0 => 20,
        1 => 32,
        _ => return Ok(None),
    };
    if size < need {
        return Ok(None);
    }
    read(file, &mut head[4..need as usize])?;
    let (timescale, duration, unknown) = match version {
        0 => {
            let duration = u32::from_be_bytes(word(&head[16..20]));
            (
                u32::from_be_bytes(word(&head[12..16])),
                u64::from(duration),
                duration == u32::MAX,
            )
        }
        _ => {
            let duration = u64::from_be_bytes(head[24..32].try_into().expect("8 bytes"));
            (
                u32::from_be_bytes(word(&head[20..24])),
                duration,
                duration == u64::MAX,
            )
        }
    };
    if timescale == 0 || unknown {
        return Ok(None);
    }
    Ok(Some(duration as f64 / f64::from(timescale)))
}

fn word(bytes: &[u8]) -> [u8; 4] {
    bytes.try_into().expect("4 bytes")
}

fn read<R: Read>(file: &mut R, buf: &mut [u8]) -> io::Result<()> {
    file.read_exact(buf)
}

/// The first box of type `kind` among the boxes from `from` to `to`.
fn find<R: Read + Seek>(
    file: &mut R,
    from: u64,
    to: u64,
    kind: &[u8; 4],
) -> io::Result<Option<BoxAt>> {
    let mut at = from;
    for _ in 0..MAX_BOXES {
        let Some(next) = header(file, at, to)? else {
            return Ok(None);
        };
        if &next.kind == kind {
            return Ok(Some(next));
        }
        at = next.end;
    }
    Ok(None)
}

/// The box at `at` (which must end by `to`), or `None` at the end or on a
/// malformed size.
fn header<R: Read + Seek>(file: &mut R, at: u64, to: u64) -> io::Result<Option<BoxAt>> {
    if at.saturating_add(8) > to {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(at))?;
    let mut head = [0u8; 8];
    read(file, &mut head)?;
    let size = u64::from(u32::from_be_bytes(word(&head[..4])));
    let kind = word(&head[4..8]);
    let (body, end) = match size {
        // The box runs to the end of its parent (the file).
        0 => (at + 8, to),
        // A 64-bit size follows the type.
        1 => {
            if at.saturating_add(16) > to {
                return Ok(None);
            }
            let mut large = [0u8; 8];
            read(file, &mut large)?;
            (at + 16, at.saturating_add(u64::from_be_bytes(large)))
        }
        size => (at + 8, at.saturating_add(size)),
    };
    Ok((end >= body && end <= to).then_some(BoxAt { kind, body, end }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    /// An `mvhd` body of `version` (only the fields read, then padding).
    fn mvhd(version: u8, timescale: u32, duration: u64) -> Vec<u8> {
        let mut body = vec![version, 0, 0, 0];
        match version {
            0 => {
                body.extend_from_slice(&[0u8; 8]);
                body.extend_from_slice(&timescale.to_be_bytes());
                body.extend_from_slice(&(duration as u32).to_be_bytes());
            }
            _ => {
                body.extend_from_slice(&[0u8; 16]);
                body.extend_from_slice(&timescale.to_be_bytes());
                body.extend_from_slice(&duration.to_be_bytes());
            }
        }
        body.extend_from_slice(&[0u8; 80]);
        body
    }

    fn seconds(bytes: Vec<u8>) -> Option<f64> {
        duration(&mut Cursor::new(bytes)).unwrap()
    }

    #[test]
    fn both_header_versions_give_the_duration() {
        let ftyp = boxed(b"ftyp", b"isom\0\0\x02\0isom");
        let v0 = boxed(b"moov", &boxed(b"mvhd", &mvhd(0, 600, 600 * 42)));
        assert_eq!(seconds([ftyp.clone(), v0].concat()), Some(42.0));
        // Version 1, after a large `mdat` with a 64-bit size and a `trak`
        // before the header inside `moov`.
        let mut mdat = 1u32.to_be_bytes().to_vec();
        mdat.extend_from_slice(b"mdat");
        mdat.extend_from_slice(&(16u64 + 100).to_be_bytes());
        mdat.extend_from_slice(&[7u8; 100]);
        let moov = boxed(
            b"moov",
            &[
                boxed(b"trak", &[0u8; 20]),
                boxed(b"mvhd", &mvhd(1, 90_000, 90_000 * 5 / 2)),
            ]
            .concat(),
        );
        assert_eq!(seconds([ftyp, mdat, moov].concat()), Some(2.5));
    }

    #[test]
    fn no_header_or_no_duration_is_unknown() {
        let ftyp = boxed(b"ftyp", b"isom");
        assert_eq!(seconds(ftyp.clone()), None);
        let unknown = boxed(
            b"moov",
            &boxed(b"mvhd", &mvhd(0, 1000, u64::from(u32::MAX))),
        );
        assert_eq!(seconds([ftyp.clone(), unknown].concat()), None);
        let no_scale = boxed(b"moov", &boxed(b"mvhd", &mvhd(0, 0, 10)));
        assert_eq!(seconds([ftyp.clone(), no_scale].concat()), None);
        // A size that runs past the file, and a truncated header.
        let mut broken = ftyp.clone();
        broken.extend_from_slice(&1000u32.to_be_bytes());
        broken.extend_from_slice(b"moov");
        assert_eq!(seconds(broken), None);
        let short = boxed(b"moov", &boxed(b"mvhd", &[0u8; 6]));
        assert_eq!(seconds([ftyp, short].concat()), None);
        assert_eq!(seconds(b"RIFF....AVI ".to_vec()), None);
    }
}
