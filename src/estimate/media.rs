//! The input tokens of an item's media, by the rules of
//! [`crate::price::media_rates`]: what the estimate, the `--max-cost`
//! reservations and the pool's TPM admission assume before the API counts.
//!
//! - **Video**: its duration from its container header (MP4, MOV, 3GP:
//!   `moov/mvhd`), cut to the item's `start_offset`/`end_offset`; then
//!   ⌈seconds × fps⌉ frames × the frame rate of the model and
//!   `media_resolution`, plus ⌈seconds × 32⌉ tokens of sound. Other
//!   containers: the duration is estimated from the size at
//!   [`VIDEO_BITS_PER_SECOND`], with a note.
//! - **Audio**: ⌈seconds × 32⌉; WAV durations from their header, other
//!   formats from their size at [`AUDIO_BITS_PER_SECOND`], with a note.
//! - **Images**: at most 384 px on both sides one tile, else ⌈w / 768⌉ ×
//!   ⌈h / 768⌉ tiles, 258 tokens each; sizes from PNG, JPEG and WebP
//!   headers (others: one tile, with a note).
//! - **PDF**: 258 tokens per page, an approximation; pages are counted by
//!   their `/Type /Page` objects as the file streams by (pages inside
//!   compressed object streams are not seen: with none found, the count is
//!   estimated from the size at [`PDF_BYTES_PER_PAGE`], with a note).
//! - **YouTube** URLs: not counted (nothing is known before Gemini fetches
//!   them), with a note.
//!
//! Files are read a few bytes at a time where they say their size, and
//! streamed in bounded chunks where they do not (PDF pages).
//!
//! Owns: these local rules and the notes on where they guess. Never: asking
//! an API (the count from `countTokens` is elsewhere), nor a file read whole.

use super::mp4;
use crate::job::{Item, Media};
use crate::price::{media_rates, MediaRates};
use crate::provider::VideoClip;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The bit rate a video whose duration is unknown is assumed to have:
/// 1 Mbit/s, low for HD video, so the estimate errs high.
const VIDEO_BITS_PER_SECOND: u64 = 1_000_000;

/// The bit rate an audio file whose duration is unknown is assumed to
/// have: 128 kbit/s, a common MP3/AAC rate.
const AUDIO_BITS_PER_SECOND: u64 = 128_000;

/// The bytes per page a PDF whose pages cannot be counted is assumed to
/// have.
const PDF_BYTES_PER_PAGE: u64 = 50_000;

/// Bytes read at a time where a file is streamed.
const CHUNK: usize = 64 * 1024;

/// The media tokens of an item, and what had to be guessed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaTokens {
    /// Estimated input tokens of the item's media.
    pub tokens: u64,
    /// One line per input whose figure was guessed, naming the file.
    pub notes: Vec<String>,
}

/// The media tokens of `item` sent to `model`.
pub fn media_tokens(item: &Item, model: &str) -> MediaTokens {
    let rates = media_rates(model, item.generation.media_resolution);
    let clip = &item.generation.clip;
    let mut out = MediaTokens::default();
    for media in &item.media {
        let (path, mime, size) = match media {
            Media::YouTube(url) => {
                out.notes.push(format!(
                    "`{url}`: a YouTube video's duration is unknown before Gemini fetches it; \
                     not counted"
                ));
                continue;
            }
            Media::File { path, mime, size } => (path, *mime, *size),
        };
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        let (tokens, note) = match file_tokens(path, mime, size, &rates, clip) {
            Ok(counted) => counted,
            Err(error) => (0, Some(format!("cannot be read ({error}); not counted"))),
        };
        out.tokens += tokens;
        if let Some(note) = note {
            out.notes.push(format!("`{name}`: {note}"));
        }
    }
    out
}

