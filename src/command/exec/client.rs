//! Sends captures to the daemon over the exec socket (blocking code, on threads of
//! its own: the command never waits for it).
//!
//! A capture is sent from its file, following it while its run goes on
//! ([`Follow`]): hello, then the `lines` frames the daemon does not hold yet (its
//! `welcome` says), each acknowledged once durable, then the end. Once the daemon
//! says `done`, the capture is deleted. A daemon that is not there, refuses, or
//! stops answering leaves the capture where it is, for the next `exec` or
//! `exec --flush`.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::source::exec::outbox;
use crate::source::exec::protocol::{read_frame, write_frame, ClientFrame, DaemonFrame, Read1};

/// How long an answer from the daemon may take (a spool fsync, a busy disk).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Lets the sender of a live run wait for more of its capture, and `exec`
/// wait until the daemon took the run's hello (or no daemon will).
#[derive(Default)]
pub struct Follow {
    ended: Mutex<(u64, bool)>,
    cv: Condvar,
    settled: Mutex<bool>,
    settled_cv: Condvar,
}

impl Follow {
    /// The daemon answered the run's hello, or the sender gave up: either way
    /// `exec` need not wait for it any longer.
    pub fn settle(&self) {
        if let Ok(mut s) = self.settled.lock() {
            *s = true;
        }
        self.settled_cv.notify_all();
    }

    /// Waits at most `limit` for [`Follow::settle`].
    pub fn wait_settled(&self, limit: Duration) {
        if let Ok(guard) = self.settled.lock() {
            let _ = self.settled_cv.wait_timeout_while(guard, limit, |s| !*s);
        }
    }

    /// More was written.
    pub fn wrote(&self) {
        if let Ok(mut s) = self.ended.lock() {
            s.0 += 1;
        }
        self.cv.notify_all();
    }

    /// The capture is complete.
    pub fn end(&self) {
        if let Ok(mut s) = self.ended.lock() {
            s.1 = true;
        }
        self.cv.notify_all();
    }

    /// Waits (at most a moment) for more; true once the capture is complete.
    fn wait(&self, seen: &mut u64) -> bool {
        let Ok(guard) = self.ended.lock() else {
            return true;
        };
        let (guard, _) = match self
            .cv
            .wait_timeout_while(guard, Duration::from_millis(200), |s| s.0 == *seen && !s.1)
        {
            Ok(r) => r,
            Err(_) => return true,
        };
        *seen = guard.0;
        guard.1
    }
}

/// Why a capture was not handed over.
#[derive(Debug)]
pub enum SendError {
    /// No daemon listens: keep the capture.
    Unreachable(String),
    /// The connection broke or timed out midway: try again.
    Broken(String),
    /// The daemon would not take it: keep the capture.
    Refused(String),
    /// The capture is not one (its first frame is no hello, or garbage).
    Corrupt(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unreachable(e) => write!(f, "the daemon is not reachable: {e}"),
            SendError::Broken(e) => write!(f, "the connection to the daemon broke: {e}"),
            SendError::Refused(e) => write!(f, "the daemon refused it: {e}"),
            SendError::Corrupt(e) => write!(f, "it is not a capture: {e}"),
        }
    }
}

fn connect(sockets: &[PathBuf]) -> Result<UnixStream, SendError> {
    let mut why = Vec::new();
    for socket in sockets {
        match UnixStream::connect(socket) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(ANSWER_TIMEOUT));
                let _ = s.set_write_timeout(Some(ANSWER_TIMEOUT));
                return Ok(s);
            }
            Err(e) => why.push(format!("{}: {e}", socket.display())),
        }
    }
    Err(SendError::Unreachable(why.join("; ")))
}

fn broken(e: io::Error) -> SendError {
    SendError::Broken(e.to_string())
}

fn answer(stream: &mut UnixStream) -> Result<DaemonFrame, SendError> {
    match read_frame::<DaemonFrame>(stream).map_err(broken)? {
        Read1::Frame(DaemonFrame::Refused { reason }) => Err(SendError::Refused(reason)),
        Read1::Frame(f) => Ok(f),
        Read1::Eof | Read1::Partial => Err(SendError::Broken("the daemon closed".into())),
    }
}

