//! The wire protocol between a client and `coffer serve`: frames and the
//! messages they carry. Owns the byte layout and its limits; no sockets here
//! (see `net`). Documented in `docs/protocol.md`.
//!
//! A frame is `len (u32 LE) || tag (u16 LE) || payload`, where `len` counts
//! the tag and the payload and never exceeds [`MAX_FRAME_BYTES`]; the payload
//! is a CBOR map of the message's fields. Bulk bytes (packs, snapshots, key
//! files) follow their frame raw on the same stream, with their length
//! announced in the frame.

use serde::{Deserialize, Serialize};

use crate::format::{cbor_decode, cbor_encode, FormatError};
use crate::id::{PackId, SnapshotGroup, SnapshotId};
use crate::retention::Stamp;

/// ALPN protocol id: names the protocol and its version.
pub const ALPN: &[u8] = b"coffer/1";
/// Version exchanged in `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame (tag and payload).
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Bytes of the frame head (`len || tag`).
pub const HEAD_LEN: usize = 6;
/// Ids per `Packs` / `Snapshots` batch, so a batch stays far below the cap.
pub const LIST_BATCH: usize = 8192;

/// Why the server refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The object does not exist (in this namespace).
    NotFound,
    /// The name exists already; nothing was replaced.
    Conflict,
    /// Not allowed: append-only, wrong namespace, missing permission.
    Denied,
    /// The bytes are malformed or do not match their name.
    Invalid,
    /// Over a size limit or quota.
    TooLarge,
    /// A protocol violation (unknown tag, no `Hello` first).
    Protocol,
    /// The server failed (disk, I/O).
    Internal,
}

/// Requests, client to server. Tags never change meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// 0x0001: first request of a connection: version and namespace.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
        /// The namespace the client means to use.
        namespace: String,
    },
    /// 0x0002: read the config; answered by `Bytes`.
    ReadConfig,
    /// 0x0003: write the config once; `len` bytes follow.
    WriteConfig {
        /// Bytes that follow.
        len: u64,
    },
    /// 0x0004: list key file names; answered by `Names`.
    ListKeys,
    /// 0x0005: read a key file; answered by `Bytes`.
    ReadKey {
        /// Key file name.
        name: String,
    },
    /// 0x0006: write a new key file; `len` bytes follow.
    WriteKey {
        /// Key file name.
        name: String,
        /// Bytes that follow.
        len: u64,
    },
    /// 0x0007: remove a key file (refused unless permitted).
    RemoveKey {
        /// Key file name.
        name: String,
    },
    /// 0x0008: upload a pack; `len` bytes follow. Answered by `Stored`.
    PutPack {
        /// The pack's name: BLAKE3 of the bytes that follow.
        id: PackId,
        /// Bytes that follow.
        len: u64,
    },
    /// 0x0009: size of a pack; answered by `Size`.
    PackSize {
        /// The pack.
        id: PackId,
    },
    /// 0x000a: read a range of a pack; answered by `Bytes`.
    ReadPack {
        /// The pack.
        id: PackId,
        /// Offset of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
    },
    /// 0x000b: list packs; answered by `Packs` batches and `End`.
    ListPacks,
    /// 0x000c: commit a snapshot file; `len` bytes follow. Answered by `Committed`.
    WriteSnapshot {
        /// Bytes that follow.
        len: u64,
        /// The backup job it belongs to, for retention (absent from older
        /// clients: their snapshots form one group).
        group: Option<SnapshotGroup>,
    },
    /// 0x000d: list snapshots; answered by `Snapshots` batches and `End`.
    ListSnapshots,
    /// 0x000e: read a snapshot file; answered by `Bytes`.
    ReadSnapshot {
        /// The snapshot.
        id: SnapshotId,
    },
    /// 0x000f: a snapshot's stamp; answered by `Stamped`.
    Stamp {
        /// The snapshot.
        id: SnapshotId,
    },
    /// 0x0010: forget a snapshot (refused inside its lock window); answered by `Ok`.
    Forget {
        /// The snapshot.
        id: SnapshotId,
    },
    /// 0x0012: repair a pack a reader found damaged, from parity; answered by `Repaired`.
    Repair {
        /// The pack.
        id: PackId,
    },
    /// 0x0011: extend a snapshot's lock, or put it on legal hold; answered by `Stamped`.
    Lock {
        /// The snapshot.
        id: SnapshotId,
        /// Lock it at least until this time (seconds since the epoch).
        until: i64,
        /// Put it on legal hold.
        hold: bool,
    },
}