/// The tokens of one file, with a note when they were guessed.
fn file_tokens(
    path: &Path,
    mime: &str,
    size: u64,
    rates: &MediaRates,
    clip: &VideoClip,
) -> io::Result<(u64, Option<String>)> {
    let mut file = BufReader::new(File::open(path)?);
    let from_size = |bits_per_second: u64| {
        (
            size as f64 * 8.0 / bits_per_second as f64,
            Some(format!(
                "duration unknown, estimated from size ({} kbit/s assumed)",
                bits_per_second / 1000
            )),
        )
    };
    Ok(match mime.split('/').next().unwrap_or_default() {
        "video" => {
            let header = match mime {
                "video/mp4" | "video/mov" | "video/3gpp" => mp4::duration(&mut file)?,
                _ => None,
            };
            let (seconds, note) = match header {
                Some(seconds) => (seconds, None),
                None => from_size(VIDEO_BITS_PER_SECOND),
            };
            (video_tokens(seconds, clip, rates), note)
        }
        "audio" => {
            let header = match mime {
                "audio/wav" => wav_duration(&mut file)?,
                _ => None,
            };
            let (seconds, note) = match header {
                Some(seconds) => (seconds, None),
                None => from_size(AUDIO_BITS_PER_SECOND),
            };
            (
                (seconds * rates.audio_per_second as f64).ceil() as u64,
                note,
            )
        }
        "image" => match image_size(&mut file, mime)? {
            Some((width, height)) => (tiles(width, height, rates) * rates.tile, None),
            None => (
                rates.tile,
                Some("image size unknown, counted as one tile".to_owned()),
            ),
        },
        _ => match pdf_pages(&mut file)? {
            0 => (
                size.div_ceil(PDF_BYTES_PER_PAGE) * rates.page,
                Some(format!(
                    "page count unknown, estimated from size ({} KB per page assumed)",
                    PDF_BYTES_PER_PAGE / 1000
                )),
            ),
            pages => (pages * rates.page, None),
        },
    })
}

/// The tokens of `seconds` of video cut to `clip`: its frames at the
/// clip's fps (else the default) and its sound.
fn video_tokens(seconds: f64, clip: &VideoClip, rates: &MediaRates) -> u64 {
    let start = clip.start.map_or(0.0, |d| d.as_secs_f64()).min(seconds);
    let end = clip.end.map_or(seconds, |d| d.as_secs_f64()).min(seconds);
    let length = (end - start).max(0.0);
    let frames = (length * clip.fps.unwrap_or(rates.fps)).ceil() as u64;
    frames * rates.frame + (length * rates.audio_per_second as f64).ceil() as u64
}

/// The tiles of an image of `width` × `height` pixels.
fn tiles(width: u32, height: u32, rates: &MediaRates) -> u64 {
    if width <= rates.small_px && height <= rates.small_px {
        return 1;
    }
    u64::from(width.div_ceil(rates.tile_px).max(1))
        * u64::from(height.div_ceil(rates.tile_px).max(1))
}

/// The duration of a WAV file: its `data` chunk's size over the byte rate
/// of its `fmt ` chunk.
fn wav_duration<R: Read + Seek>(file: &mut R) -> io::Result<Option<f64>> {
    let mut head = [0u8; 12];
    file.read_exact(&mut head)?;
    if &head[..4] != b"RIFF" || &head[8..] != b"WAVE" {
        return Ok(None);
    }
    let (mut byte_rate, mut data) = (None, None);
    while byte_rate.is_none() || data.is_none() {
        let mut chunk = [0u8; 8];
        if file.read_exact(&mut chunk).is_err() {
            break;
        }
        let size = u32::from_le_bytes(chunk[4..].try_into().expect("4 bytes"));
        match &chunk[..4] {
            b"fmt " if size >= 12 => {
                let mut fmt = [0u8; 12];
                file.read_exact(&mut fmt)?;
                byte_rate = Some(u32::from_le_bytes(fmt[8..].try_into().expect("4 bytes")));
                file.seek(SeekFrom::Current(
                    i64::from(size) - 12 + i64::from(size & 1),
                ))?;
            }
            b"data" => {
                data = Some(size);
                file.seek(SeekFrom::Current(i64::from(size) + i64::from(size & 1)))?;
            }
            _ => {
                file.seek(SeekFrom::Current(i64::from(size) + i64::from(size & 1)))?;
            }
        }
    }
    Ok(match (byte_rate, data) {
        (Some(rate), Some(data)) if rate > 0 => Some(f64::from(data) / f64::from(rate)),
        _ => None,
    })
}

