//! The tunnel's wire format: the client sidecar's preface (which port of the peer's
//! pod it wants) and the peer sidecar's one answer (connected, or why not), both
//! binary, versioned and fixed in layout, so that neither can be taken for
//! anything an application sends. Pure functions over bytes; the sockets are in
//! [`super::dial`] (client) and [`super::listen`] (server).
//!
//! Preface, client → server:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "\0WEFTTUN" (a NUL first: no text protocol, TLS or HTTP/2 starts so)
//!      8     1  version (1)
//!      9     2  target port, big-endian
//!     11     2  length of the extension block that follows, big-endian (at most 256)
//!     13     n  extension block: reserved for later fields; version 1 sends none and
//!               skips what it receives, so a newer client can add fields without
//!               a new version
//! ```
//!
//! Answer, server → client, always [`ANSWER_LEN`] bytes, so that the client reads
//! exactly it and never a byte of the application's that may follow it (a banner):
//!
//! ```text
//!      0     8  magic "\0WEFTACK"
//!      8     1  the server's version
//!      9     1  status: 0 connected, 1 refused, 2 timeout, 3 error (the app's connect),
//!               4 forbidden (no such target through the tunnel), 5 unsupported version
//! ```
//!
//! The two magics differ, so a peer that echoes bytes back is never read as
//! answering. Issue 15 wraps this same exchange in mTLS: the format is what flows
//! inside the TLS session.

/// The preface's first bytes.
pub const PREFACE_MAGIC: [u8; 8] = *b"\0WEFTTUN";
/// The answer's first bytes.
pub const ANSWER_MAGIC: [u8; 8] = *b"\0WEFTACK";
/// The version this proxy speaks.
pub const VERSION: u8 = 1;
/// The preface's fixed part: magic, version, port, extension length.
pub const PREFACE_HEAD: usize = 13;
/// The longest extension block accepted.
pub const MAX_EXTENSIONS: usize = 256;
/// The answer's length.
pub const ANSWER_LEN: usize = 10;

/// What a client asks for: the peer pod's application port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preface {
    pub port: u16,
}

/// Why bytes are no preface this proxy accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefaceError {
    #[error("not a tunnel preface (bad magic)")]
    BadMagic,
    /// A version this proxy does not speak; it answers with its own.
    #[error("unsupported tunnel version {0}")]
    UnsupportedVersion(u8),
    #[error("extension block of {0} bytes (at most {MAX_EXTENSIONS})")]
    Oversized(usize),
}

/// How far a prefix of the received bytes goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Consistent so far; the whole preface is this many bytes (`PREFACE_HEAD` until
    /// the head is in).
    NeedMore(usize),
    /// A whole preface of `len` bytes.
    Complete { preface: Preface, len: usize },
}

impl Preface {
    /// The bytes a version 1 client sends.
    pub fn encode(self) -> [u8; PREFACE_HEAD] {
        let mut out = [0u8; PREFACE_HEAD];
        out[..8].copy_from_slice(&PREFACE_MAGIC);
        out[8] = VERSION;
        out[9..11].copy_from_slice(&self.port.to_be_bytes());
        // 11..13: no extensions.
        out
    }

    /// Decodes the first bytes a client sent. Garbage is refused as soon as a byte
    /// disagrees with the magic, so a stray client is not waited for.
    pub fn decode(buf: &[u8]) -> Result<Decoded, PrefaceError> {
        let magic = buf.len().min(PREFACE_MAGIC.len());
        if buf[..magic] != PREFACE_MAGIC[..magic] {
            return Err(PrefaceError::BadMagic);
        }
        if let Some(&version) = buf.get(8) {
            if version != VERSION {
                return Err(PrefaceError::UnsupportedVersion(version));
            }
        }
        if buf.len() < PREFACE_HEAD {
            return Ok(Decoded::NeedMore(PREFACE_HEAD));
        }
        let port = u16::from_be_bytes([buf[9], buf[10]]);
        let extensions = usize::from(u16::from_be_bytes([buf[11], buf[12]]));
        if extensions > MAX_EXTENSIONS {
            return Err(PrefaceError::Oversized(extensions));
        }
        let len = PREFACE_HEAD + extensions;
        if buf.len() < len {
            return Ok(Decoded::NeedMore(len));
        }
        Ok(Decoded::Complete {
            preface: Preface { port },
            len,
        })
    }
}

/// The server's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The application accepted: what follows is its bytes.
    Connected,
    /// The application's port refused the connection (nothing listens).
    Refused,
    /// The application did not accept within the connect timeout.
    Timeout,
    /// Any other failure to connect to the application.
    Error,
    /// The target is not reachable through the tunnel (a port of the proxy itself,
    /// or 0).
    Forbidden,
    /// The server does not speak the client's version (the answer carries its own).
    UnsupportedVersion,
    /// The caller may not reach the target (the service's authorization); the
    /// application was not dialled. An older client reads it as [`Status::Error`].
    Unauthorized,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Connected => 0,
            Status::Refused => 1,
            Status::Timeout => 2,
            Status::Error => 3,
            Status::Forbidden => 4,
            Status::UnsupportedVersion => 5,
            Status::Unauthorized => 6,
        }
    }

    fn of_code(code: u8) -> Option<Status> {
        Some(match code {
            0 => Status::Connected,
            1 => Status::Refused,
            2 => Status::Timeout,
            3 => Status::Error,
            4 => Status::Forbidden,
            5 => Status::UnsupportedVersion,
            6 => Status::Unauthorized,
            _ => return None,
        })
    }

    /// The answer's bytes.
    pub fn encode(self) -> [u8; ANSWER_LEN] {
        let mut out = [0u8; ANSWER_LEN];
        out[..8].copy_from_slice(&ANSWER_MAGIC);
        out[8] = VERSION;
        out[9] = self.code();
        out
    }
}

