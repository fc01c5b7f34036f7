//! The frames `wisp-agent exec` and the daemon exchange over the exec socket, and
//! the capture files in a user's outbox (which hold the client's frames as they
//! would be sent).
//!
//! A frame is a 4-byte big-endian length, then that many bytes of JSON; a frame is
//! at most [`MAX_FRAME`] bytes, a bigger length is an error (the reader never
//! allocates more than that for one frame). The client sends `hello`, then
//! `lines` frames numbered 1, 2, … (`seq`), then `end`; the daemon answers `hello`
//! with `welcome` (how far it already holds the run), each `lines` with `acked`
//! once its lines are durable in the daemon's spool, and `end` with `done` once
//! the run's span is handed on. A client that reconnects says `hello` again and
//! sends on from the `welcome`'s `acked`, so nothing is shipped twice.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version in `hello`; the daemon refuses others.
pub const VERSION: u32 = 1;

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 1024 * 1024;

/// A `lines` frame is closed once its JSON reaches this size; with lines cut at
/// [`crate::source::exec::MAX_PENDING_LINE`] bytes (at most 6 bytes of JSON per
/// byte of text, `\u0000`) no frame exceeds [`MAX_FRAME`].
pub const LINES_FRAME_TARGET: usize = 128 * 1024;

/// Which of the command's streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of the command's output, without its newline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
    /// When `exec` read it, in ns since the epoch.
    pub time_ns: i64,
}

/// What a run says of itself. The daemon trusts none of it for identity: the
/// user comes from the socket (SO_PEERCRED).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// The `job` label (`--name`).
    pub job: String,
    /// `--label`s.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The command and its arguments.
    #[serde(default)]
    pub argv: Vec<String>,
    /// The run's trace and span ids, lowercase hex (32 and 16 digits).
    pub trace_id: String,
    pub span_id: String,
    pub started_ms: u64,
    /// The commit of HEAD in the work tree `exec` ran in, before the command
    /// started; absent outside a git work tree (and from older clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_head: Option<String>,
}

impl Hello {
    /// The W3C `traceparent` of the run (sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// From `exec` to the daemon (and into a capture file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello(Hello),
    Lines {
        seq: u64,
        lines: Vec<Line>,
    },
    /// The command ended: its exit status (128+N for signal N), or `None` when
    /// its `exec` died before it could say (a capture without an end).
    End {
        exit: Option<i32>,
        ended_ms: u64,
        /// The commit of HEAD after the command ended (see [`Hello::git_head`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        git_head: Option<String>,
    },
}

/// From the daemon to `exec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DaemonFrame {
    /// `lines` frames up to `acked` are durable already; `complete` when the
    /// whole run (its end included) was handled before.
    Welcome {
        acked: u64,
        complete: bool,
    },
    Acked {
        seq: u64,
    },
    /// The run is handled: its span handed on. The capture may go.
    Done,
    /// The daemon will not take this (a bad frame, another connection busy with
    /// the same run); the client keeps its capture.
    Refused {
        reason: String,
    },
}

/// Encodes one frame.
pub fn encode<T: Serialize>(frame: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(frame).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {} bytes exceeds {MAX_FRAME}", body.len()),
        ));
    }
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, frame: &T) -> io::Result<()> {
    w.write_all(&encode(frame)?)?;
    w.flush()
}

/// What reading one frame found.
#[derive(Debug)]
pub enum Read1<T> {
    Frame(T),
    /// The stream ended cleanly before a new frame.
    Eof,
    /// The stream ended inside a frame (a capture whose writer died mid-write,
    /// or is still writing it).
    Partial,
}

/// Reads one frame (blocking). A length over [`MAX_FRAME`] or JSON that is not a
/// `T` is `InvalidData`.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Read1<T>> {
    let mut len = [0u8; 4];
    match read_full(r, &mut len)? {
        0 => return Ok(Read1::Eof),
        4 => {}
        _ => return Ok(Read1::Partial),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(too_big(len));
    }
    let mut body = vec![0u8; len];
    if read_full(r, &mut body)? < len {
        return Ok(Read1::Partial);
    }
    decode(&body).map(Read1::Frame)
}

/// Reads one frame from an async stream; `None` at a clean end.
pub async fn read_frame_async<T, R>(r: &mut R) -> io::Result<Option<T>>
where
    T: for<'de> Deserialize<'de>,
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(too_big(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode(&body).map(Some)
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a wisp-agent exec frame: {e}"),
        )
    })
}

fn too_big(len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
    )
}

/// Reads until `buf` is full or the stream ends; returns how much it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_cut_frame_is_partial() {
        let frame = ClientFrame::Lines {
            seq: 3,
            lines: vec![Line {
                stream: Stream::Stderr,
                text: "a\u{0}b".into(),
                time_ns: 7,
            }],
        };
        let bytes = encode(&frame).unwrap();
        let mut r = &bytes[..];
        match read_frame::<ClientFrame>(&mut r).unwrap() {
            Read1::Frame(f) => assert_eq!(f, frame),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_frame::<ClientFrame>(&mut r).unwrap(),
            Read1::Eof
        ));
        let mut cut = &bytes[..bytes.len() - 1];
        assert!(matches!(
            read_frame::<ClientFrame>(&mut cut).unwrap(),
            Read1::Partial
        ));
    }

    #[test]
    fn frames_without_git_heads_from_older_clients_still_read() {
        let hello = br#"{"type":"hello","version":1,"job":"exec","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","started_ms":5}"#;
        match decode::<ClientFrame>(hello).unwrap() {
            ClientFrame::Hello(h) => assert_eq!((h.started_ms, h.git_head), (5, None)),
            other => panic!("{other:?}"),
        }
        let end = br#"{"type":"end","exit":0,"ended_ms":9}"#;
        assert_eq!(
            decode::<ClientFrame>(end).unwrap(),
            ClientFrame::End {
                exit: Some(0),
                ended_ms: 9,
                git_head: None
            }
        );
        // Nor does a frame without heads name them, so an older daemon reads it
        // as before.
        let bytes = encode(&ClientFrame::End {
            exit: Some(0),
            ended_ms: 9,
            git_head: None,
        })
        .unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("git_head"));
    }

    #[test]
    fn a_length_over_the_limit_is_refused_without_reading_it() {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let err = read_frame::<ClientFrame>(&mut &bytes[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
