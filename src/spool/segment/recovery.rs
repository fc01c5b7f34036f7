//! Recovery: checking a whole segment file in bounded memory, and finding where
//! frames start again after damage.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::*;

/// Checks a frame like [`read_frame`], streaming a record's payload through the
/// checksum instead of keeping it (recovery's memory stays at the reader's
/// buffer); a commit's payload is kept in `commit`, for its resume points.
pub(super) fn check_frame<R: Read>(
    r: &mut R,
    remaining: u64,
    chunk: &mut [u8],
    commit: &mut Vec<u8>,
) -> io::Result<Frame> {
    let Some(head) = read_frame_header(r, remaining)? else {
        return Ok(Frame::Torn);
    };
    let mut h = super::crc_hasher();
    h.update(&head.raw.to_le_bytes());
    if head.raw & META_FLAG != 0 {
        commit.clear();
        commit.resize(head.len as usize, 0);
        match r.read_exact(commit) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Frame::Torn),
            Err(e) => return Err(e),
        }
        h.update(commit);
        return Ok(head.verdict(h.finalize()));
    }
    let mut left = head.len as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        match r.read_exact(&mut chunk[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Frame::Torn),
            Err(e) => return Err(e),
        }
        h.update(&chunk[..n]);
        left -= n;
    }
    Ok(head.verdict(h.finalize()))
}

/// Bytes of a file examined at once while looking for the next frame.
const SEARCH_WINDOW: usize = 64 * 1024;

/// The first offset in `from..end` where a whole frame starts whose checksum
/// matches (a record or a commit): where reading resumes after damage. Reads the
/// file in windows of [`SEARCH_WINDOW`] bytes; a candidate's payload is checked
/// only when its length fits before `end`, which rules out almost every offset
/// inside damaged or text bytes at once.
pub fn find_frame(file: &File, from: u64, end: u64) -> io::Result<Option<u64>> {
    let mut window = vec![0u8; SEARCH_WINDOW];
    let mut base = from;
    while base + FRAME_HEADER_LEN <= end {
        let want = usize::try_from((end - base).min(SEARCH_WINDOW as u64)).unwrap_or(SEARCH_WINDOW);
        let got = read_full_at(file, &mut window[..want], base)?;
        if got < FRAME_HEADER_LEN as usize {
            return Ok(None);
        }
        let last = got - FRAME_HEADER_LEN as usize;
        for i in 0..=last {
            let at = base + i as u64;
            let mut head = [0u8; FRAME_HEADER_LEN as usize];
            head.copy_from_slice(&window[i..i + FRAME_HEADER_LEN as usize]);
            let Some(h) = FrameHeader::parse(head, end - at) else {
                continue;
            };
            let inside = i + FRAME_HEADER_LEN as usize;
            let whole = if inside + h.len as usize <= got {
                frame_crc(
                    h.raw.to_le_bytes(),
                    &window[inside..inside + h.len as usize],
                ) == h.crc
            } else {
                // The payload runs past the window: read it where it is.
                frame_starts_at(file, at, end)?
            };
            if whole {
                return Ok(Some(at));
            }
        }
        // The next window starts where a header could begin that this one cut.
        base += last as u64 + 1;
    }
    Ok(None)
}

/// Whether a whole frame with a good checksum starts at `at` (or `at` is `end`):
/// after a frame with a bad checksum, this tells a damaged payload (the frame's
/// length held, and the next frame follows it) from a damaged length field.
pub fn frame_starts_at(file: &File, at: u64, end: u64) -> io::Result<bool> {
    if at == end {
        return Ok(true);
    }
    let mut head = [0u8; FRAME_HEADER_LEN as usize];
    if at > end || read_full_at(file, &mut head, at)? < head.len() {
        return Ok(false);
    }
    let Some(h) = FrameHeader::parse(head, end - at) else {
        return Ok(false);
    };
    let mut payload = vec![0u8; h.len as usize];
    if read_full_at(file, &mut payload, at + FRAME_HEADER_LEN)? < payload.len() {
        return Ok(false);
    }
    Ok(frame_crc(h.raw.to_le_bytes(), &payload) == h.crc)
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// What recovery found in one segment file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Nothing in the file can be read: too short for a header, or no frame of
    /// this format anywhere in it.
    pub unreadable: bool,
    /// The header is damaged (or not this version's) but frames were found: the
    /// caller writes a good header over it and keeps the segment.
    pub header_damaged: bool,
    /// Bytes up to the end of the last frame worth keeping (the last commit, or in
    /// a version 1 segment the last record); the file should be cut here.
    pub valid_len: u64,
    /// The file's length before any cut.
    pub file_len: u64,
    /// Records before `valid_len`, as the commits count them (those lost to
    /// damage included, so that a reader's count agrees).
    pub records: u64,
    /// Damaged places before `valid_len` that readers skip: frames with a bad
    /// checksum, and runs of bytes in which no frame starts.
    pub damaged: u64,
    /// Records (as counted above) that end at or before `ack_offset`.
    pub records_before_ack: u64,
    /// Whether `ack_offset` falls on a frame boundary at or before `valid_len`.
    pub ack_aligned: bool,
    /// Records and frame bytes before `valid_len` per owner, as the commits'
    /// runs say ([`Shares::owners`]; owner 0 for records they do not cover).
    pub owners: BTreeMap<u64, (u64, u64)>,
    /// Segments the commits before `valid_len` say they replace.
    pub superseded: Vec<u64>,
}