/// The pixel size an image's header states (PNG, JPEG, WebP).
fn image_size<R: Read + Seek>(file: &mut R, mime: &str) -> io::Result<Option<(u32, u32)>> {
    let mut head = [0u8; 30];
    let n = read_up_to(file, &mut head)?;
    let head = &head[..n];
    let le16 = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let le24 = |at: usize| {
        head.get(at..at + 3)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], 0]))
    };
    Ok(match mime {
        "image/png" => head.get(16..24).map(|b| {
            (
                u32::from_be_bytes(b[..4].try_into().expect("4 bytes")),
                u32::from_be_bytes(b[4..].try_into().expect("4 bytes")),
            )
        }),
        "image/jpeg" => jpeg_size(file)?,
        "image/webp" => match head.get(12..16) {
            Some(b"VP8 ") => le16(26)
                .zip(le16(28))
                .map(|(w, h)| (w & 0x3FFF, h & 0x3FFF)),
            Some(b"VP8L") => head.get(21..25).map(|b| {
                let bits = u32::from_le_bytes(b.try_into().expect("4 bytes"));
                ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
            }),
            Some(b"VP8X") => le24(24).zip(le24(27)).map(|(w, h)| (w + 1, h + 1)),
            _ => None,
        },
        _ => None,
    })
}

/// The size in a JPEG's start-of-frame segment, found by walking the
/// segments by their lengths.
fn jpeg_size<R: Read + Seek>(file: &mut R) -> io::Result<Option<(u32, u32)>> {
    file.seek(SeekFrom::Start(2))?;
    loop {
        let mut marker = [0u8; 2];
        if read_up_to(file, &mut marker)? < 2 || marker[0] != 0xFF {
            return Ok(None);
        }
        match marker[1] {
            // Fill bytes, and markers without a length.
            0xFF => {
                file.seek(SeekFrom::Current(-1))?;
                continue;
            }
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => return Ok(None),
            _ => {}
        }
        let mut segment = [0u8; 7];
        if read_up_to(file, &mut segment)? < 7 {
            return Ok(None);
        }
        let length = i64::from(u16::from_be_bytes([segment[0], segment[1]]));
        // SOF0–SOF15, but DHT (C4), JPG (C8) and DAC (CC).
        if matches!(marker[1], 0xC0..=0xCF) && !matches!(marker[1], 0xC4 | 0xC8 | 0xCC) {
            let height = u16::from_be_bytes([segment[3], segment[4]]);
            let width = u16::from_be_bytes([segment[5], segment[6]]);
            return Ok(Some((u32::from(width), u32::from(height))));
        }
        file.seek(SeekFrom::Current(length - 7))?;
    }
}