/// What an answer says, read by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A tunnel answer (of any version: the status codes are kept across versions).
    Status(Status),
    /// A tunnel answer with a status this version does not know: a failure.
    UnknownStatus(u8),
    /// Not a tunnel answer at all: whatever answered speaks no tunnel.
    NotTunnel,
}

impl Answer {
    pub fn decode(buf: &[u8; ANSWER_LEN]) -> Answer {
        if buf[..8] != ANSWER_MAGIC {
            return Answer::NotTunnel;
        }
        match Status::of_code(buf[9]) {
            Some(status) => Answer::Status(status),
            None => Answer::UnknownStatus(buf[9]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preface_round_trips() {
        for port in [1, 80, 8080, 65535] {
            let bytes = Preface { port }.encode();
            assert_eq!(
                Preface::decode(&bytes),
                Ok(Decoded::Complete {
                    preface: Preface { port },
                    len: PREFACE_HEAD
                })
            );
        }
    }

    #[test]
    fn a_truncated_preface_asks_for_the_rest() {
        let bytes = Preface { port: 8080 }.encode();
        for k in 0..PREFACE_HEAD {
            assert_eq!(
                Preface::decode(&bytes[..k]),
                Ok(Decoded::NeedMore(PREFACE_HEAD)),
                "{k} bytes"
            );
        }
    }

    #[test]
    fn extensions_are_skipped_and_bounded() {
        let mut bytes = Preface { port: 9000 }.encode().to_vec();
        bytes[11..13].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(
            Preface::decode(&bytes),
            Ok(Decoded::NeedMore(PREFACE_HEAD + 3)),
            "the extension block is waited for"
        );
        bytes.extend_from_slice(&[7, 1, 42]);
        assert_eq!(
            Preface::decode(&bytes),
            Ok(Decoded::Complete {
                preface: Preface { port: 9000 },
                len: PREFACE_HEAD + 3
            })
        );
        bytes[11..13].copy_from_slice(&(MAX_EXTENSIONS as u16).to_be_bytes());
        assert!(matches!(Preface::decode(&bytes), Ok(Decoded::NeedMore(_))));
        bytes[11..13].copy_from_slice(&(MAX_EXTENSIONS as u16 + 1).to_be_bytes());
        assert_eq!(
            Preface::decode(&bytes),
            Err(PrefaceError::Oversized(MAX_EXTENSIONS + 1))
        );
        bytes[11..13].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(Preface::decode(&bytes), Err(PrefaceError::Oversized(65535)));
    }

    #[test]
    fn anything_else_is_refused_at_its_first_wrong_byte() {
        for garbage in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
            b"\0",
            b"\0WEFTACK\x01\x00",
            b"\0WEFTTUX",
        ] {
            let first_wrong = garbage.iter().zip(PREFACE_MAGIC).position(|(a, b)| *a != b);
            if first_wrong.is_none() {
                // A correct start ("\0") is waited on.
                assert_eq!(
                    Preface::decode(garbage),
                    Ok(Decoded::NeedMore(PREFACE_HEAD))
                );
                continue;
            }
            assert_eq!(
                Preface::decode(garbage),
                Err(PrefaceError::BadMagic),
                "{garbage:?}"
            );
            let k = first_wrong.unwrap_or_default() + 1;
            assert_eq!(Preface::decode(&garbage[..k]), Err(PrefaceError::BadMagic));
        }
        assert_eq!(Preface::decode(b"x"), Err(PrefaceError::BadMagic));
    }

    #[test]
    fn another_version_is_named() {
        let mut bytes = Preface { port: 80 }.encode();
        bytes[8] = 2;
        assert_eq!(
            Preface::decode(&bytes[..9]),
            Err(PrefaceError::UnsupportedVersion(2)),
            "decided as soon as the version byte is in"
        );
        assert_eq!(
            Preface::decode(&bytes),
            Err(PrefaceError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn answers_round_trip_and_strangers_are_no_tunnel() {
        for status in [
            Status::Connected,
            Status::Refused,
            Status::Timeout,
            Status::Error,
            Status::Forbidden,
            Status::UnsupportedVersion,
            Status::Unauthorized,
        ] {
            assert_eq!(Answer::decode(&status.encode()), Answer::Status(status));
        }
        let mut unknown = Status::Connected.encode();
        unknown[9] = 200;
        assert_eq!(Answer::decode(&unknown), Answer::UnknownStatus(200));
        // An HTTP answer from an older sidecar, or our own preface echoed back.
        assert_eq!(Answer::decode(b"HTTP/1.1 5"), Answer::NotTunnel);
        let echoed: [u8; ANSWER_LEN] = Preface { port: 0 }.encode()[..ANSWER_LEN]
            .try_into()
            .expect("10 bytes");
        assert_eq!(Answer::decode(&echoed), Answer::NotTunnel);
    }
}
