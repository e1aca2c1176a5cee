//! Nothing here: the crate exists for its bench, `benches/cedar.rs` (a package needs a
//! library or binary target beside it).
