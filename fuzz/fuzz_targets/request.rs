//! Fuzz target: the request head parser and the chunked body decoder, on
//! arbitrary bytes, as a connection applies them.
//!
//! Beyond "no panic", each input checks the properties a connection relies
//! on, so a wrong answer is a crash too:
//! - a head parsed from a buffer is parsed identically from exactly its own
//!   bytes, and one byte fewer is never a complete head (a head ends at its
//!   blank line, wherever the reads split it);
//! - its target splits into path and query (a head that reaches a service
//!   always has one);
//! - the chunked decoder gives the same body, the same end and the same
//!   verdict whether the input arrives whole or in pieces (the pieces' sizes
//!   come from the input's first byte), fed as a connection feeds it: the
//!   unconsumed rest, then more bytes appended (a refusal may name another
//!   reason, never another status);
//! - framing a stream of requests never reads past it.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/http/parse.rs"]
mod parse;

use parse::{frame_all, parse_head, split_target, ChunkedDecoder};

const MAX_HEAD: usize = 8192;
const MAX_BODY: u64 = 1 << 20;

fn check_head(data: &[u8]) {
    let Ok(Some(head)) = parse_head(data, MAX_HEAD) else {
        return;
    };
    assert!(head.len > 0 && head.len <= data.len());
    let again = parse_head(&data[..head.len], MAX_HEAD)
        .expect("a head's own bytes parse")
        .expect("a head's own bytes are complete");
    assert_eq!(
        (
            &again.method,
            &again.target,
            again.minor,
            &again.headers,
            again.body,
            again.len
        ),
        (
            &head.method,
            &head.target,
            head.minor,
            &head.headers,
            head.body,
            head.len
        )
    );
    assert!(
        !matches!(parse_head(&data[..head.len - 1], MAX_HEAD), Ok(Some(_))),
        "a head is complete one byte before its end"
    );
    split_target(&head.target).expect("a parsed head's target splits");
}

fn check_chunked(data: &[u8]) {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let mut whole = ChunkedDecoder::default();
    let mut whole_body = Vec::new();
    let whole_result = whole.decode(input, &mut whole_body, MAX_BODY);

    // Piecewise: append `step`-sized pieces to a buffer, decode, keep the
    // unconsumed rest, as a connection's read buffer does.
    let step = usize::from(step % 16) + 1;
    let mut piece = ChunkedDecoder::default();
    let mut piece_body = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut consumed = 0usize;
    let mut piece_result = Ok(0);
    for chunk in input.chunks(step) {
        buf.extend_from_slice(chunk);
        match piece.decode(&buf, &mut piece_body, MAX_BODY) {
            Ok(used) => {
                assert!(used <= buf.len());
                consumed += used;
                buf.drain(..used);
                if piece.is_done() {
                    break;
                }
            }
            Err(e) => {
                piece_result = Err(e);
                break;
            }
        }
    }
    match (&whole_result, &piece_result) {
        (Ok(used), Ok(_)) => {
            assert!(*used <= input.len());
            assert_eq!(whole.is_done(), piece.is_done());
            assert_eq!(whole_body, piece_body);
            if whole.is_done() {
                assert_eq!(*used, consumed, "the body ends at the same byte");
            }
            assert_eq!(whole.total as usize, whole_body.len());
        }
        // Both refuse, with the same status (the reason named may differ:
        // a bare LF is seen before the line it ends is complete).
        (Err(a), Err(b)) => assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b)),
        // A line longer than the decoder's limit may be refused whole but
        // not yet when only part of it has arrived; any other difference
        // is a framing that depends on how the bytes were split.
        (Err(_), Ok(_)) if !piece.is_done() => {}
        _ => panic!("whole: {whole_result:?}, in pieces: {piece_result:?}"),
    }
}

fn check_frames(data: &[u8]) {
    let (frames, _) = frame_all(data, MAX_HEAD, MAX_BODY);
    let body_bytes: usize = frames.iter().map(|f| f.body.len()).sum();
    assert!(body_bytes <= data.len());
    for f in &frames {
        split_target(&f.target).expect("a framed request's target splits");
    }
}

fuzz_target!(|data: &[u8]| {
    check_head(data);
    check_chunked(data);
    check_frames(data);
});
