//! Memory and offsets aligned for direct I/O (`O_DIRECT`), shared by the
//! image reader and the pack span reader.

/// Alignment of direct reads: offset, length and memory. 4 KiB covers the
/// logical block size of the disks that matter.
pub(crate) const ALIGN: usize = 4096;

/// Grows `buf` (never shrinks or clears it: zeroing memory for every read
/// would cost what a direct read saves) until `len` bytes fit from an
/// address aligned for direct I/O, and returns where that address is.
pub(crate) fn aligned_room(buf: &mut Vec<u8>, len: usize) -> usize {
    let need = len + ALIGN;
    if buf.len() < need {
        buf.resize(need, 0);
    }
    buf.as_ptr().align_offset(ALIGN)
}
