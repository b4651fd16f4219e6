//! How much the wire decoders allocate, measured by a counting global allocator (which is
//! why this lives in its own test binary). Pins two promises of `rrmq::protocol`:
//! a small body never makes a decoder allocate a lot, whatever its length headers claim;
//! and a valid request's message is copied out of the body once, not more.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use rrmq::protocol::{decode_reply, decode_request, Limits};

/// Counts the bytes allocated by the current thread (each test runs on its own thread).
struct Counting;

thread_local! {
    static ALLOCATED_BYTES: Cell<usize> = const { Cell::new(0) };
    static LARGEST_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = ALLOCATED_BYTES.try_with(|total| total.set(total.get().saturating_add(size)));
    let _ = LARGEST_BYTES.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        System.realloc(pointer, layout, new_size)
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        System.dealloc(pointer, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `work` and returns (total bytes allocated, largest single allocation) meanwhile.
fn measure(work: impl FnOnce()) -> (usize, usize) {
    ALLOCATED_BYTES.with(|total| total.set(0));
    LARGEST_BYTES.with(|largest| largest.set(0));
    work();
    (
        ALLOCATED_BYTES.with(Cell::get),
        LARGEST_BYTES.with(Cell::get),
    )
}

/// `{"type": "message", "method": "PUT", "topic": "t", "message": <value>}` in MessagePack.
fn message_put(value: &[u8]) -> Vec<u8> {
    let mut body = vec![0x84];
    for part in ["type", "message", "method", "PUT", "topic", "t", "message"] {
        body.push(0xa0 | part.len() as u8);
        body.extend(part.as_bytes());
    }
    body.extend(value);
    body
}

#[test]
fn lying_headers_do_not_make_decode_request_allocate() {
    let four_gib = [0xff, 0xff, 0xff, 0xff];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "str32 claiming 4 GiB",
            message_put(&[&[0xdb][..], &four_gib, b"abc"].concat()),
        ),
        (
            "bin32 claiming 4 GiB",
            message_put(&[&[0xc6][..], &four_gib, b"abc"].concat()),
        ),
        (
            "ext32 claiming 4 GiB",
            message_put(&[&[0xc9][..], &four_gib, b"abc"].concat()),
        ),
        (
            "array32 claiming 4 billion items",
            message_put(&[&[0xdd][..], &four_gib, &[0xc0]].concat()),
        ),
        (
            "map32 claiming 4 billion pairs",
            [&[0xdf][..], &four_gib, &[0xc0, 0xc0]].concat(),
        ),
        (
            "str32 key claiming 4 GiB",
            [&[0x81, 0xdb][..], &four_gib, b"type"].concat(),
        ),
        (
            "a million levels of nesting",
            message_put(&[0x91; 1_000_000]),
        ),
    ];
    for (name, body) in cases {
        let mut result = None;
        let (total_bytes, _) = measure(|| result = Some(decode_request(&body, &Limits::default())));
        assert!(
            matches!(result, Some(Err(_))),
            "case {name:?}: accepted {result:?}"
        );
        // The error message is all that is allocated.
        assert!(
            total_bytes < 1024,
            "case {name:?}: allocated {total_bytes} bytes"
        );
    }
}

#[test]
fn lying_headers_do_not_make_decode_reply_allocate_much() {
    let four_gib = [0xff, 0xff, 0xff, 0xff];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "str32 claiming 4 GiB",
            [&[0x81, 0xa7][..], b"message", &[0xdb], &four_gib, b"abc"].concat(),
        ),
        (
            "bin32 claiming 4 GiB",
            [&[0x81, 0xa7][..], b"message", &[0xc6], &four_gib, b"abc"].concat(),
        ),
        (
            "array32 claiming 4 billion items",
            [&[0x81, 0xa6][..], b"topics", &[0xdd], &four_gib, &[0xc0]].concat(),
        ),
        (
            "map32 claiming 4 billion pairs",
            [&[0xdf][..], &four_gib, &[0xc0, 0xc0]].concat(),
        ),
        (
            "a million levels of nesting",
            [&[0x81, 0xa1, b'x'][..], &[0x91; 1_000_000]].concat(),
        ),
    ];
    for (name, body) in cases {
        let mut result = None;
        let (total_bytes, largest_bytes) = measure(|| result = Some(decode_reply(&body)));
        assert!(
            matches!(result, Some(Err(_))),
            "case {name:?}: accepted {result:?}"
        );
        // rmpv reserves at most 64 KiB for a string or binary before reading it.
        assert!(
            largest_bytes <= 64 * 1024,
            "case {name:?}: one allocation of {largest_bytes} bytes"
        );
        assert!(
            total_bytes < 128 * 1024,
            "case {name:?}: allocated {total_bytes} bytes"
        );
    }
}

#[test]
fn a_valid_message_is_copied_out_of_the_body_once() {
    let message_bytes = 1024 * 1024;
    let text = "m".repeat(message_bytes);
    let mut msgpack_text = vec![0xdb];
    msgpack_text.extend((message_bytes as u32).to_be_bytes());
    msgpack_text.extend(text.as_bytes());
    let mut msgpack_binary = vec![0xc6];
    msgpack_binary.extend((message_bytes as u32).to_be_bytes());
    msgpack_binary.extend(text.as_bytes());
    let json = format!(r#"{{"type":"message","method":"PUT","topic":"t","message":"{text}"}}"#);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("MessagePack str", message_put(&msgpack_text)),
        ("MessagePack bin", message_put(&msgpack_binary)),
        ("JSON string", json.into_bytes()),
    ];
    for (name, body) in cases {
        let mut result = None;
        let (total_bytes, _) = measure(|| result = Some(decode_request(&body, &Limits::default())));
        assert!(matches!(result, Some(Ok(_))), "case {name:?}: {result:?}");
        // At least the one copy: this also proves the counter sees the decoder's allocations.
        assert!(
            total_bytes >= message_bytes,
            "case {name:?}: only {total_bytes} bytes counted"
        );
        assert!(
            total_bytes < message_bytes + 1024,
            "case {name:?}: allocated {total_bytes} bytes for a {message_bytes}-byte message"
        );
    }
}