/// The pages of a PDF: its `/Type /Page` objects (not `/Pages`), counted as
/// the file streams by in [`CHUNK`]s.
fn pdf_pages<R: Read>(file: &mut R) -> io::Result<u64> {
    // Enough to hold `/Type`, some white space and `/Page` with the byte
    // after it: a match is only looked for where all of it is read.
    const TAIL: usize = 64;
    let (mut buf, mut chunk) = (Vec::with_capacity(CHUNK + TAIL), vec![0u8; CHUNK]);
    let mut pages = 0;
    loop {
        let n = file.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        let limit = match n {
            0 => buf.len(),
            _ => buf.len().saturating_sub(TAIL),
        };
        let mut at = 0;
        while let Some(found) = buf[at..limit].windows(5).position(|w| w == b"/Type") {
            let after = &buf[at + found + 5..];
            let rest = &after[after.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
            if rest.starts_with(b"/Page") && !rest.get(5).is_some_and(u8::is_ascii_alphanumeric) {
                pages += 1;
            }
            at += found + 5;
        }
        if n == 0 {
            return Ok(pages);
        }
        buf.drain(..limit);
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_up_to<R: Read>(file: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::time::Duration;

    #[test]
    fn video_tokens_follow_the_clip_fps_and_resolution() {
        let flash = media_rates("gemini-2.5-flash", None);
        // 10 s at 1 fps: 10 × 258 + 10 × 32.
        assert_eq!(video_tokens(10.0, &VideoClip::default(), &flash), 2900);
        let low = media_rates(
            "gemini-2.5-flash",
            Some(crate::provider::MediaResolution::Low),
        );
        assert_eq!(
            video_tokens(10.0, &VideoClip::default(), &low),
            10 * 66 + 320
        );
        // 2 s to 5.5 s (3.5 s) at 2 fps: 7 frames; ⌈3.5 × 32⌉ = 112.
        let clip = VideoClip {
            start: Some(Duration::from_secs(2)),
            end: Some(Duration::from_millis(5500)),
            fps: Some(2.0),
        };
        assert_eq!(video_tokens(10.0, &clip, &flash), 7 * 258 + 112);
        // An end past the video is the video's end; a start past it, nothing.
        let late = VideoClip {
            start: Some(Duration::from_secs(8)),
            end: Some(Duration::from_secs(60)),
            fps: None,
        };
        assert_eq!(video_tokens(10.0, &late, &flash), 2 * 258 + 64);
        let after = VideoClip {
            start: Some(Duration::from_secs(11)),
            ..VideoClip::default()
        };
        assert_eq!(video_tokens(10.0, &after, &flash), 0);
        // Gemini 3: 70 per frame, 280 at high.
        assert_eq!(
            video_tokens(
                1.0,
                &VideoClip::default(),
                &media_rates("gemini-3-flash-preview", None)
            ),
            70 + 32
        );
        let high = media_rates(
            "models/gemini-3.1-pro-preview",
            Some(crate::provider::MediaResolution::High),
        );
        assert_eq!(video_tokens(1.0, &VideoClip::default(), &high), 280 + 32);
    }

    #[test]
    fn images_count_by_their_tiles() {
        let rates = media_rates("gemini-2.5-flash", None);
        assert_eq!(tiles(384, 200, &rates), 1);
        assert_eq!(tiles(385, 200, &rates), 1);
        assert_eq!(tiles(1920, 1080, &rates), 3 * 2);
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&1920u32.to_be_bytes());
        png.extend_from_slice(&1080u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0]);
        assert_eq!(
            image_size(&mut Cursor::new(png), "image/png").unwrap(),
            Some((1920, 1080))
        );
        // A JPEG with an APP0 segment, then SOF0 of 800 × 600.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 16];
        jpeg.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        jpeg.extend_from_slice(&[0xFF, 0xC0, 0, 17, 8, 0x02, 0x58, 0x03, 0x20, 3]);
        jpeg.extend_from_slice(&[0u8; 9]);
        assert_eq!(
            image_size(&mut Cursor::new(jpeg), "image/jpeg").unwrap(),
            Some((800, 600))
        );
        let mut webp = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
        webp.extend_from_slice(&[0xFF, 0x02, 0, 0x7F, 0x01, 0]); // 768 × 384
        assert_eq!(
            image_size(&mut Cursor::new(webp), "image/webp").unwrap(),
            Some((768, 384))
        );
    }

    #[test]
    fn wav_durations_come_from_the_header_and_pdf_pages_are_counted() {
        let mut wav =
            b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x80\x3e\0\0\x02\0\x10\0"
                .to_vec();
        wav.extend_from_slice(b"LIST\x03\0\0\0abc\0");
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&48_000u32.to_le_bytes()); // 3 s at 16,000 B/s
        wav.extend_from_slice(&[0u8; 48_000]);
        assert_eq!(wav_duration(&mut Cursor::new(wav)).unwrap(), Some(3.0));

        let mut pdf = b"%PDF-1.4\n1 0 obj << /Type /Pages /Count 3 >>".to_vec();
        for i in 0..3 {
            pdf.extend_from_slice(format!("{i} 0 obj <</Type/Page/Parent 1 0 R>>\n").as_bytes());
            // Pages far apart, so matches fall across chunk boundaries.
            pdf.extend_from_slice(&vec![b' '; CHUNK - 10 + i]);
        }
        pdf.extend_from_slice(b"<< /Type\n/Page >>");
        assert_eq!(pdf_pages(&mut Cursor::new(pdf)).unwrap(), 4);
    }
}