/// Responses, server to client. Tags never change meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// 0x8001: the request failed.
    Error {
        /// Why.
        code: ErrorCode,
        /// For people.
        message: String,
    },
    /// 0x8002: answer to `Hello`.
    Hello {
        /// The server's [`PROTOCOL_VERSION`].
        version: u32,
        /// The namespace granted.
        namespace: String,
    },
    /// 0x8003: done.
    Ok,
    /// 0x8004: `len` raw bytes follow.
    Bytes {
        /// Bytes that follow.
        len: u64,
    },
    /// 0x8005: key file names.
    Names {
        /// The names.
        names: Vec<String>,
    },
    /// 0x8006: answer to `PutPack`: whether the pack is new (false: a pack of
    /// that name existed and was kept).
    Stored {
        /// Whether it was new.
        created: bool,
    },
    /// 0x8007: answer to `PackSize`.
    Size {
        /// The size, or none when the pack does not exist.
        size: Option<u64>,
    },
    /// 0x8008: a batch of packs and sizes.
    Packs {
        /// Names and sizes.
        packs: Vec<(PackId, u64)>,
    },
    /// 0x8009: a batch of snapshot ids.
    Snapshots {
        /// Ids.
        ids: Vec<SnapshotId>,
    },
    /// 0x800a: the end of a listing.
    End,
    /// 0x800b: a snapshot was committed.
    Committed {
        /// Its id.
        id: SnapshotId,
    },
    /// 0x800d: whether a pack is sound after a repair.
    Repaired {
        /// Sound now.
        ok: bool,
    },
    /// 0x800c: a snapshot's stamp, by the server's clock.
    Stamped {
        /// The stamp.
        stamp: Stamp,
    },
}

#[derive(Serialize, Deserialize)]
struct HelloP {
    version: u32,
    namespace: String,
}
#[derive(Serialize, Deserialize)]
struct LenP {
    len: u64,
}
/// `WriteSnapshot`'s payload: `group` is left out when absent, so the bytes
/// stay those of protocol version 1 for a client that sends none, and an
/// older server ignores it.
#[derive(Serialize, Deserialize)]
struct SnapLenP {
    len: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<SnapshotGroup>,
}
#[derive(Serialize, Deserialize)]
struct NameP {
    name: String,
}
#[derive(Serialize, Deserialize)]
struct NameLenP {
    name: String,
    len: u64,
}
#[derive(Serialize, Deserialize)]
struct PackLenP {
    id: PackId,
    len: u64,
}
#[derive(Serialize, Deserialize)]
struct PackP {
    id: PackId,
}
#[derive(Serialize, Deserialize)]
struct RangeP {
    id: PackId,
    offset: u64,
    len: u64,
}
#[derive(Serialize, Deserialize)]
struct SnapP {
    id: SnapshotId,
}
#[derive(Serialize, Deserialize)]
struct OkP {
    ok: bool,
}
#[derive(Serialize, Deserialize)]
struct LockP {
    id: SnapshotId,
    until: i64,
    hold: bool,
}
#[derive(Serialize, Deserialize)]
struct StampP {
    stamp: Stamp,
}
#[derive(Serialize, Deserialize)]
struct ErrorP {
    code: ErrorCode,
    message: String,
}
#[derive(Serialize, Deserialize)]
struct NamesP {
    names: Vec<String>,
}
#[derive(Serialize, Deserialize)]
struct StoredP {
    created: bool,
}
#[derive(Serialize, Deserialize)]
struct SizeP {
    size: Option<u64>,
}
#[derive(Serialize, Deserialize)]
struct PacksP {
    packs: Vec<(PackId, u64)>,
}
#[derive(Serialize, Deserialize)]
struct SnapsP {
    ids: Vec<SnapshotId>,
}

const EMPTY: &[u8] = &[];

fn frame(tag: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN + payload.len());
    out.extend_from_slice(&((payload.len() + 2) as u32).to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads a frame head: returns the tag and the payload length, refusing a
/// frame over [`MAX_FRAME_BYTES`] before anything is allocated.
pub fn decode_head(head: &[u8; HEAD_LEN]) -> Result<(u16, usize), FormatError> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FormatError::TooLarge {
            what: "frame",
            len: len as u64,
            max: MAX_FRAME_BYTES as u64,
        });
    }
    if len < 2 {
        return Err(FormatError::invalid("frame", "length shorter than its tag"));
    }
    Ok((u16::from_le_bytes([head[4], head[5]]), len - 2))
}

