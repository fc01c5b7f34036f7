//! Fuzzes the exec socket's frame decoder (`src/source/exec/protocol.rs`) with
//! arbitrary bytes as a stream of frames, read as the daemon reads a client's
//! (`ClientFrame`) and as `exec` reads the daemon's (`DaemonFrame`), by both
//! `read_frame` (captures in an outbox) and `read_frame_async` (the socket).
//! Checks, beyond "never panics":
//!
//! - the length rule: one frame never reads more than its 4-byte header and the
//!   length it names, never allocates more than `MAX_FRAME` bytes at once (a
//!   counting allocator watches every allocation made while reading), and a
//!   length over `MAX_FRAME` is refused after the header alone;
//! - the outcome matches the bytes: `Eof` exactly when nothing is left,
//!   `Partial` exactly when fewer bytes are left than the header or its length
//!   needs (and then all of them were read), `Frame` exactly when the body is
//!   JSON of the frame type, an error otherwise (`InvalidData`);
//! - the async reader agrees (a cut header is its clean end, a cut body an
//!   `UnexpectedEof`);
//! - a decoded frame encodes to bytes that read back as the same frame.
//!
//! `protocol.rs` is compiled straight in; it needs only serde, serde_json and
//! tokio's I/O traits.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::future::Future;
use std::io::{self, Read};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[path = "../../src/source/exec/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use protocol::{encode, read_frame, read_frame_async, ClientFrame, DaemonFrame, Read1, MAX_FRAME};

/// The largest single allocation since the last [`largest_since`].
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn largest_since_reset() -> usize {
    LARGEST.swap(0, Ordering::Relaxed)
}

/// A reader over bytes that counts what it hands out, a few bytes at a time
/// (as a socket may), so `read_full`'s loop is exercised.
struct Counted<'a> {
    rest: &'a [u8],
    read: Cell<usize>,
    step: usize,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.rest.len()).min(self.step);
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        self.read.set(self.read.get() + n);
        Ok(n)
    }
}

/// Polls a future that never waits (its reader is a byte slice) to its end.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Reads `data` frame by frame as `T` until it ends or fails, checking each.
fn read_all<T>(data: &[u8], step: usize)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let mut at = 0;
    loop {
        let rest = &data[at..];
        let mut r = Counted {
            rest,
            read: Cell::new(0),
            step,
        };
        largest_since_reset();
        let got = read_frame::<T>(&mut r);
        let largest = largest_since_reset();
        let read = r.read.get();
        let declared = rest
            .get(..4)
            .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize);
        assert!(read <= 4 + MAX_FRAME, "read {read} bytes for one frame");
        match declared {
            Some(len) if len <= MAX_FRAME => assert!(read <= 4 + len),
            Some(_) => assert_eq!(read, 4, "an oversized frame's body was read"),
            None => {}
        }
        // serde_json's own buffers for one decoded value are far below
        // MAX_FRAME for bodies this size; the body buffer is the big one.
        assert!(largest <= MAX_FRAME, "an allocation of {largest} bytes");

        let mut async_reader = rest;
        let async_got = block_on(read_frame_async::<T, _>(&mut async_reader));
        match (&got, declared) {
            (Ok(Read1::Eof), _) => {
                assert!(rest.is_empty(), "Eof with {} bytes left", rest.len());
                assert!(matches!(async_got, Ok(None)));
                return;
            }
            (Ok(Read1::Partial), None) => {
                assert!(!rest.is_empty() && rest.len() < 4);
                assert_eq!(read, rest.len());
                assert!(matches!(async_got, Ok(None)), "{async_got:?}");
                return;
            }
            (Ok(Read1::Partial), Some(len)) => {
                assert!(len <= MAX_FRAME && rest.len() < 4 + len);
                assert_eq!(read, rest.len());
                match async_got {
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
                    other => panic!("async read of a cut body: {other:?}"),
                }
                return;
            }
            (Ok(Read1::Frame(frame)), Some(len)) => {
                assert_eq!(read, 4 + len);
                let body = &rest[4..4 + len];
                assert!(serde_json::from_slice::<T>(body).is_ok());
                match &async_got {
                    Ok(Some(f)) => assert_eq!(f, frame),
                    other => panic!("async read of a whole frame: {other:?}"),
                }
                let bytes = encode(frame).expect("a decoded frame encodes");
                match read_frame::<T>(&mut &bytes[..]) {
                    Ok(Read1::Frame(again)) => assert_eq!(&again, frame),
                    other => panic!("{frame:?} encoded as {bytes:?} reads back as {other:?}"),
                }
                at += read;
            }
            (Ok(Read1::Frame(_)), None) => panic!("a frame without a header"),
            (Err(e), declared) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                let len = declared.expect("an error before a whole header");
                if len <= MAX_FRAME {
                    assert_eq!(read, 4 + len);
                    assert!(serde_json::from_slice::<T>(&rest[4..4 + len]).is_err());
                }
                match async_got {
                    Err(a) => assert_eq!(a.kind(), io::ErrorKind::InvalidData),
                    other => panic!("async read of a bad frame: {other:?}"),
                }
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks how many bytes each read returns (1 to 8, or all).
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let step = match first % 9 {
        0 => usize::MAX,
        n => usize::from(n),
    };
    read_all::<ClientFrame>(data, step);
    read_all::<DaemonFrame>(data, step);
});
