//! The media fields of an item (`video`, `image`, `audio`, `document`): each
//! a path or a list of paths (in CSV, several paths are separated by `|`),
//! resolved against the job file's folder; `video` may also be a YouTube
//! URL. Every file is checked before anything is sent: that it can be
//! opened, that its extension names a supported type of its field's kind,
//! that its first bytes are that type's, and that it is at most
//! [`MAX_FILE_BYTES`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest file the Gemini Files API takes: "a per-file maximum size of
/// 2 GB" (https://ai.google.dev/gemini-api/docs/files).
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// What a media field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// `video`.
    Video,
    /// `image`.
    Image,
    /// `audio`.
    Audio,
    /// `document` (PDF).
    Document,
}

impl MediaKind {
    /// The field's name.
    pub fn field(self) -> &'static str {
        match self {
            MediaKind::Video => "video",
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
            MediaKind::Document => "document",
        }
    }
}

/// One media input of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Media {
    /// A local file, checked when the item was read.
    File {
        /// The path, resolved against the job file's folder.
        path: PathBuf,
        /// Its MIME type, from its extension and confirmed by its first bytes.
        mime: &'static str,
        /// Its size in bytes when it was checked.
        size: u64,
    },
    /// A YouTube URL, which Gemini fetches itself (`fileData` without upload).
    YouTube(String),
}

/// A supported type: its extensions, kind, MIME type and the check of its
/// first bytes.
struct Type {
    extensions: &'static [&'static str],
    kind: MediaKind,
    mime: &'static str,
    magic: fn(&[u8]) -> bool,
}

/// ISO base media (MP4, MOV, 3GP, HEIC): a box type at bytes 4..8.
fn iso_bmff(head: &[u8]) -> bool {
    matches!(
        head.get(4..8),
        Some(b"ftyp" | b"moov" | b"mdat" | b"wide" | b"free" | b"skip")
    )
}

/// RIFF with `form` at bytes 8..12 (WAV, AVI, WebP).
fn riff(head: &[u8], form: &[u8]) -> bool {
    head.starts_with(b"RIFF") && head.get(8..12) == Some(form)
}

/// The types Gemini takes, by its media docs
/// (https://ai.google.dev/gemini-api/docs/video-understanding, `…/image-understanding`,
/// `…/audio`, `…/document-processing`).
#[rustfmt::skip]
const TYPES: &[Type] = &[
    Type { extensions: &["mp4", "m4v"], kind: MediaKind::Video, mime: "video/mp4", magic: iso_bmff },
    Type { extensions: &["mov"], kind: MediaKind::Video, mime: "video/mov", magic: iso_bmff },
    Type { extensions: &["3gp", "3gpp"], kind: MediaKind::Video, mime: "video/3gpp", magic: iso_bmff },
    Type { extensions: &["webm"], kind: MediaKind::Video, mime: "video/webm", magic: |h| h.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) },
    Type { extensions: &["mpeg", "mpg"], kind: MediaKind::Video, mime: "video/mpeg", magic: |h| h.starts_with(&[0, 0, 1, 0xBA]) || h.starts_with(&[0, 0, 1, 0xB3]) },
    Type { extensions: &["avi"], kind: MediaKind::Video, mime: "video/avi", magic: |h| riff(h, b"AVI ") },
    Type { extensions: &["flv"], kind: MediaKind::Video, mime: "video/x-flv", magic: |h| h.starts_with(b"FLV") },
    Type { extensions: &["wmv"], kind: MediaKind::Video, mime: "video/wmv", magic: |h| h.starts_with(&[0x30, 0x26, 0xB2, 0x75]) },
    Type { extensions: &["png"], kind: MediaKind::Image, mime: "image/png", magic: |h| h.starts_with(b"\x89PNG\r\n\x1a\n") },
    Type { extensions: &["jpg", "jpeg"], kind: MediaKind::Image, mime: "image/jpeg", magic: |h| h.starts_with(&[0xFF, 0xD8, 0xFF]) },
    Type { extensions: &["webp"], kind: MediaKind::Image, mime: "image/webp", magic: |h| riff(h, b"WEBP") },
    Type { extensions: &["heic"], kind: MediaKind::Image, mime: "image/heic", magic: iso_bmff },
    Type { extensions: &["heif"], kind: MediaKind::Image, mime: "image/heif", magic: iso_bmff },
    Type { extensions: &["wav"], kind: MediaKind::Audio, mime: "audio/wav", magic: |h| riff(h, b"WAVE") },
    Type { extensions: &["mp3"], kind: MediaKind::Audio, mime: "audio/mp3", magic: |h| h.starts_with(b"ID3") || (h.len() > 1 && h[0] == 0xFF && h[1] & 0xE0 == 0xE0) },
    Type { extensions: &["aiff", "aif"], kind: MediaKind::Audio, mime: "audio/aiff", magic: |h| h.starts_with(b"FORM") },
    Type { extensions: &["aac"], kind: MediaKind::Audio, mime: "audio/aac", magic: |h| h.len() > 1 && h[0] == 0xFF && h[1] & 0xF6 == 0xF0 },
    Type { extensions: &["ogg"], kind: MediaKind::Audio, mime: "audio/ogg", magic: |h| h.starts_with(b"OggS") },
    Type { extensions: &["flac"], kind: MediaKind::Audio, mime: "audio/flac", magic: |h| h.starts_with(b"fLaC") },
    Type { extensions: &["pdf"], kind: MediaKind::Document, mime: "application/pdf", magic: |h| h.starts_with(b"%PDF-") },
];

/// Whether `value` is a YouTube URL.
fn is_youtube(value: &str) -> bool {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        matches!(
            host,
            "youtube.com" | "www.youtube.com" | "m.youtube.com" | "youtu.be"
        )
    })
}

/// Checks the file `value` of field `kind` (relative to `dir`): the media
/// input, or what is wrong with it.
pub(super) fn check(kind: MediaKind, value: &str, dir: &Path) -> Result<Media, String> {
    let value = value.trim();
    if kind == MediaKind::Video && is_youtube(value) {
        return Ok(Media::YouTube(value.to_owned()));
    }
    if value.contains("://") {
        return Err(format!(
            "`{value}`: only local files (and, for `video`, YouTube URLs) are supported"
        ));
    }
    let path = dir.join(value);
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let Some(ty) = TYPES
        .iter()
        .find(|t| t.kind == kind && t.extensions.contains(&extension.as_str()))
    else {
        let known: Vec<&str> = TYPES
            .iter()
            .filter(|t| t.kind == kind)
            .flat_map(|t| t.extensions.iter().copied())
            .collect();
        return Err(format!(
            "`{value}`: unsupported {} type `.{extension}`; supported: .{}",
            kind.field(),
            known.join(", .")
        ));
    };
    let mut file = File::open(&path).map_err(|e| format!("`{value}`: cannot be read: {e}"))?;
    let size = file
        .metadata()
        .map_err(|e| format!("`{value}`: cannot be read: {e}"))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "`{value}`: {size} bytes is over the 2 GB a file may have"
        ));
    }
    let mut head = [0u8; 16];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(format!("`{value}`: cannot be read: {e}")),
        }
    }
    if !(ty.magic)(&head[..filled]) {
        return Err(format!(
            "`{value}`: its first bytes are not those of a {} file (.{extension})",
            ty.mime
        ));
    }
    Ok(Media::File {
        path,
        mime: ty.mime,
        size,
    })
}