/// Splits a whole frame held in memory into tag and payload.
pub fn split_frame(buf: &[u8]) -> Result<(u16, &[u8]), FormatError> {
    let head: &[u8; HEAD_LEN] =
        buf.get(..HEAD_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(FormatError::Truncated {
                what: "frame",
                need: HEAD_LEN,
                have: buf.len(),
            })?;
    let (tag, len) = decode_head(head)?;
    let payload = buf
        .get(HEAD_LEN..HEAD_LEN + len)
        .ok_or(FormatError::Truncated {
            what: "frame",
            need: HEAD_LEN + len,
            have: buf.len(),
        })?;
    if buf.len() != HEAD_LEN + len {
        return Err(FormatError::invalid(
            "frame",
            "trailing bytes after the frame",
        ));
    }
    Ok((tag, payload))
}

impl Request {
    /// What the request would change in the namespace, for a refusal to
    /// a read-only identity; `None` for the requests that only read.
    pub fn writes(&self) -> Option<&'static str> {
        match self {
            Request::Hello { .. }
            | Request::ReadConfig
            | Request::ListKeys
            | Request::ReadKey { .. }
            | Request::PackSize { .. }
            | Request::ReadPack { .. }
            | Request::ListPacks
            | Request::ListSnapshots
            | Request::ReadSnapshot { .. }
            | Request::Stamp { .. } => None,
            Request::WriteConfig { .. } => Some("write its config"),
            Request::WriteKey { .. } => Some("write key files"),
            Request::RemoveKey { .. } => Some("remove key files"),
            Request::PutPack { .. } => Some("upload packs"),
            Request::WriteSnapshot { .. } => Some("commit snapshots"),
            Request::Forget { .. } => Some("forget snapshots"),
            Request::Lock { .. } => Some("lock snapshots"),
            Request::Repair { .. } => Some("repair packs"),
        }
    }

    /// Encodes the request as a frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Hello { version, namespace } => frame(
                0x0001,
                &cbor_encode(&HelloP {
                    version: *version,
                    namespace: namespace.clone(),
                }),
            ),
            Request::ReadConfig => frame(0x0002, EMPTY),
            Request::WriteConfig { len } => frame(0x0003, &cbor_encode(&LenP { len: *len })),
            Request::ListKeys => frame(0x0004, EMPTY),
            Request::ReadKey { name } => frame(0x0005, &cbor_encode(&NameP { name: name.clone() })),
            Request::WriteKey { name, len } => frame(
                0x0006,
                &cbor_encode(&NameLenP {
                    name: name.clone(),
                    len: *len,
                }),
            ),
            Request::RemoveKey { name } => {
                frame(0x0007, &cbor_encode(&NameP { name: name.clone() }))
            }
            Request::PutPack { id, len } => {
                frame(0x0008, &cbor_encode(&PackLenP { id: *id, len: *len }))
            }
            Request::PackSize { id } => frame(0x0009, &cbor_encode(&PackP { id: *id })),
            Request::ReadPack { id, offset, len } => frame(
                0x000a,
                &cbor_encode(&RangeP {
                    id: *id,
                    offset: *offset,
                    len: *len,
                }),
            ),
            Request::ListPacks => frame(0x000b, EMPTY),
            Request::WriteSnapshot { len, group } => frame(
                0x000c,
                &cbor_encode(&SnapLenP {
                    len: *len,
                    group: *group,
                }),
            ),
            Request::ListSnapshots => frame(0x000d, EMPTY),
            Request::ReadSnapshot { id } => frame(0x000e, &cbor_encode(&SnapP { id: *id })),
            Request::Stamp { id } => frame(0x000f, &cbor_encode(&SnapP { id: *id })),
            Request::Forget { id } => frame(0x0010, &cbor_encode(&SnapP { id: *id })),
            Request::Repair { id } => frame(0x0012, &cbor_encode(&PackP { id: *id })),
            Request::Lock { id, until, hold } => frame(
                0x0011,
                &cbor_encode(&LockP {
                    id: *id,
                    until: *until,
                    hold: *hold,
                }),
            ),
        }
    }

    /// Decodes a request from its tag and payload.
    pub fn decode(tag: u16, p: &[u8]) -> Result<Request, FormatError> {
        const W: &str = "request";
        let empty = |r: Request| {
            if p.is_empty() {
                Ok(r)
            } else {
                Err(FormatError::invalid(W, "unexpected payload"))
            }
        };
        Ok(match tag {
            0x0001 => {
                let h: HelloP = cbor_decode(W, p)?;
                Request::Hello {
                    version: h.version,
                    namespace: h.namespace,
                }
            }
            0x0002 => empty(Request::ReadConfig)?,
            0x0003 => Request::WriteConfig {
                len: cbor_decode::<LenP>(W, p)?.len,
            },
            0x0004 => empty(Request::ListKeys)?,
            0x0005 => Request::ReadKey {
                name: cbor_decode::<NameP>(W, p)?.name,
            },
            0x0006 => {
                let v: NameLenP = cbor_decode(W, p)?;
                Request::WriteKey {
                    name: v.name,
                    len: v.len,
                }
            }
            0x0007 => Request::RemoveKey {
                name: cbor_decode::<NameP>(W, p)?.name,
            },
            0x0008 => {
                let v: PackLenP = cbor_decode(W, p)?;
                Request::PutPack {
                    id: v.id,
                    len: v.len,
                }
            }
            0x0009 => Request::PackSize {
                id: cbor_decode::<PackP>(W, p)?.id,
            },
            0x000a => {
                let v: RangeP = cbor_decode(W, p)?;
                Request::ReadPack {
                    id: v.id,
                    offset: v.offset,
                    len: v.len,
                }
            }
            0x000b => empty(Request::ListPacks)?,
            0x000c => {
                let v: SnapLenP = cbor_decode(W, p)?;
                Request::WriteSnapshot {
                    len: v.len,
                    group: v.group,
                }
            }
            0x000d => empty(Request::ListSnapshots)?,
            0x000e => Request::ReadSnapshot {
                id: cbor_decode::<SnapP>(W, p)?.id,
            },
            0x000f => Request::Stamp {
                id: cbor_decode::<SnapP>(W, p)?.id,
            },
            0x0010 => Request::Forget {
                id: cbor_decode::<SnapP>(W, p)?.id,
            },
            0x0012 => Request::Repair {
                id: cbor_decode::<PackP>(W, p)?.id,
            },
            0x0011 => {
                let v: LockP = cbor_decode(W, p)?;
                Request::Lock {
                    id: v.id,
                    until: v.until,
                    hold: v.hold,
                }
            }
            t => {
                return Err(FormatError::invalid(
                    W,
                    format!("unknown request tag {t:#06x}"),
                ))
            }
        })
    }
}

