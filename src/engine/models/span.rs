//! Where each sequence sits in a flattened batch: the one type that the layers and the host
//! attention kernels both read, kept below them both.

/// Rows `start..start + len` of the flattened batch are tokens of one sequence whose first new
/// token sits at position `pos`.
#[derive(Debug, Clone, Copy)]
pub struct SeqSpan {
    pub start: usize,
    pub len: usize,
    pub pos: usize,
}