/// Sends the capture read through `file` in one connection (see the module doc).
/// `welcomed` is set once the daemon took the run's hello.
pub fn send_once(
    sockets: &[PathBuf],
    file: &mut File,
    follow: Option<&Follow>,
    welcomed: &mut bool,
) -> Result<(), SendError> {
    let mut stream = connect(sockets)?;
    file.seek(SeekFrom::Start(0)).map_err(broken)?;
    let hello = match read_frame::<ClientFrame>(file) {
        Ok(Read1::Frame(f @ ClientFrame::Hello(_))) => f,
        Ok(_) => return Err(SendError::Corrupt("no hello at its start".into())),
        Err(e) => return Err(SendError::Corrupt(e.to_string())),
    };
    write_frame(&mut stream, &hello).map_err(broken)?;
    let acked = match answer(&mut stream)? {
        DaemonFrame::Welcome { complete: true, .. } => return Ok(()),
        DaemonFrame::Welcome { acked, .. } => acked,
        other => return Err(SendError::Broken(format!("unexpected answer {other:?}"))),
    };
    *welcomed = true;
    if let Some(f) = follow {
        f.settle();
    }
    let mut seen = 0;
    let mut ended = follow.is_none();
    loop {
        let at = file.stream_position().map_err(broken)?;
        match read_frame::<ClientFrame>(file) {
            Ok(Read1::Frame(ClientFrame::Lines { seq, .. })) if seq <= acked => {}
            Ok(Read1::Frame(frame @ ClientFrame::Lines { .. })) => {
                write_frame(&mut stream, &frame).map_err(broken)?;
                match answer(&mut stream)? {
                    DaemonFrame::Acked { .. } => {}
                    other => return Err(SendError::Broken(format!("unexpected answer {other:?}"))),
                }
            }
            Ok(Read1::Frame(frame @ ClientFrame::End { .. })) => {
                return end(&mut stream, &frame);
            }
            Ok(Read1::Frame(ClientFrame::Hello(_))) => {
                return Err(SendError::Corrupt("a second hello".into()))
            }
            Ok(Read1::Eof | Read1::Partial) if !ended => {
                file.seek(SeekFrom::Start(at)).map_err(broken)?;
                if let Some(f) = follow {
                    ended = f.wait(&mut seen);
                }
            }
            // Complete, and no end in it: its exec died (or could not write
            // the end).
            Ok(Read1::Eof | Read1::Partial) => {
                return end(&mut stream, &outbox::end_of_dead_run(file));
            }
            Err(e) => return Err(SendError::Corrupt(e.to_string())),
        }
    }
}

fn end(stream: &mut UnixStream, frame: &ClientFrame) -> Result<(), SendError> {
    write_frame(stream, frame).map_err(broken)?;
    match answer(stream)? {
        DaemonFrame::Done => Ok(()),
        other => Err(SendError::Broken(format!("unexpected answer {other:?}"))),
    }
}

/// Connections that break before the daemon welcomed the run, in a row, after
/// which a sender gives up (the capture stays for a later flush).
const FAILED_CONNECTIONS: usize = 3;

/// Connections one sender makes at most (a daemon that welcomes and then always
/// breaks off must not keep it busy for ever).
const MAX_CONNECTIONS: usize = 1000;

/// Sends a capture, reconnecting when the connection breaks (the daemon closes
/// idle connections, so a quiet command's run reconnects at its next output),
/// and deletes it once the daemon has it all.
pub fn send_and_delete(
    sockets: &[PathBuf],
    path: &Path,
    file: &mut File,
    follow: Option<&Follow>,
) -> Result<(), SendError> {
    let mut last = None;
    let mut failed = 0;
    for _ in 0..MAX_CONNECTIONS {
        let mut welcomed = false;
        match send_once(sockets, file, follow, &mut welcomed) {
            Ok(()) => {
                let _ = std::fs::remove_file(path);
                return Ok(());
            }
            Err(SendError::Broken(e)) => last = Some(SendError::Broken(e)),
            Err(e) => return Err(e),
        }
        failed = if welcomed { 0 } else { failed + 1 };
        if failed >= FAILED_CONNECTIONS {
            break;
        }
    }
    Err(last.unwrap_or_else(|| SendError::Broken("gave up".into())))
}

/// What a flush did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    pub left: usize,
    /// Why the first capture left was not sent.
    pub why: Option<String>,
}

/// Sends every finished capture in `dir` but `skip` (the caller's own run),
/// oldest first; stops at the first sign that no daemon is there.
pub fn flush(sockets: &[PathBuf], dir: &Path, skip: Option<&Path>) -> Flushed {
    let mut out = Flushed::default();
    let mut unreachable = false;
    for path in outbox::pending(dir) {
        if Some(path.as_path()) == skip {
            continue;
        }
        if unreachable {
            out.left += 1;
            continue;
        }
        let mut file = match outbox::open_finished(&path) {
            Ok(Some(f)) => f,
            // Its run goes on; its own exec sends it.
            Ok(None) => continue,
            Err(e) => {
                out.why.get_or_insert(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match send_and_delete(sockets, &path, &mut file, None) {
            Ok(()) => out.sent += 1,
            Err(SendError::Corrupt(e)) => {
                // Set aside, so it is not tried at every exec.
                let _ = std::fs::rename(&path, path.with_extension("cap.bad"));
                out.why.get_or_insert(format!(
                    "{}: not a capture ({e}); renamed to .bad",
                    path.display()
                ));
            }
            Err(e) => {
                unreachable = matches!(e, SendError::Unreachable(_));
                out.left += 1;
                out.why.get_or_insert(format!("{}: {e}", path.display()));
            }
        }
    }
    if out.sent > 0 {
        outbox::daemon_answered(dir);
    }
    out
}