/// Records of one append waiting for its commit to say whose they are; past
/// this many (only a damaged or very old segment has so many between
/// commits) they are counted as owner 0's at once.
const MAX_PENDING: usize = 1 << 16;

/// Credits `pending` (the frame sizes of an append's records, in order) to the
/// owners `runs` names; what they do not cover is owner 0's.
pub(crate) fn credit(
    owners: &mut BTreeMap<u64, (u64, u64)>,
    runs: &[(u64, u64)],
    pending: &mut Vec<u64>,
) {
    let mut sizes = pending.drain(..);
    for &(owner, n) in runs {
        let mut share = (0u64, 0u64);
        for size in sizes
            .by_ref()
            .take(usize::try_from(n).unwrap_or(usize::MAX))
        {
            share.0 += 1;
            share.1 += size;
        }
        if share.0 > 0 {
            let e = owners.entry(owner).or_default();
            e.0 += share.0;
            e.1 += share.1;
        }
    }
    let rest = sizes.fold((0u64, 0u64), |(n, b), size| (n + 1, b + size));
    if rest.0 > 0 {
        let e = owners.entry(0).or_default();
        e.0 += rest.0;
        e.1 += rest.1;
    }
}

/// Checks every frame of a segment file, in bounded memory, and applies the
/// resume points of its commits (up to `valid_len`) to `state`.
///
/// Policy for damage: a frame with a bad checksum is skipped; where no frame
/// starts (a damaged length field, zeroed or overwritten bytes), reading resumes
/// at the next offset where a whole frame with a good checksum starts
/// ([`find_frame`]). So damage in the middle costs only the records it covers.
/// What follows the last commit is a torn tail (an append a crash interrupted: it
/// was never acknowledged to its source, which reads it again) and is cut. A
/// damaged header does not make the frames behind it unreadable.
pub fn scan_segment(
    path: &Path,
    ack_offset: Option<u64>,
    state: &mut ResumeState,
) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut scan = Scan {
        file_len,
        ..Scan::default()
    };
    if file_len < HEADER_LEN {
        scan.unreadable = true;
        return Ok(scan);
    }
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut head = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut head)?;
    let version = header_version(&head);
    scan.header_damaged = version.is_none();
    // A damaged header says nothing of the frames: read them as this version's.
    let commits = version.unwrap_or(VERSION) >= VERSION;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut commit = Vec::new();
    let mut offset = HEADER_LEN;
    // Records so far (by the commits' count once one is seen), damaged places so
    // far, and both as of the last point worth keeping.
    let (mut records, mut damaged) = (0u64, 0u64);
    let mut found_frame = false;
    // Whose each record of the append being read is, once its commit says,
    // and the shares as of the last point worth keeping.
    let mut pending: Vec<u64> = Vec::new();
    let mut owners = BTreeMap::new();
    scan.valid_len = HEADER_LEN;
    scan.ack_aligned = ack_offset == Some(HEADER_LEN);
    while offset < file_len {
        let frame = check_frame(&mut r, file_len - offset, &mut chunk, &mut commit)?;
        match frame {
            Frame::Record { .. } => {
                found_frame = true;
                records += 1;
                offset += frame.size();
                pending.push(frame.size());
                if !commits || pending.len() >= MAX_PENDING {
                    credit(&mut owners, &[], &mut pending);
                }
                if !commits {
                    scan.valid_len = offset;
                    (scan.records, scan.damaged) = (records, damaged);
                    scan.owners.clone_from(&owners);
                }
            }
            Frame::Commit { .. } => {
                found_frame = true;
                offset += frame.size();
                match Commit::decode(&commit, true) {
                    Ok(mut c) => {
                        records = c.records;
                        c.apply(state);
                        credit(&mut owners, &c.shares.owners, &mut pending);
                        scan.superseded.extend_from_slice(&c.shares.superseded);
                        scan.valid_len = offset;
                        (scan.records, scan.damaged) = (records, damaged);
                        scan.owners.clone_from(&owners);
                    }
                    // A good checksum over a payload this build cannot read.
                    Err(_) => damaged += 1,
                }
            }
            // A damaged payload under an intact length: one record lost.
            Frame::Corrupt { .. }
                if frame_starts_at(r.get_ref(), offset + frame.size(), file_len)? =>
            {
                records += 1;
                damaged += 1;
                offset += frame.size();
            }
            // A damaged length field, or no frame here at all.
            Frame::Corrupt { .. } | Frame::Torn => {
                match find_frame(r.get_ref(), offset + 1, file_len)? {
                    Some(next) => {
                        damaged += 1;
                        offset = next;
                        r.seek(SeekFrom::Start(next))?;
                    }
                    None => break,
                }
            }
        }
        if ack_offset == Some(offset) {
            scan.ack_aligned = true;
            scan.records_before_ack = records;
        }
    }
    if ack_offset.is_some_and(|a| a > scan.valid_len) {
        scan.ack_aligned = false;
    }
    scan.unreadable = scan.header_damaged && !found_frame;
    Ok(scan)
}