impl Response {
    /// Encodes the response as a frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Error { code, message } => frame(
                0x8001,
                &cbor_encode(&ErrorP {
                    code: *code,
                    message: message.clone(),
                }),
            ),
            Response::Hello { version, namespace } => frame(
                0x8002,
                &cbor_encode(&HelloP {
                    version: *version,
                    namespace: namespace.clone(),
                }),
            ),
            Response::Ok => frame(0x8003, EMPTY),
            Response::Bytes { len } => frame(0x8004, &cbor_encode(&LenP { len: *len })),
            Response::Names { names } => frame(
                0x8005,
                &cbor_encode(&NamesP {
                    names: names.clone(),
                }),
            ),
            Response::Stored { created } => {
                frame(0x8006, &cbor_encode(&StoredP { created: *created }))
            }
            Response::Size { size } => frame(0x8007, &cbor_encode(&SizeP { size: *size })),
            Response::Packs { packs } => frame(
                0x8008,
                &cbor_encode(&PacksP {
                    packs: packs.clone(),
                }),
            ),
            Response::Snapshots { ids } => {
                frame(0x8009, &cbor_encode(&SnapsP { ids: ids.clone() }))
            }
            Response::End => frame(0x800a, EMPTY),
            Response::Committed { id } => frame(0x800b, &cbor_encode(&SnapP { id: *id })),
            Response::Stamped { stamp } => frame(
                0x800c,
                &cbor_encode(&StampP {
                    stamp: stamp.for_wire(),
                }),
            ),
            Response::Repaired { ok } => frame(0x800d, &cbor_encode(&OkP { ok: *ok })),
        }
    }

    /// Decodes a response from its tag and payload.
    pub fn decode(tag: u16, p: &[u8]) -> Result<Response, FormatError> {
        const W: &str = "response";
        Ok(match tag {
            0x8001 => {
                let e: ErrorP = cbor_decode(W, p)?;
                Response::Error {
                    code: e.code,
                    message: e.message,
                }
            }
            0x8002 => {
                let h: HelloP = cbor_decode(W, p)?;
                Response::Hello {
                    version: h.version,
                    namespace: h.namespace,
                }
            }
            0x8003 => Response::Ok,
            0x8004 => Response::Bytes {
                len: cbor_decode::<LenP>(W, p)?.len,
            },
            0x8005 => Response::Names {
                names: cbor_decode::<NamesP>(W, p)?.names,
            },
            0x8006 => Response::Stored {
                created: cbor_decode::<StoredP>(W, p)?.created,
            },
            0x8007 => Response::Size {
                size: cbor_decode::<SizeP>(W, p)?.size,
            },
            0x8008 => Response::Packs {
                packs: cbor_decode::<PacksP>(W, p)?.packs,
            },
            0x8009 => Response::Snapshots {
                ids: cbor_decode::<SnapsP>(W, p)?.ids,
            },
            0x800a => Response::End,
            0x800b => Response::Committed {
                id: cbor_decode::<SnapP>(W, p)?.id,
            },
            0x800d => Response::Repaired {
                ok: cbor_decode::<OkP>(W, p)?.ok,
            },
            0x800c => Response::Stamped {
                stamp: cbor_decode::<StampP>(W, p)?.stamp,
            },
            t => {
                return Err(FormatError::invalid(
                    W,
                    format!("unknown response tag {t:#06x}"),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip_req(r: Request) {
        let f = r.encode();
        let (tag, p) = split_frame(&f).unwrap();
        assert_eq!(Request::decode(tag, p).unwrap(), r);
    }

    #[test]
    fn every_request_round_trips() {
        let id = PackId([3; 32]);
        for r in [
            Request::Hello {
                version: 1,
                namespace: "vps-101".into(),
            },
            Request::ReadConfig,
            Request::WriteConfig { len: 10 },
            Request::ListKeys,
            Request::ReadKey { name: "ab".into() },
            Request::WriteKey {
                name: "ab".into(),
                len: 3,
            },
            Request::RemoveKey { name: "ab".into() },
            Request::PutPack { id, len: 5 },
            Request::PackSize { id },
            Request::ReadPack {
                id,
                offset: 1,
                len: 2,
            },
            Request::ListPacks,
            Request::WriteSnapshot {
                len: 9,
                group: None,
            },
            Request::WriteSnapshot {
                len: 9,
                group: Some(SnapshotGroup([7; 32])),
            },
            Request::ListSnapshots,
            Request::ReadSnapshot {
                id: SnapshotId([4; 32]),
            },
        ] {
            round_trip_req(r);
        }
    }

    #[test]
    fn every_response_round_trips() {
        for r in [
            Response::Error {
                code: ErrorCode::Denied,
                message: "no".into(),
            },
            Response::Hello {
                version: 1,
                namespace: "n".into(),
            },
            Response::Ok,
            Response::Bytes { len: 4 },
            Response::Names {
                names: vec!["a".into()],
            },
            Response::Stored { created: true },
            Response::Size { size: Some(3) },
            Response::Size { size: None },
            Response::Packs {
                packs: vec![(PackId([1; 32]), 7)],
            },
            Response::Snapshots {
                ids: vec![SnapshotId([2; 32])],
            },
            Response::End,
            Response::Committed {
                id: SnapshotId([5; 32]),
            },
        ] {
            let f = r.encode();
            let (tag, p) = split_frame(&f).unwrap();
            assert_eq!(Response::decode(tag, p).unwrap(), r);
        }
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let mut head = [0u8; HEAD_LEN];
        head[..4].copy_from_slice(&((MAX_FRAME_BYTES + 1) as u32).to_le_bytes());
        assert!(matches!(
            decode_head(&head),
            Err(FormatError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok((tag, p)) = split_frame(&b) {
                let _ = Request::decode(tag, p);
                let _ = Response::decode(tag, p);
            }
        }
    }
}
